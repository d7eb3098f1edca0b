"""Packaging: one import name (``sigmatune``), and a user's own ``models`` package stays theirs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_import_name(tmp_path):
    """A built wheel holds ``sigmatune/`` (with the four packages under it and the presets)
    and nothing else at the top level but its metadata. Built from a copy of the tracked
    files, so the checkout gets no build/ folder."""
    import shutil

    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = out.glob("sigmatune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    meta = {t for t in tops if t.endswith(".dist-info")}
    assert tops - meta == {"sigmatune"}, sorted(tops)
    for package in ("objectives", "models", "study", "dashboards"):
        assert f"sigmatune/{package}/__init__.py" in names
    assert "sigmatune/study/presets/toy.toml" in names
    assert "sigmatune/study/export.schema.json" in names
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
    if top_level is not None:  # setuptools writes it; it must name sigmatune alone
        text = zipfile.ZipFile(wheel).read(top_level).decode().split()
        assert text == ["sigmatune"]


def test_no_module_imports_the_old_top_level_names():
    """Every import of the project's own code goes through ``sigmatune.``."""
    import ast

    offenders = []
    for folder in ("objectives", "models", "study", "dashboards", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    top = node.module.split(".")[0]
                elif isinstance(node, ast.Import):
                    top = node.names[0].name.split(".")[0]
                else:
                    continue
                if top in ("objectives", "models", "study", "dashboards"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.slow
def test_a_users_own_models_package_is_found_by_tune_sampling(tmp_path):
    """In a project with its own ``models/`` package, ``--denoiser models.mynet:denoiser``
    imports the user's module, not sigmatune's."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mynet.py").write_text(
        textwrap.dedent(
            """
            from sigmatune.models.data import gmm2d_mixture

            CALLS = []

            def denoiser():
                CALLS.append(1)
                return gmm2d_mixture()
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sigmatune.study.commands.cli import main; sys.exit(main())",
            "tune-sampling",
            "--preset",
            "toy",
            "--denoiser",
            "models.mynet:denoiser",
            "--nfe",
            "3",
            "--inner-trials",
            "3",
            "--reference-steps",
            "0",
            "--no-progress",
            "--storage",
            f"sqlite:///{tmp_path / 'user.db'}",
            "--set",
            "inner.fid_num_images=64",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "No module named" not in proc.stderr
    assert "nfe 3" in proc.stdout
