"""The last trials of an inner study that tunes the σ range are the fair baselines on the best
range so far (study.inner.enqueue_polish): the search never ends worse than them."""

from __future__ import annotations

from functools import partial

import optuna
import pytest
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.models.schedules import karras, loglinear
from sigmatune.study import inner, records
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study.config import load_config
from sigmatune.study.context import make_context

NFE = 7  # heun: 4 steps


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = tmp_path_factory.mktemp("polish")
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{directory / 'polish.db'}",
            "device": "cpu",
            "inner.inner_trials": 10,
            "inner.sampler": "random",  # the polish is what is tested, not the GP
            "inner.nfe_budgets": [NFE],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
            "inner.peers": [],  # a full-range peer would be the best: nothing to polish
        },
    )
    storage = optuna.storages.InMemoryStorage()
    return make_context(config, storage=storage, progress=False, log=lambda _m: None)


def _polished(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {
        t.user_attrs[records.START]: t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(records.START) in inner.POLISH
    }


def _sigmas(trial: optuna.trial.FrozenTrial) -> torch.Tensor:
    return torch.tensor(records.read_inner_schedule(trial).sigmas, dtype=torch.float64)


def test_polish_trials_are_the_fair_baselines_on_the_best_range_before_them(ctx) -> None:
    torch.set_num_threads(1)
    record = inner.tune_steps(ctx, gmm2d_mixture(), "polish/nfe-7", NFE)
    study = optuna.load_study(study_name="polish/nfe-7", storage=ctx.storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10 and not any(t.state.name == "WAITING" for t in trials)
    polished = [t for t in trials if t.user_attrs.get(records.START) in inner.POLISH]
    assert polished and min(t.number for t in polished) >= 10 - len(inner.POLISH)
    n = len(record.tuned.sigmas) - 1
    for trial in polished:
        before = [t for t in trials if t.number < trial.number and t.state.name == "COMPLETE"]
        best = min(before, key=lambda t: (t.value, t.number))
        if best.user_attrs.get(records.START) in inner.POLISH:
            continue  # the first polish trial became the best: the second polishes it
        smin, smax = records.read_inner_schedule(best).sigma_range
        make = karras if trial.user_attrs[records.START] == "karras_rho7_same_range" else None
        expected = karras(n, smin, smax, 7.0) if make else loglinear(n, smin, smax)
        assert torch.allclose(_sigmas(trial), expected, rtol=1e-9)


def test_the_tuned_schedule_is_no_worse_than_karras_on_its_own_range(ctx) -> None:
    """On the search seeds: karras rho=7 on the tuned range is one of the study's trials."""
    record = inner.tune_steps(ctx, gmm2d_mixture(), "polish/nfe-7", NFE)
    study = optuna.load_study(study_name="polish/nfe-7", storage=ctx.storage)
    n = len(record.tuned.sigmas) - 1
    same = karras(n, *record.tuned.sigma_range, 7.0)
    matches = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and torch.allclose(_sigmas(t), same, rtol=1e-9)
    ]
    assert matches and record.search_fid <= min(t.user_attrs[records.FID] for t in matches)


def test_a_finished_study_is_not_polished_again(ctx) -> None:
    inner.tune_steps(ctx, gmm2d_mixture(), "again/nfe-7", NFE)
    inner.tune_steps(ctx, gmm2d_mixture(), "again/nfe-7", NFE)  # resumed: nothing to do
    study = optuna.load_study(study_name="again/nfe-7", storage=ctx.storage)
    assert len(study.get_trials(deepcopy=False)) == 10  # nothing enqueued, nothing waiting


def test_no_polish_when_the_range_is_fixed(ctx) -> None:
    fixed = ctx.__class__(
        **{**vars(ctx), "config": ctx.config.replace({"inner.tune_sigma_range": False})}
    )
    inner.tune_steps(fixed, gmm2d_mixture(), "fixed/nfe-7", NFE)
    study = optuna.load_study(study_name="fixed/nfe-7", storage=ctx.storage)
    assert not _polished(study)


def test_a_study_stopped_with_polish_waiting_runs_it_and_adds_none(ctx) -> None:
    """A process killed after enqueueing the polish: the resumed search runs what waits."""
    name = "stopped/nfe-7"
    D = gmm2d_mixture()
    study = inner.open_inner_study(ctx, D, name, NFE)
    objective = partial(inner.sample_trial, ctx=ctx, D=D, nfe=NFE)
    adapter.optimize_until(study, objective, 8, poll_seconds=0.1)
    assert inner.enqueue_polish(ctx, study, NFE, 2) >= 1
    inner.run_search(ctx, study, D, NFE)  # the resumed search
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10 and not any(t.state.name == "WAITING" for t in trials)
