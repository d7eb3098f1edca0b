"""A full disk (issue 15, item 4): exports and reports go to a small tmpfs that is then filled
up; a write that hits ENOSPC is one paragraph, and the previous report.html, export JSON,
CSV and k-diffusion files stay whole, byte for byte, with no temporary file left beside them.

The tmpfs is mounted in a temporary folder and unmounted afterwards, also when a test fails;
mounting needs root (CI runs as root): without it these tests fail and say so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sigmatune.dashboards.report import GENERATOR_MARK
from sigmatune.study.commands.cli import main

from .conftest import one_paragraph, snapshot  # noqa: TID252

TMPFS_SIZE = "24m"  # a report is a few MB (plotly.js is inlined)


@contextlib.contextmanager
def small_tmpfs(size: str = TMPFS_SIZE) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sigmatune-full-disk-"))
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.fail(
                f"the full-disk tests mount a {size} tmpfs on {folder} and need root (CI runs "
                f"as root); `mount` said: {mounted.stderr.strip() or mounted.returncode}",
                pytrace=False,
            )
        try:
            yield folder
        finally:
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up, then free ``leave`` bytes again."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# command -> (arguments after the storage, the file it replaces)
COMMANDS = {
    "report": (["report", "-o", "report.html"], "report.html"),
    "json": (["export", "-o", "export.json"], "export.json"),
    "csv": (["export", "--format", "csv", "-o", "export.csv"], "export.csv"),
    "diffusers": (["export", "--format", "diffusers", "-o", "d.json"], "d.json"),
    "k-diffusion": (["export", "--format", "k-diffusion", "--nfe", "5", "-o", "k.pt"], "k.pt"),
}


def _run(capsys: pytest.CaptureFixture[str], url: str, out: Path, name: str) -> tuple[int, str]:
    args, target = COMMANDS[name]
    args = [args[0], "--storage", url, *args[1:-1], str(out / target)]
    rc = main(args)
    return rc, capsys.readouterr().err


def _whole(out: Path) -> None:
    """Every output file is a complete one of its kind."""
    text = (out / "report.html").read_text()
    assert GENERATOR_MARK in text and text.endswith("</html>\n")
    assert json.loads((out / "export.json").read_text())["schedules"]
    assert json.loads((out / "d.json").read_text())["sigmas"][-1] == 0.0
    assert (out / "export.csv").read_text().startswith("nfe,sampler,step,sigmas,lam\n")
    assert float(torch.load(out / "k.pt", weights_only=True)["sigmas"][-1]) == 0.0


@pytest.mark.parametrize("leave", [0, 8192], ids=["no-byte-free", "8-KiB-free"])
def test_writes_on_a_full_disk_keep_the_previous_files_whole(synthetic_study, capsys, leave):
    with small_tmpfs() as out:
        for name in COMMANDS:
            rc, err = _run(capsys, synthetic_study.url, out, name)
            assert rc == 0, (name, err)
        _whole(out)
        before = snapshot(out)

        filler = fill(out, leave)
        failed = []
        for name in COMMANDS:
            rc, err = _run(capsys, synthetic_study.url, out, name)
            if rc == 0:  # it fitted into what was left: a whole new file (checked below)
                continue
            err = one_paragraph(rc, err)
            assert "No space left on device" in err and "previous file is unchanged" in err, err
            failed.append(name)
        filler.unlink()

        assert "report" in failed  # megabytes never fit
        if leave == 0:
            assert failed == list(COMMANDS)
        after = snapshot(out)
        assert sorted(after) == sorted(before)  # no temporary file left beside them
        for name in failed:
            target = COMMANDS[name][1]
            assert after[target] == before[target], target
        _whole(out)
