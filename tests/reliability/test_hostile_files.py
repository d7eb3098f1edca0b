"""Hostile and corrupt files (issue 15): a crafted pickle as a model file, as a training
checkpoint, as Inception weights and as a scorer cache; a corrupt SQLite file; a scorer cache
of another version. Each is refused or set aside, nothing in it runs (the marker file its
payload would create never appears), and the files on disk are what the test expects.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import optuna
import pytest
import torch

from sigmatune.study.commands.cli import main

from .conftest import (  # noqa: TID252 - the suite's own helpers
    NAME,
    RUN,
    UNSAFE_ADVICE,
    hostile_pickle,
    kill_after_first_checkpoint,
    one_paragraph,
    sigmatune,
    snapshot,
    tiny_toml,
)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # a name sigmatune looks for


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


def _copy(finished: Path, folder: Path) -> Path:
    shutil.copytree(finished, folder, dirs_exist_ok=True)
    return folder


# ------------------------------------------------------------------ Inception weights

DIGITS_INCEPTION = """\
name = "dig"
dataset = "digits"
storage = "sqlite:///d.db"
device = "cpu"
[network]
name = "unet"
[inner]
fid_extractor = "inception"
fid_num_images = 64
"""


@pytest.mark.parametrize("where", ["config", "torch-home"])
def test_crafted_inception_weights_are_refused_unread(tmp_path, monkeypatch, capsys, where):
    """The weights torch-fidelity would unpickle in full, named in the config or found in
    $TORCH_HOME/hub/checkpoints: refused by their digest before any load; the run leaves
    no database and no artifact folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    marker = tmp_path / "code-ran"
    config = DIGITS_INCEPTION
    if where == "config":
        weights = hostile_pickle(tmp_path / "weights.pth", marker)
        config += f'fid_inception_weights = "{weights.name}"\n'
    else:
        hub = tmp_path / "torch-home" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        weights = hostile_pickle(hub / INCEPTION_FILE, marker)
    (tmp_path / "d.toml").write_text(config)
    before = snapshot(tmp_path)
    rc, err = _cli(capsys, "run", "d.toml", "--no-progress")
    err = one_paragraph(rc, err)
    assert "refusing to load the Inception weights file" in err and weights.name in err
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ corrupt databases


def _corrupt_databases(folder: Path, real: bytes) -> dict[str, Path]:
    out = {"random-bytes": folder / "random.db", "truncated": folder / "truncated.db"}
    out["random-bytes"].write_bytes(bytes(range(256)) * 32)
    assert len(real) > 4 * 12288
    out["truncated"].write_bytes(real[:12288])  # a real header, pages missing
    out["text"] = folder / "notes.db"
    out["text"].write_text("not a database\n")
    return out


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "text"])
def test_a_corrupt_sqlite_file_is_one_paragraph_for_every_command(
    synthetic_study, tmp_path, monkeypatch, capsys, kind
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(tiny_toml())
    real = synthetic_study.path.read_bytes()
    synthetic_study.path.unlink()
    db = _corrupt_databases(tmp_path, real)[kind]
    url = f"sqlite:///{db.name}"
    before = snapshot(tmp_path)
    for args in (
        ("status", url),
        ("export", "--storage", url),
        ("export", "--storage", url, "--format", "k-diffusion"),
        ("report", "--storage", url, "-o", "report.html"),
        ("dashboard", url, "--port", "1"),  # the storage is opened before the port is bound
        ("run", "config.toml", "--no-progress", "--storage", url),
    ):
        rc, err = _cli(capsys, *args)
        err = one_paragraph(rc, err)
        assert db.name in err, args
        assert snapshot(tmp_path) == before, args  # the file as it was, nothing beside it


# ------------------------------------------------------------------ scorer caches


def _fid_cache(folder: Path) -> Path:
    (cache,) = (folder / "run-artifacts" / "fid-cache").glob("*.pt")
    return cache


@pytest.mark.slow
def test_a_scorer_cache_of_another_version_is_refused_and_kept(
    finished_tiny, tmp_path, capsys, monkeypatch
):
    """A cache whose key says another schema: the run stops with one paragraph naming the
    file, and neither the cache nor the database changes."""
    folder = _copy(finished_tiny, tmp_path)
    monkeypatch.chdir(folder)
    cache = _fid_cache(folder)
    state = torch.load(cache, weights_only=True)
    state["key"] = {**state["key"], "schema": -1}
    torch.save(state, cache)
    before = snapshot(folder)
    rc, err = _cli(capsys, "run", "config.toml", "--no-progress")
    err = one_paragraph(rc, err)
    assert cache.name in err and "another version" in err
    assert snapshot(folder) == before


@pytest.mark.slow
def test_a_crafted_scorer_cache_runs_nothing_and_is_replaced(
    finished_tiny, tmp_path, capsys, monkeypatch
):
    """A pickle where the scorer's cache was: read with weights_only=True, so its payload
    never runs; it is recomputed and replaced by a real cache."""
    folder = _copy(finished_tiny, tmp_path)
    monkeypatch.chdir(folder)
    cache, marker = _fid_cache(folder), folder / "code-ran"
    good = torch.load(cache, weights_only=True)
    hostile_pickle(cache, marker)
    rc, _ = _cli(capsys, "run", "config.toml", "--no-progress")  # the study is finished
    assert rc == 0
    assert not marker.exists()
    again = torch.load(cache, weights_only=True)
    assert again["key"] == good["key"]


def test_the_scorer_never_advises_loading_a_cache_unsafely(tmp_path, recwarn):
    from sigmatune.objectives.fid import Scorer, ScorerSettings

    reference = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    settings = ScorerSettings("rff", 64, seed=0)
    kwargs = {"dataset_name": "x", "value_range": None, "cache_dir": tmp_path}
    scorer = Scorer(reference, None, settings, **kwargs)
    hostile_pickle(scorer.cache_path, tmp_path / "code-ran")
    Scorer(reference, None, settings, **kwargs)
    assert not (tmp_path / "code-ran").exists()
    text = " ".join(str(w.message) for w in recwarn.list)
    assert not any(advice in text for advice in UNSAFE_ADVICE), text


# ------------------------------------------------------------------ training checkpoints


@pytest.mark.slow
def test_a_crafted_training_checkpoint_is_set_aside_and_never_run(tmp_path):
    """Killed in training, its newest checkpoint replaced by a crafted pickle: the same
    command reads it with weights_only=True, moves it to ignored/ with a note, trains
    from the last checkpoint it can trust and completes; the payload never runs."""
    (tmp_path / "config.toml").write_text(
        tiny_toml(outer__outer_trials="1", inner__inner_trials="2", train__train_nimg="65_536")
    )

    log = tmp_path / "first.log"
    newest = kill_after_first_checkpoint(tmp_path, log)[-1]
    marker = tmp_path / "code-ran"
    hostile_pickle(newest, marker)
    out = sigmatune(*RUN, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not marker.exists()
    aside = newest.parent / "ignored" / newest.name
    assert aside.is_file() and "not resumed" in out.stdout + out.stderr
    with pytest.raises(pickle.UnpicklingError):  # still the crafted file, set aside unread
        torch.load(aside, weights_only=True)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{tmp_path / 'run.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1
