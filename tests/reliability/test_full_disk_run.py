"""A full disk during ``sigmatune run`` (issue 23, item 7): one paragraph on stderr with what
to do next (exit 2, no traceback, never Optuna's "Should not reach"), the trial failed with
its reason where the storage can still be written, no half-written file (checkpoint, model
file, FID cache: each a temporary file renamed into place, removed when the write fails), and
a run of the same command after space is freed completes the study, resuming the trial.

Each case fills a small tmpfs (mounted as root, as tests/reliability/test_full_disk.py does)
at a chosen moment of a real run of the tiny study: the run is the CLI's ``main`` in this
process, with the moment marked by a wrapper around the function that writes next. The
database lives elsewhere unless the database itself is what meets the full disk.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sigmatune.study import outer, records
from sigmatune.study.commands.cli import main

from .conftest import NAME, RUN, one_paragraph, snapshot, tiny_toml  # noqa: TID252
from .test_full_disk import fill, small_tmpfs  # noqa: TID252

TMPFS_SIZE = "8m"  # the tiny study's FID cache and checkpoints are about 0.5 MB each
LEAVE = 8192  # bytes left free when the disk fills: a write starts, then fails half-way


@pytest.fixture
def tiny(in_tmp: Path) -> Path:
    """The working folder with a tiny study of one outer trial (3 inner trials)."""
    (in_tmp / "config.toml").write_text(tiny_toml(outer__outer_trials="1", inner__inner_trials="3"))
    return in_tmp


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main([*RUN, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)


def _temporary(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.tmp")]


def _refused(rc: int, err: str) -> str:
    """One paragraph (exit 2), and neither Optuna's assertion nor a thread's traceback."""
    err = one_paragraph(rc, err)
    assert "Should not reach" not in err and "Exception in thread" not in err, err
    return err


def _resumed(url: str, resumed_from: int) -> None:
    """The study finished by the retry of trial 0, which resumed its checkpoint."""
    trials = _trials(url)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1, [(t.number, t.state) for t in trials]
    assert done[0].user_attrs[records.ORIGINAL_TRIAL] == 0
    assert done[0].user_attrs[records.TRAIN]["resumed_from_nimg"] == resumed_from


def _fill_before(monkeypatch, module, name: str, disk: Path, when, leave: int = LEAVE):
    """Replace ``module.name`` by a wrapper that fills ``disk`` (once) before the call for
    which ``when(*args)`` is true; returns the original (``monkeypatch.undo`` would undo the
    working folder too)."""
    original = getattr(module, name)
    done: list[bool] = []

    def wrapper(*args, **kwargs):
        if not done and when(*args):
            done.append(True)
            fill(disk, leave)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return original


@pytest.mark.slow
def test_a_full_disk_at_a_training_checkpoint_fails_the_trial_and_a_resume_completes(
    tiny, capsys, monkeypatch
):
    import sigmatune.models.training as training

    url = f"sqlite:///{tiny / 'run.db'}"
    second = "checkpoint-000000008192.pt"
    with small_tmpfs(TMPFS_SIZE) as disk:
        art = disk / "art"
        original = _fill_before(
            monkeypatch, training, "save_atomically", disk, lambda _s, p, *a: p.name == second
        )
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        err = _refused(rc, err)
        assert "No space left on device" in err and second in err, err
        assert "Trial 0" in err and "run the same command again" in err, err

        trials = _trials(url)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], trials
        reason = trials[0].user_attrs[records.FAIL_REASON]
        assert "No space left on device" in reason and second in reason, reason
        assert records.FAIL_REASON not in trials[1].user_attrs  # the retry starts clean
        assert not _temporary(disk, tiny)
        assert not list(art.rglob(second))  # nothing half-written under the final name
        (first,) = art.rglob("checkpoint-*.pt")  # the checkpoint before is whole
        assert torch.load(first, map_location="cpu", weights_only=True)["nimg"] == 4096

        monkeypatch.setattr(training, "save_atomically", original)
        (disk / "filler").unlink()
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        assert rc == 0, out + err
        _resumed(url, 4096)
        assert not _temporary(disk, tiny)


@pytest.mark.slow
def test_a_full_disk_at_the_model_file_fails_the_trial_and_a_resume_completes(
    tiny, capsys, monkeypatch
):
    url = f"sqlite:///{tiny / 'run.db'}"
    with small_tmpfs(TMPFS_SIZE) as disk:
        art = disk / "art"
        original = _fill_before(monkeypatch, outer, "save_model_file", disk, lambda *a: True)
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        err = _refused(rc, err)
        assert "No space left on device" in err and "model.pt" in err, err

        trials = _trials(url)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], trials
        assert "model.pt" in trials[0].user_attrs[records.FAIL_REASON]
        assert not _temporary(disk, tiny)
        assert not list(art.rglob("model.pt"))

        monkeypatch.setattr(outer, "save_model_file", original)
        (disk / "filler").unlink()
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        assert rc == 0, out + err
        _resumed(url, 16384)  # the final checkpoint: nothing is trained again
        (model,) = art.rglob("model.pt")
        torch.load(model, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_a_full_disk_at_the_fid_cache_is_one_paragraph_and_writes_nothing(tiny, capsys):
    """The FID cache (reference statistics and floors) is written while the run is set up:
    the run stops there, before any trial, and leaves nothing behind; freed, it runs."""
    with small_tmpfs(TMPFS_SIZE) as disk:
        art = disk / "art"
        filler = fill(disk, 64 * 1024)
        before, before_disk = snapshot(tiny), snapshot(disk)
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        err = _refused(rc, err)
        assert "FID cache" in err and "No space left on device" in err, err
        assert "run the same command again" in err, err
        assert snapshot(tiny) == before  # no database
        assert snapshot(disk) == before_disk  # no artifact folder, no half cache

        filler.unlink()
        rc, out, err = _run(capsys, "--set", f"artifact_dir={art}")
        assert rc == 0, out + err
        assert [t.state for t in _trials(f"sqlite:///{tiny / 'run.db'}")] == [TrialState.COMPLETE]
        assert not _temporary(disk, tiny)


def test_a_fid_cache_that_cannot_be_rewritten_keeps_the_previous_one(tmp_path):
    """A second write of the cache (new floors) on a full disk: the error names the file,
    the previous cache is byte for byte what it was, and no temporary file is left."""
    from sigmatune.models.data import load_dataset
    from sigmatune.objectives.fid import Scorer, ScorerCacheWriteError, ScorerSettings

    data = load_dataset("gmm2d", seed=0)
    settings = ScorerSettings("rff", 256, seed=0)
    with small_tmpfs("4m") as disk:
        scorer = Scorer(
            data.x, None, settings, dataset_name="gmm2d", value_range=None, cache_dir=disk
        )
        before = snapshot(disk)
        fill(disk, LEAVE)
        with pytest.raises(ScorerCacheWriteError) as info:
            scorer.floors(sets=2)
        assert str(scorer.cache_path) in str(info.value)
        assert "No space left on device" in str(info.value)
        assert "previous cache file is unchanged" in str(info.value)
        (disk / "filler").unlink()
        assert snapshot(disk) == before


@pytest.mark.slow
# (a thread's traceback would go to stderr; under pytest it is this warning)
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_database_on_a_full_disk_is_one_paragraph_and_the_trial_is_retried(
    tiny, capsys, monkeypatch
):
    """The database meets the full disk while the inner studies write their trials: the
    outer trial cannot be marked failed either (SQLite cannot write a byte), so the paragraph
    says the next run fails it by its heartbeat and retries it; Optuna's heartbeat thread
    meets the same full disk without a traceback; freed, the next run finishes the study."""
    with small_tmpfs(TMPFS_SIZE) as disk:
        url = f"sqlite:///{disk / 'run.db'}"
        art = tiny / "art"

        original = outer.tune_all_budgets

        def fill_first(*args, **kwargs):
            fill(disk, 0)
            time.sleep(2.5)  # a heartbeat (every second) meets the full disk too
            return original(*args, **kwargs)

        monkeypatch.setattr(outer, "tune_all_budgets", fill_first)
        rc, out, err = _run(capsys, "--storage", url, "--set", f"artifact_dir={art}")
        err = _refused(rc, err)
        assert "disk is full" in err and "heartbeat" in err and "Trial 0" in err, err

        monkeypatch.setattr(outer, "tune_all_budgets", original)
        (disk / "filler").unlink()
        time.sleep(2)  # the grace period of RUN's heartbeats
        rc, out, err = _run(capsys, "--storage", url, "--set", f"artifact_dir={art}")
        assert rc == 0, out + err
        _resumed(url, 16384)
        assert [t.state for t in _trials(url)][0] == TrialState.FAIL
        assert not _temporary(disk, tiny)
