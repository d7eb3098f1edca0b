"""The outer study warm-started from the literature (issue 20, item 2): ``outer.sampler =
"cmaes"`` (``spaces.WarmCmaEsSampler`` with ``categorical_from_best``) proposes around the best
scored literature configuration, with a step from the spread of the good ones, in the best
one's branch of the space; before the literature is scored it is the enqueued flow, and a
resumed study starts where the killed one would have."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from sigmatune.objectives.literature import LITERATURE
from sigmatune.study import spaces
from sigmatune.study.config import ConfigError, load_config

SIGMA_DATA = 0.5
CMAES = load_config("toy", {"outer.sampler": "cmaes"})
# made-up scores of the enqueued literature: edm2 best, then edm, rectified_flow (all three
# lognormal); laplace pruned with a lower interim value than any complete one (a pruned
# trial's value is an interim score on another scale: it must not be the start)
COMPLETE = {"edm2": 0.30, "edm": 0.32, "rectified_flow": 0.35, "min_snr": 0.60, "sigmoid": 0.70}
PRUNED = {"laplace": 0.10, "v_cosine": 0.50}


def _literature_params(config):
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    return {
        name: spaces.objective_params(LITERATURE[name].description(SIGMA_DATA, smin, smax), config)
        for name in (*COMPLETE, *PRUNED)
    }


def _objective(config):
    def objective(trial: optuna.Trial) -> float:
        spaces.suggest_objective_description(trial, config, SIGMA_DATA)
        name = trial.user_attrs.get("lit")
        value = COMPLETE.get(name, PRUNED.get(name, 1.0))  # a proposal: 1.0 (never the start)
        trial.report(value, step=1)
        trial.should_prune()  # (sets Hyperband's brackets up; its verdict is not used here)
        if name in PRUNED:
            raise optuna.TrialPruned()
        return value

    return objective


def _study(config=CMAES, storage=None, name="outer", pruner=None):
    return optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        sampler=spaces.make_outer_sampler(config),
        pruner=pruner or optuna.pruners.NopPruner(),
    )


def _scored_study(storage=None, proposals=0, name="outer", pruner=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(storage=storage, name=name, pruner=pruner)
    literature = _literature_params(CMAES)
    for name_, params in literature.items():
        study.enqueue_trial(params, user_attrs={"lit": name_})
    study.optimize(_objective(CMAES), n_trials=len(literature) + proposals)
    return study, literature


def _unit(value, dist):
    low, high, v = dist.low, dist.high, value
    if dist.log:
        low, high, v = math.log(low), math.log(high), math.log(v)
    return (v - low) / (high - low)


def test_cmaes_starts_at_the_best_complete_literature_configuration():
    study, literature = _scored_study()
    proposal = study.ask()
    start = study.sampler.base.start(study, study._storage.get_trial(proposal._trial_id))
    assert start is not None
    assert start.best.user_attrs["lit"] == "edm2"  # not laplace: pruned ones rank after
    best = literature["edm2"]
    floats = {k: v for k, v in best.items() if isinstance(v, float)}
    assert floats == {"density.lognormal.P_mean": -0.4, "density.lognormal.P_std": 1.0}
    assert start.x0 == floats
    assert set(start.space) == set(floats)


def test_cmaes_sigma0_is_the_spread_of_the_good_literature_configurations():
    study, literature = _scored_study()
    start = spaces.cma_start(study, None, branch=True)
    # the best third of the 7 scored (3): edm2, edm, rectified_flow; per param the standard
    # deviation in its [0, 1] scale, averaged over the two params, inside the bounds
    good = [literature[n] for n in ("edm2", "edm", "rectified_flow")]
    stds = [
        np.std([_unit(p[name], dist) for p in good]) for name, dist in sorted(start.space.items())
    ]
    expected = float(np.mean(stds))
    low, high = spaces.CMA_SPREAD_BOUNDS
    assert low < expected < high  # the clip is not what decides it here
    assert start.sigma0 == pytest.approx(expected, rel=1e-12)
    # a fixed step (the inner study's) is unchanged by this
    assert spaces.cma_start(study, branch=True).sigma0 == spaces.CMA_SIGMA0
    # without the best's branch, only the params every complete trial has are searched:
    # none here (edm2 and min_snr have different densities)
    assert spaces.cma_start(study) is None


@pytest.mark.parametrize("pruner", ["none", "hyperband"])
def test_cmaes_proposals_are_new_points_near_the_best_in_its_branch(pruner):
    """With Hyperband, Optuna shows the sampler one bracket of the study: the start is still
    the best of the whole study (the toy run's proposals started at EDM2 in their bracket,
    not at EDM's defaults, before this)."""
    hyperband = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27)
    study, literature = _scored_study(
        proposals=6, pruner=hyperband if pruner == "hyperband" else None
    )
    proposed = [t for t in study.trials if "lit" not in t.user_attrs]
    assert len(proposed) == 6
    best = literature["edm2"]
    start = spaces.cma_start(study, None, branch=True)
    for t in proposed:
        assert "cma:generation" in t.system_attrs  # CMA-ES drew it
        # the categorical params are the best one's (its branch), never random
        for key in ("parameterisation", "density", "weighting", "adaptive"):
            assert t.params[key] == best[key]
        assert set(t.params) == set(best)
        assert t.params not in literature.values()
        # near the best: within 5 steps of sigma0 in each param's [0, 1] scale
        for name, dist in start.space.items():
            assert abs(_unit(t.params[name], dist) - _unit(best[name], dist)) < 5 * start.sigma0
    assert len({tuple(sorted(t.params.items())) for t in proposed}) == len(proposed)


def test_before_the_literature_is_scored_proposals_are_drawn_at_random():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study()
    literature = _literature_params(CMAES)
    for name, params in literature.items():
        study.enqueue_trial(params, user_attrs={"lit": name})
    running = [study.ask() for _ in literature]  # every enqueued one running (other workers)
    assert all(t.user_attrs["lit"] for t in running)
    for t, params in zip(running[:-1], literature.values(), strict=False):
        assert t.params == {} or t.params == params
    study.tell(running[0], 0.3)  # one scored, the others still running
    assert spaces.starting_trials(study) == []
    assert spaces.cma_start(study, None, branch=True) is None
    proposal = study.ask()
    spaces.suggest_objective_description(proposal, CMAES, SIGMA_DATA)
    frozen = study._storage.get_trial(proposal._trial_id)
    assert "cma:generation" not in frozen.system_attrs  # not CMA-ES: random, as TPE's start-up


def test_enqueued_trials_keep_their_params(tmp_path):
    study, literature = _scored_study()
    for t in study.trials:
        assert t.params == literature[t.user_attrs["lit"]]


def test_a_resumed_study_rebuilds_the_same_start_and_draws(tmp_path):
    """Two identical histories: one goes on with the process's sampler, the other is
    reloaded from its storage with a fresh sampler (a killed and resumed run)."""
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")]
    going_on, _ = _scored_study(storage=urls[0], proposals=2)
    _scored_study(storage=urls[1], proposals=2)
    resumed = _study(storage=urls[1])  # a new process: sampler rebuilt from the config
    a, b = going_on.ask(), resumed.ask()
    assert a.number == b.number
    start_a = going_on.sampler.base.start(going_on, going_on._storage.get_trial(a._trial_id))
    start_b = resumed.sampler.base.start(resumed, resumed._storage.get_trial(b._trial_id))
    assert start_a.best.number == start_b.best.number
    assert start_a.x0 == start_b.x0 and start_a.sigma0 == start_b.sigma0
    assert spaces.suggest_objective_description(
        a, CMAES, SIGMA_DATA
    ) == spaces.suggest_objective_description(b, CMAES, SIGMA_DATA)
    assert a.params == b.params


def test_cmaes_in_the_weighting_space_starts_at_the_best_point():
    """In the W(lambda) space every literature configuration has the same float params, so
    the spread is over all of them and the proposals keep the best's parameterisation."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config("gmm32", {"outer.sampler": "cmaes"})
    study = _study(config)
    literature = _literature_params(config)
    for name, params in literature.items():
        study.enqueue_trial(params, user_attrs={"lit": name})
    study.optimize(_objective(config), n_trials=len(literature) + 2)
    start = spaces.cma_start(study, None, branch=True)
    best = literature["edm2"]
    assert start.x0 == {k: best[k] for k in start.space}
    assert len(start.space) >= 5
    for t in study.trials[len(literature) :]:
        assert t.params["parameterisation"] == best["parameterisation"]
        assert t.params not in literature.values()


def test_the_toy_preset_proposes_with_warm_cmaes_and_tpe_for_several_objectives():
    """CMA-ES minimises one objective: a multi-objective study (the README's
    ``--set 'outer.objectives=[5, 9]'``) gets TPE instead of a config error."""
    toy = load_config("toy")
    assert isinstance(spaces.make_outer_sampler(toy).base, spaces.WarmCmaEsSampler)
    one = toy.replace(**{"outer.objectives": [9]})
    assert isinstance(spaces.make_outer_sampler(one).base, spaces.WarmCmaEsSampler)
    multi = toy.replace(**{"outer.objectives": [5, 9]})
    assert isinstance(spaces.make_outer_sampler(multi).base, optuna.samplers.TPESampler)
    study = optuna.create_study(
        directions=["minimize"] * 2, sampler=spaces.make_outer_sampler(multi)
    )
    for _ in range(3):
        trial = study.ask()
        spaces.suggest_objective_description(trial, multi, SIGMA_DATA)
        study.tell(trial, [1.0, 2.0])


def test_outer_cmaes_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"outer\.sampler must be one of tpe, cmaes, random"):
        load_config("toy", {"outer.sampler": "bobyqa"})
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"outer\.sampler = 'cmaes' needs .*pip install cmaes.*tpe, random"
    ):
        load_config("toy", {"outer.sampler": "cmaes", "outer.space": "components"})


def test_pruned_trials_rank_by_training_then_value():
    """With no complete enqueued trial, the start is the pruned one that trained longest."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study()
    literature = _literature_params(CMAES)
    steps = {"edm2": (32_000, 0.2), "edm": (96_000, 0.4), "rectified_flow": (96_000, 0.5)}
    for name in steps:
        study.enqueue_trial(literature[name], user_attrs={"lit": name})

    def objective(trial):
        spaces.suggest_objective_description(trial, CMAES, SIGMA_DATA)
        step, value = steps[trial.user_attrs["lit"]]
        trial.report(value, step=step)
        raise optuna.TrialPruned()

    study.optimize(objective, n_trials=3)
    assert all(t.state == TrialState.PRUNED for t in study.trials)
    ranked = spaces.starting_trials(study)
    assert [t.user_attrs["lit"] for t in ranked] == ["edm", "rectified_flow", "edm2"]
