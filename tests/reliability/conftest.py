"""Helpers of the reliability suite: the tiny run config and the subprocess helpers of
tests/study/test_run.py (loaded from there, not copied), a snapshot of a folder's files, and
the check that an error is one paragraph.

Every test of the suite asserts what is on disk afterwards: :func:`snapshot` maps each file
under a folder to its sha256, so "nothing written" and "the previous file is intact" are
equalities of snapshots.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_test_run():
    """tests/study/test_run.py as a module (``tests`` is no package)."""
    name = "sigmatune_tests_study_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests/study/test_run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


run_tests = _load_test_run()
tiny_toml = run_tests.tiny_toml
sigmatune = run_tests.sigmatune  # sigmatune(*args, cwd=...) -> CompletedProcess
start = run_tests.start  # start(*args, cwd=..., log=...) -> Popen
wait_for = run_tests.wait_for
kill_after_first_checkpoint = run_tests.kill_after_first_checkpoint  # (tmp_path, log) -> [Path]
RUN = run_tests.RUN  # run config.toml --no-progress, 1 s heartbeats, 2 s grace
NAME = run_tests.NAME  # the tiny config's study name

# How torch words its advice to load a file unsafely; sigmatune never passes it on.
UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "weights_only set to False")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> its sha256; folders as ``path/``."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            out[rel + "/"] = ""
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_paragraph(rc: int, err: str) -> str:
    """The CLI's answer to bad input: rc 2 and one paragraph on stderr, no traceback."""
    err = err.strip()
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("sigmatune: error:"), err
    assert "\n\n" not in err, err
    return err


class Marker:
    """Unpickling this creates the file ``path``: what a crafted file could do (any code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def hostile_pickle(path: Path, marker: Path, *, torch_save: bool = True) -> Path:
    """A file that creates ``marker`` when it is loaded unsafely: a ``torch.save`` archive
    (zip) or a plain pickle."""
    import torch

    payload = {"state_dict": {"w": Marker(marker)}, "shape": [2]}
    if torch_save:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for what runs in this process (the subprocesses get
    OMP_NUM_THREADS=1): on a busy 2-core machine a second thread made small runs several
    times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working folder, with the tiny config as ``config.toml``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(tiny_toml())
    return tmp_path


@pytest.fixture(scope="session")
def finished_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a finished tiny study (1 outer x 3 inner trials) in ``run.db``, made by
    the CLI; tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("finished-tiny")
    (folder / "config.toml").write_text(tiny_toml(outer__outer_trials="1", inner__inner_trials="3"))
    out = sigmatune(*RUN, cwd=folder)
    assert out.returncode == 0, out.stdout + out.stderr
    return folder
