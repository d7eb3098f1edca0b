"""Every snippet of README.md, run (issue 15, item 11).

- ```python blocks run, in order, in a folder holding a real study: a minimal ``toy`` run in
  the default storage ``sigmatune.db``, exported by the README's own ``sigmatune export``
  lines and by ``sigmatune export --format k-diffusion`` (every NFE, into the folder). Their
  names: ``torch``, ``json``, ``k_diffusion`` / ``K`` (a faithful stand-in: k-diffusion is
  not installed, and its ``sample_heun`` is the one tests/study/test_export.py writes out),
  ``model`` (the toy data's exact denoiser), ``noise``, ``scheduler`` and ``pipe.scheduler``
  (a real diffusers ``EulerDiscreteScheduler``) and ``exported`` (the diffusers export), each
  unless the snippet makes its own. Afterwards every k-diffusion sampler call must have
  received an exported schedule, final 0 included, and every ``set_timesteps`` the exported
  list with its final 0 (dropping it stops sampling at the last positive sigma).
- ```bash blocks: every ``sigmatune`` line parses with the real argument parser; its
  ``status``, ``export`` and ``report`` lines run on that study (``run``, ``tune-sampling``
  and ``dashboard`` take minutes or serve forever: parsed only); every ``make`` target exists
  and every ``pip install -e ".[EXTRA]"`` names extras that pyproject.toml defines.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("SIGMATUNE_README", ROOT / "README.md"))  # a draft, to check it
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_IN_TEST = {"status", "export", "report"}  # cheap, read-only commands run for real


def readme_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def python_blocks() -> list[str]:
    return [code for lang, code in readme_blocks() if lang in ("python", "py")]


def shell_lines(prefix: str) -> list[str]:
    """Lines of ```bash / ```sh / ```shell blocks that start with ``prefix``, comments cut
    (a backslash continues a line)."""
    out = []
    for lang, code in readme_blocks():
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        joined = re.sub(r"\\\n\s*", " ", code)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith(prefix):
                out.append(" ".join(shlex.split(line, comments=True)))
    return out


def test_readme_has_runnable_snippets():
    assert python_blocks(), "README.md has no ```python block"
    assert shell_lines("sigmatune "), "README.md has no sigmatune command in a ```bash block"
    usage = "\n".join(python_blocks())
    assert "sigmas" in usage and "set_timesteps" in usage, "no diffusers usage snippet"
    assert "sampling.sample_" in usage, "no k-diffusion usage snippet"


# ------------------------------------------------------------------ shell lines


def test_every_sigmatune_command_of_the_readme_parses():
    from sigmatune.study.cli import build_parser

    parser = build_parser()
    for line in shell_lines("sigmatune "):
        with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
            try:
                args = parser.parse_args(shlex.split(line)[1:])
            except SystemExit:
                pytest.fail(f"README command does not parse: {line}")
        assert getattr(args, "func", None), line


def test_make_targets_and_extras_of_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    for line in shell_lines("make"):
        target = shlex.split(line)[1] if len(shlex.split(line)) > 1 else "all"
        assert target in targets, line
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for line in shell_lines("pip install"):
        for group in re.findall(r"\.\[([\w,-]+)\]", line):
            assert set(group.split(",")) <= extras, line


# ------------------------------------------------------------------ the study behind them


def _load_test_export() -> types.ModuleType:
    name = "sigmatune_tests_study_export"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests/study/test_export.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def readme_study(tmp_path_factory: pytest.TempPathFactory):
    """A minimal ``toy`` run in ``sigmatune.db`` (the README's default storage) of a temp
    folder, exported as the README says; yields the folder."""
    from sigmatune.study.cli import main
    from sigmatune.study.config import load_config
    from sigmatune.study.run import run

    folder = tmp_path_factory.mktemp("readme")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)  # small tensors: a second thread on a busy machine only slows
    try:
        config = load_config(
            "toy",
            {
                "outer.outer_trials": 1,
                "inner.inner_trials": 2,
                "inner.fid_num_images": 256,
                "inner.batch_size": 256,
                "train.train_nimg": 4096,
                "train.batch_size": 256,
                "train.checkpoint_nimg": 4096,
                "device": "cpu",
            },
        )
        summary = run(config, progress=False, log=lambda _line: None)
        assert summary.best is not None
        assert main(["export", "--format", "k-diffusion"]) == 0  # every NFE, into the folder
        for line in shell_lines("sigmatune "):
            args = shlex.split(line)[1:]
            if args[0] in RUN_IN_TEST:
                assert main(args) == 0, f"README command failed on a toy study: {line}"
        yield folder
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_readmes_status_export_and_report_lines_ran(readme_study):
    """(Run in the fixture; here: they left what they say they write.)"""
    for line in shell_lines("sigmatune "):
        args = shlex.split(line)[1:]
        if args[0] in RUN_IN_TEST and ("-o" in args or "--output" in args):
            flag = "-o" if "-o" in args else "--output"
            assert (readme_study / args[args.index(flag) + 1]).exists(), line


class _Recorder:
    """The k-diffusion stand-in's record of sampler calls: (sampler, sigmas)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.Tensor]] = []


def _kdiffusion_standin(recorder: _Recorder) -> types.ModuleType:
    heun = _load_test_export()._kdiffusion_sample_heun

    def sample_heun(model, x, sigmas, *args, **kwargs):
        recorder.calls.append(("sample_heun", torch.as_tensor(sigmas).clone()))
        return heun(model, x, sigmas, *args, **kwargs)

    sampling = types.ModuleType("k_diffusion.sampling")
    sampling.sample_heun = sample_heun

    def missing(name: str):
        raise AttributeError(
            f"the README uses k_diffusion.sampling.{name}; tests/test_readme.py has a stand-in "
            "for sample_heun only: add one for it (as k-diffusion writes it)"
        )

    sampling.__getattr__ = missing
    module = types.ModuleType("k_diffusion")
    module.sampling = sampling
    return module


@pytest.mark.slow
def test_the_readmes_python_snippets_run_on_an_exported_schedule(readme_study, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    from diffusers import EulerDiscreteScheduler

    from sigmatune.models.data import gmm2d_mixture
    from sigmatune.study.cli import main

    monkeypatch.chdir(readme_study)
    recorder = _Recorder()
    kd = _kdiffusion_standin(recorder)
    monkeypatch.setitem(sys.modules, "k_diffusion", kd)
    monkeypatch.setitem(sys.modules, "k_diffusion.sampling", kd.sampling)

    exported_file = readme_study / "readme-diffusers.json"
    assert main(["export", "--format", "diffusers", "-o", str(exported_file)]) == 0
    exported = json.loads(exported_file.read_text())
    kd_files = sorted(readme_study.glob("*.pt"))
    exported_sigmas = [torch.load(p, weights_only=True)["sigmas"] for p in kd_files]
    assert exported_sigmas, "sigmatune export --format k-diffusion wrote no file"

    scheduler = EulerDiscreteScheduler(  # Stable Diffusion's config, built locally
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    set_calls: list[list[float]] = []
    original = scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        if kwargs.get("sigmas") is not None:
            set_calls.append([float(s) for s in kwargs["sigmas"]])
        return original(*args, **kwargs)

    scheduler.set_timesteps = set_timesteps
    scope = {
        "__name__": "readme",
        "torch": torch,
        "json": json,
        "k_diffusion": kd,
        "K": kd,
        "model": gmm2d_mixture(),
        "noise": torch.randn(
            512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        ),
        "scheduler": scheduler,
        "pipe": types.SimpleNamespace(scheduler=scheduler),
        "EulerDiscreteScheduler": EulerDiscreteScheduler,
        "exported": exported,
    }
    for code in python_blocks():
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own code

    assert recorder.calls or set_calls, "no README snippet sampled or set timesteps"
    for name, sigmas in recorder.calls:
        assert float(sigmas[-1]) == 0.0, f"{name} got sigmas without the final 0"
        assert any(torch.equal(sigmas.double(), s.double()) for s in exported_sigmas), (
            f"{name} got sigmas that are no exported schedule: {sigmas.tolist()}"
        )
    for sigmas in set_calls:
        assert sigmas[-1] == 0.0, f"set_timesteps got sigmas without the final 0: {sigmas}"
        assert sigmas == exported["sigmas"], "set_timesteps got another list than the export's"
    if set_calls:
        used = scope.get("scheduler", scheduler)
        assert float(used.sigmas[-1]) == 0.0 and len(used.sigmas) == len(set_calls[-1])


def test_fence_parsing_finds_tagged_blocks_only():
    text = "a\n```python\nx = 1\n```\n```\nout\n```\n```bash\nsigmatune status  # hi\n```\n"
    assert readme_blocks(text) == [
        ("python", "x = 1\n"),
        ("", "out\n"),
        ("bash", "sigmatune status  # hi\n"),
    ]
