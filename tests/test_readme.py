"""Every snippet of README.md and docs/*.md, run (issue 15, item 11; issue 22, item 5).

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
- Each document's ```python blocks run in a scope of their own; its ```bash lines are checked
  as the README's are.
- Every relative link of README.md and docs/*.md points to a file that exists (and a
  ``#fragment`` into a Markdown file to one of its headings); README.md stays at most
  :data:`MAX_README_LINES` lines and links every file of docs/.
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
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("SIGMATUNE_README", ROOT / "README.md"))  # a draft, to check it
DOCS = ROOT / "docs"  # the rest of the documentation: results, cluster, development, ...
MAX_README_LINES = 300
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_IN_TEST = {"status", "export", "report"}  # cheap, read-only commands run for real


def documents() -> list[Path]:
    """README.md, then every docs/*.md: the files whose snippets run and links resolve."""
    return [README, *sorted(DOCS.glob("*.md"))]


def readme_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def doc_blocks(paths: Sequence[Path] | None = None) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``paths`` (default: :func:`documents`)."""
    return [
        block
        for path in (documents() if paths is None else paths)
        for block in readme_blocks(path.read_text(encoding="utf-8"))
    ]


def python_blocks(paths: Sequence[Path] | None = None) -> list[str]:
    return [code for lang, code in doc_blocks(paths) if lang in ("python", "py")]


def shell_lines(prefix: str, paths: Sequence[Path] | None = None) -> list[str]:
    """Lines of ```bash / ```sh / ```shell blocks of ``paths`` (default: every document) that
    start with ``prefix``, comments cut (a backslash continues a line)."""
    out = []
    for lang, code in doc_blocks(paths):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        joined = re.sub(r"\\\n\s*", " ", code)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith(prefix):
                out.append(" ".join(shlex.split(line, comments=True)))
    return out


def test_readme_has_runnable_snippets():
    assert python_blocks([README]), "README.md has no ```python block"
    assert shell_lines("sigmatune ", [README]), "README.md has no sigmatune command in a ```bash"
    usage = "\n".join(python_blocks([README]))
    assert "sigmas" in usage and "set_timesteps" in usage, "no diffusers usage snippet"
    assert "sampling.sample_" in usage, "no k-diffusion usage snippet"


# ------------------------------------------------------------------ shell lines


def test_every_sigmatune_command_of_the_readme_parses():
    from sigmatune.study.commands.cli import COMMANDS, build_parser

    parser = build_parser()
    for line in shell_lines("sigmatune "):
        with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
            try:
                args = parser.parse_args(shlex.split(line)[1:])
            except SystemExit:
                pytest.fail(f"README command does not parse: {line}")
        assert args.command in COMMANDS, line


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
    from sigmatune.study.commands.cli import main
    from sigmatune.study.commands.hooks import run_study as run
    from sigmatune.study.config import load_config

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
        _diffusers_models(folder, main)
        for line in shell_lines("sigmatune "):
            args = shlex.split(line)[1:]
            if args[0] in RUN_IN_TEST:
                assert main(args) == 0, f"README command failed on a toy study: {line}"
        yield folder
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def _diffusers_models(folder: Path, main) -> None:
    """What the diffusers snippets read: tiny diffusers models with random weights saved as
    ``my-ddpm`` (a DDPMPipeline folder) and ``my-flow`` (a UNet2DModel with a flow-matching
    scheduler config), and their diffusers documents ``my-ddpm.json`` / ``my-flow.json`` at
    NFE 10 (written by ``sigmatune schedule``, which writes the document ``export --format
    diffusers`` does, from the same function)."""
    import diffusers

    def unet() -> torch.nn.Module:
        torch.manual_seed(0)
        return diffusers.UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            add_attention=False,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )

    diffusers.DDPMPipeline(unet(), diffusers.DDPMScheduler()).save_pretrained(folder / "my-ddpm")
    unet().save_pretrained(folder / "my-flow")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "my-flow")
    for name in ("my-ddpm", "my-flow"):
        out = folder / f"{name}-schedule"
        args = ["--method", "karras", "--nfe", "10", "--sampler", "euler", "-o", str(out)]
        assert main(["schedule", *args, "--denoiser", f"diffusers:{name}"]) == 0
        text = (out / "karras-euler-nfe10.diffusers.json").read_text()
        (folder / f"{name}.json").write_text(text)


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
    from sigmatune.study.commands.cli import main

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
    base = {
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
    used = []  # (scope, its last set_timesteps call) of each document that called it
    for path in documents():
        scope, before = dict(base), len(set_calls)
        for code in python_blocks([path]):
            exec(compile(code, str(path), "exec"), scope)  # noqa: S102 - the docs' own code
        if len(set_calls) > before:
            used.append((scope, set_calls[-1]))

    assert recorder.calls or set_calls, "no README snippet sampled or set timesteps"
    for name, sigmas in recorder.calls:
        assert float(sigmas[-1]) == 0.0, f"{name} got sigmas without the final 0"
        assert any(torch.equal(sigmas.double(), s.double()) for s in exported_sigmas), (
            f"{name} got sigmas that are no exported schedule: {sigmas.tolist()}"
        )
    for sigmas in set_calls:
        assert sigmas[-1] == 0.0, f"set_timesteps got sigmas without the final 0: {sigmas}"
        assert sigmas == exported["sigmas"], "set_timesteps got another list than the export's"
    for scope, last in used:
        final = scope.get("scheduler", scheduler)
        assert float(final.sigmas[-1]) == 0.0 and len(final.sigmas) == len(last)


def test_fence_parsing_finds_tagged_blocks_only():
    text = "a\n```python\nx = 1\n```\n```\nout\n```\n```bash\nsigmatune status  # hi\n```\n"
    assert readme_blocks(text) == [
        ("python", "x = 1\n"),
        ("", "out\n"),
        ("bash", "sigmatune status  # hi\n"),
    ]


# ------------------------------------------------------------------ size and links

ANY_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")  # [text](target)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)  # [ref]: target
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def prose(text: str) -> str:
    """The Markdown outside code: fenced blocks (also indented ones) and code spans cut."""
    return INLINE_CODE.sub("", ANY_FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return LINK.findall(body) + REFERENCE.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(ANY_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_readme_is_at_most_300_lines_and_links_every_doc():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, (
        f"README.md has {len(text.splitlines())} lines; move detail into docs/"
    )
    targets = {target.split("#")[0] for target in links(text)}
    docs = sorted(DOCS.glob("*.md"))
    assert {"results.md", "cluster.md", "development.md"} <= {p.name for p in docs}
    for path in docs:
        assert f"docs/{path.name}" in targets, f"README.md does not link docs/{path.name}"


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_relative_link_resolves(path: Path):
    bad = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, fragment = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        if not where.exists():
            bad.append(f"{target}: no such file")
        elif (
            fragment
            and where.suffix == ".md"
            and fragment not in anchors(where.read_text(encoding="utf-8"))
        ):
            bad.append(f"{target}: no such heading in {where.name}")
    assert not bad, f"{path.name}: " + "; ".join(bad)


def test_link_and_anchor_parsing():
    text = (
        "# A (`b.c`) d\n## A (`b.c`) d\nsee [x](docs/r.md#e 'title') and `[no](link)` and\n"
        "```md\n[not](here)\n```\n[ref]: ../y.md\n"
    )
    assert links(text) == ["docs/r.md#e", "../y.md"]
    assert anchors(text) == {"a-bc-d", "a-bc-d-1"}
    assert slug("The presets (`python -m benchmarks.presets`)") == (
        "the-presets-python--m-benchmarkspresets"
    )


# ------------------------------------------------------------------ the main command's output


def example_output(text: str | None = None) -> str:
    """The README's example output of ``sigmatune run --preset toy``: the untagged block that
    starts with the run's first line."""
    for lang, code in readme_blocks(text):
        if not lang and code.startswith("sigmatune: study 'toy'"):
            return code
    raise AssertionError("README.md has no example output of `sigmatune run --preset toy`")


def result_lines(output: str) -> list[str]:
    """The lines of a run's output that carry its results: each trial's line and its NFE
    lines, and the best trial's (not the export's path, which holds the study's random id)."""
    keep = ("trial ", "    nfe ", "best: ", "  NFE ")
    return [line.rstrip() for line in output.splitlines() if line.startswith(keep)]


@pytest.mark.slow
def test_the_readmes_example_output_is_what_the_main_command_prints(tmp_path):
    """A fresh ``sigmatune run --preset toy`` in an empty folder prints the README's trial
    lines, figures rounded as printed (issue 18, item 7): the example is the committed code's
    output, not an older one's."""
    import subprocess

    # as a user's shell runs it: the default threads (the last digit of a figure can depend
    # on them; the README's block was made the same way, on 2 cores as CI has)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # threads that sleep instead of spinning while they wait: the figures are the same (the
    # work is split the same way), but beside another busy test process the run took 147 s
    # instead of 302 s on 2 cores
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sigmatune.study.commands.cli",
            "run",
            "--preset",
            "toy",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = result_lines(done.stdout)
    expected = result_lines(example_output())
    assert printed and printed == expected, "\n".join(
        f"README: {a}\nprinted: {b}" for a, b in zip(expected, printed) if a != b
    )


def test_result_lines_pick_the_trial_and_budget_lines():
    out = "sigmatune: study 'toy'\ntrial   0 COMPLETE x\n    nfe 5: 1\nexport of x\nbest: t\n"
    assert result_lines(out) == ["trial   0 COMPLETE x", "    nfe 5: 1", "best: t"]
