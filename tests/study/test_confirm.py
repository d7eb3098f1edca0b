"""``sigmatune confirm``: an outer study's leading configurations trained again with seeds
the study never used, ranked by all their models (``study.confirm``)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import optuna
import pytest

from sigmatune.study import confirm, records
from sigmatune.study.commands.cli import main
from sigmatune.study.context import make_context
from sigmatune.study.storage import open_storage


def _trial(number, name, value, *, nfe=5):
    inner = {nfe: SimpleNamespace(value=value)}
    return SimpleNamespace(number=number, name=name, inner=inner, objective={"x": 1})


def _study(trials, nfe=5):
    return SimpleNamespace(name="s", primary_nfe=nfe, complete=trials, trials=trials)


def _confirmation(number, name, means):
    models = tuple(confirm.ModelScore(k, (m, m), k > 0) for k, m in enumerate(means))
    return confirm.Confirmation(SimpleNamespace(number=number, name=name), 5, models)


def test_the_picked_trials_are_the_leaders_and_the_comparison_a_winner_needs():
    trials = [
        _trial(0, "edm", 0.30),
        _trial(1, "edm2", 0.25),
        _trial(2, None, 0.20),
        _trial(3, None, 0.28),
        _trial(4, "flow", 0.40),
    ]
    study = _study(trials)
    assert confirm.pick_trials(study, 3) == [2, 1, 3]
    # the best literature (1) and the best proposed (2) join the top one
    assert confirm.pick_trials(study, 1) == [2, 1]
    assert confirm.pick_trials(_study(trials[:2]), 1) == [1]  # no proposed trial at all
    assert confirm.pick_trials(study, 3, [4, 0, 4]) == [4, 0]
    with pytest.raises(confirm.ConfirmError, match=r"--trials: trial 9 .*complete trials: 0, 1"):
        confirm.pick_trials(study, 3, [9])
    with pytest.raises(confirm.ConfirmError, match="--top: 0 is not allowed"):
        confirm.pick_trials(study, 0)


def test_the_spread_is_over_models_and_a_win_needs_both_spreads():
    c = _confirmation(3, None, [1.0, 2.0, 3.0])
    assert c.mean == pytest.approx(2.0)
    assert c.spread == pytest.approx(1.0)  # sample std of the models' means, not of the sets
    a = _confirmation(3, None, [1.0, 1.2])  # mean 1.1, spread 0.1414
    b = _confirmation(0, "edm", [1.5, 1.7])  # mean 1.6, spread 0.1414
    assert confirm.beats(a, b) and not confirm.beats(b, a)
    close = _confirmation(0, "edm", [1.3, 1.5])  # mean 1.4: 1.1 + 0.28 < 1.4 only just
    assert confirm.beats(a, close)
    closer = _confirmation(0, "edm", [1.25, 1.35])  # mean 1.3, spread 0.0707: 1.312 > 1.3
    assert not confirm.beats(a, closer)
    v = confirm.verdict(sorted([closer, a], key=lambda c: c.mean))
    assert v == {
        "best": 3,
        "best_literature": 0,
        "best_proposed": 3,
        "proposed_beats_literature": False,
    }
    assert confirm.verdict([b])["proposed_beats_literature"] is None


def test_the_seeds_are_ones_the_study_never_trained_with():
    assert confirm.confirm_seeds(0, 3) == [1, 2, 3]
    assert confirm.confirm_seeds(41, 1) == [42]


@pytest.fixture
def toy_copy(toy_run, tmp_path):
    """The session's toy run copied (its database, FID cache and checkpoints), so that the
    confirmations written here reach no other test."""
    shutil.copytree(toy_run.directory, tmp_path / "run")
    url = f"sqlite:///{tmp_path / 'run' / 'toy.db'}"
    return SimpleNamespace(url=url, name=toy_run.name, directory=tmp_path / "run")


@pytest.mark.slow
def test_training_again_with_the_study_seed_reproduces_the_study_model(toy_copy):
    """Retraining is the run's own training: with the run's seed it makes the same model,
    whose tuned schedule scores the same held-out FIDs as stored by the study."""
    storage = open_storage(toy_copy.url)
    study = records.read_study(storage, toy_copy.name)
    ctx = make_context(
        study.config.replace(storage=toy_copy.url), storage=storage, progress=False, log=print
    )
    best = study.best.number
    [c] = confirm.confirm_study(ctx, storage, study, [best], [study.config.seed], log=print)
    own, again = c.models
    assert not own.retrained and again.retrained
    assert again.values == pytest.approx(own.values, rel=1e-5)
    assert c.spread == pytest.approx(0.0, abs=1e-6 * c.mean)


@pytest.mark.slow
def test_a_confirmation_is_stored_and_never_measured_twice(toy_copy, monkeypatch, capsys):
    monkeypatch.chdir(toy_copy.directory)
    assert main(["confirm", toy_copy.url, "--top", "1", "--seeds", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out
    storage = open_storage(toy_copy.url)
    study = records.read_study(storage, toy_copy.name)
    stored = records.read_confirmations(storage, study.study_id)
    assert list(stored) == [study.best.number] and list(stored[study.best.number]) == [1]
    assert "best after confirmation: trial" in first and "seed 1" in first

    def no_training(*_a, **_k):
        raise AssertionError("a stored confirmation was trained again")

    # status shows the same figure over the models, in text and JSON
    assert main(["status", toy_copy.url]) == 0
    status_text = capsys.readouterr().out
    [line] = [x for x in status_text.splitlines() if "confirmed at nfe" in x]
    best_row = [x for x in first.splitlines() if x.startswith(f"{study.best.number} ")][0]
    assert line.split(": ")[1].split(" over ")[0] == best_row.split("  ")[-1]
    assert "over 2 models (training seeds 0, 1)" in line
    assert f"best of the 1 confirmed trial(s) (`sigmatune confirm`): trial {study.best.number}" in (
        status_text
    )
    assert main(["status", toy_copy.url, "--format", "json"]) == 0
    rows = {r["number"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[study.best.number]["confirmed"]["models"] == 2
    assert [r["confirmed"] for n, r in rows.items() if n != study.best.number] == [None]

    monkeypatch.setattr(confirm, "retrain", no_training)
    assert main(["confirm", toy_copy.url, "--top", "1", "--seeds", "1", "--no-progress"]) == 0
    second = capsys.readouterr().out
    assert second.splitlines()[-3:] == first.splitlines()[-3:]


@pytest.mark.slow
def test_bad_arguments_are_one_paragraph_and_write_nothing(toy_copy, capsys):
    storage = open_storage(toy_copy.url)
    study_id = storage.get_study_id_from_name(toy_copy.name)
    before = storage.get_study_user_attrs(study_id)
    assert main(["confirm", toy_copy.url, "--trials", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigmatune: error: --trials: trial 7 of study")
    assert "complete trials: 0, 1" in err and "Traceback" not in err
    assert main(["confirm", toy_copy.url, "--seeds", "0"]) == 2
    assert "--seeds: 0 is not allowed" in capsys.readouterr().err
    assert storage.get_study_user_attrs(study_id) == before
    runs = list((toy_copy.directory / "sigmatune-artifacts" / "runs").rglob("confirm-seed-*"))
    assert runs == []


def test_a_study_of_a_given_model_has_nothing_to_confirm():
    study = SimpleNamespace(kind="sampling", name="m-sampling")
    with pytest.raises(confirm.ConfirmError, match="no training to confirm"):
        confirm.confirm_study(None, None, study, [0], [1])  # type: ignore[arg-type]


optuna.logging.set_verbosity(optuna.logging.WARNING)
