"""A user's denoiser that fails (issue 23, item 6): ``tune-sampling`` and ``schedule`` with a
``--denoiser module:function`` whose factory raises, or whose ``D(x, sigma)`` raises, returns a
tensor of another shape, NaN, or no tensor at all, answer with one paragraph that names the
``module:function``, the call and the shapes (exit 2), before anything is written; a denoiser
that fails only later, during the search, is one paragraph too, never a traceback.

The denoisers live in a module each test writes into its working folder (the CLI puts the
current folder first on the import path), under a name of its own: an imported module is
cached, and a name used twice would give the first test's module to the second.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from sigmatune.study.commands.cli import main

from .conftest import one_paragraph, snapshot  # noqa: TID252 - the suite's own helpers

DENOISERS = '''
import torch


def factory_raises():
    raise RuntimeError("no weights at /models/edm.pt")


def d_raises():
    def D(x, sigma):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x2 and 3x64)")

    return D


def wrong_shape():
    return lambda x, sigma: x[:, :1]


def returns_nan():
    return lambda x, sigma: torch.full_like(x, float("nan"))


def not_a_tensor():
    return lambda x, sigma: (x / (1 + sigma[:, None] ** 2)).numpy()


def large_batches_fail():
    """Right on the probe's two samples, an error at the search's batch size."""

    def D(x, sigma):
        if x.shape[0] > 2:
            raise MemoryError("out of memory (pretend)")
        return x / (1 + sigma[:, None] ** 2)

    return D


def nan_between_0_5_and_2():
    """Right at sigma_min and sigma_max, NaN in the middle of the range."""

    def D(x, sigma):
        s = sigma[:, None]
        return torch.where((s > 0.5) & (s < 2.0), float("nan"), x / (1 + s**2))

    return D
'''

# kind -> what the paragraph must say besides the module:function
EXPECTED = {
    "factory_raises": ("factory_raises()", "RuntimeError", "no weights at /models/edm.pt"),
    "d_raises": ("D(x, sigma=80)", "(2, 2)", "RuntimeError", "mat1 and mat2"),
    "wrong_shape": ("D(x, sigma=80)", "shape (2, 1)", "shape (2, 2)"),
    "returns_nan": ("D(x, sigma=80)", "non-finite", "(2, 2)"),
    "not_a_tensor": ("D(x, sigma=80)", "numpy.ndarray", "(2, 2)"),
}

COMMANDS = {
    "tune-sampling": ("tune-sampling", "config.toml", "--no-progress"),
    "schedule": ("schedule", "config.toml", "--method", "gits", "--nfe", "5", "-o", "out"),
}


def _denoiser_module(folder: Path, request: pytest.FixtureRequest) -> str:
    """Write the bad denoisers as a module named after the test (no other test imports it),
    forgotten again when the test ends; its name."""
    name = "user_denoisers_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    (folder / f"{name}.py").write_text(DENOISERS)
    sys.modules.pop(name, None)
    request.addfinalizer(lambda: sys.modules.pop(name, None))
    importlib.invalidate_caches()  # the finders' listings of folders seen before
    return name


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_bad_denoiser_is_one_paragraph_and_writes_nothing(in_tmp, capsys, request, kind, command):
    module = _denoiser_module(in_tmp, request)
    spec = f"{module}:{kind}"
    before = snapshot(in_tmp)
    rc, err = _cli(capsys, *COMMANDS[command], "--denoiser", spec)
    err = one_paragraph(rc, err)
    assert repr(spec) in err, err
    for text in EXPECTED[kind]:
        assert text in err, (text, err)
    assert snapshot(in_tmp) == before  # no database, no artifact folder, no schedule files


@pytest.mark.slow
def test_a_denoiser_that_fails_at_the_search_batch_size_is_one_paragraph(in_tmp, capsys, request):
    """The probe's two samples pass; every search trial then fails with the reason stored,
    and the command ends in one paragraph quoting it (no peers: nothing calls D outside the
    search's trials)."""
    module = _denoiser_module(in_tmp, request)
    spec = f"{module}:large_batches_fail"
    rc, err = _cli(
        capsys,
        *COMMANDS["tune-sampling"],
        "--denoiser",
        spec,
        "--set",
        "inner.peers=[]",
        "--reference-steps",
        "0",
    )
    err = one_paragraph(rc, err)
    assert "no trial of inner study" in err and "completed" in err, err
    assert repr(spec) in err and "MemoryError: out of memory (pretend)" in err, err
    assert "(256, 2)" in err, err  # the call that failed: the search's batch


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_denoiser_that_is_nan_inside_the_range_is_one_paragraph(in_tmp, capsys, request, command):
    """Finite at sigma_min and sigma_max (the probe passes), NaN in between: GITS, the first
    method that calls D there, stops with one paragraph at the sigma it called."""
    module = _denoiser_module(in_tmp, request)
    spec = f"{module}:nan_between_0_5_and_2"
    rc, err = _cli(capsys, *COMMANDS[command], "--denoiser", spec)
    err = one_paragraph(rc, err)
    assert repr(spec) in err and "non-finite" in err, err
    sigma = float(err.split("sigma=")[1].split(")")[0])
    assert 0.5 < sigma < 2.0, err
    assert not (in_tmp / "out").exists()
