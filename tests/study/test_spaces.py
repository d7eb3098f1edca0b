"""study.spaces: the outer and inner search spaces and their inverses (params from a known
configuration), checked with FixedTrial and in real in-memory studies."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import FixedTrial

from sigmatune.models.samplers import SAMPLERS, steps_for_nfe
from sigmatune.models.samplers import nfe as nfe_of
from sigmatune.models.schedules import validate
from sigmatune.objectives.adaptive import ADAPTIVE
from sigmatune.objectives.densities import DENSITIES
from sigmatune.objectives.parameterisations import PARAMETERISATIONS
from sigmatune.objectives.weightings import WEIGHTINGS
from sigmatune.study import spaces
from sigmatune.study.config import load_config

SIGMA_DATA = 0.5
TOY = load_config("toy", {"inner.space": "gaps"})  # the gap space (the density: test_density_space)


def _random_trial(config, seed=0):
    """A trial of a real study (random sampler): suggests inside the declared ranges."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return study.ask()


# ----------------------------------------------------------------------------- outer


def test_edm_defaults_reproduced_from_their_params():
    desc = spaces.edm_defaults_description(TOY, SIGMA_DATA)
    params = spaces.objective_params(desc, TOY)
    assert params == {
        "parameterisation": "edm",
        "density": "lognormal",
        "density.lognormal.P_mean": -1.2,
        "density.lognormal.P_std": 1.2,
        "weighting": "unit",
        "adaptive": "none",
    }
    again = spaces.suggest_objective_description(FixedTrial(params), TOY, SIGMA_DATA)
    assert again == desc


def test_edm_defaults_objective_has_edm_effective_weighting():
    """W(λ) of EDM's defaults is N(λ; 2.4, 2.4²)(e^{−λ} + σd²)/σd² up to the truncation's
    normalising constant (docs/development.md; Karras et al. 2022, Table 1)."""
    params = spaces.objective_params(spaces.edm_defaults_description(TOY))
    objective = spaces.suggest_objective(FixedTrial(params), TOY, SIGMA_DATA)
    lam = torch.linspace(
        -2 * math.log(80.0) + 0.1, -2 * math.log(0.002) - 0.1, 41, dtype=torch.float64
    )
    normal = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    expected = normal * (torch.exp(-lam) + SIGMA_DATA**2) / SIGMA_DATA**2
    ratio = objective.effective_weighting(lam) / expected
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert 1.0 <= ratio[0].item() < 1.1  # truncation to [σ_min, σ_max] removes < 10% mass


def _only(kind, name):
    """A toy config whose outer space has just one name of ``kind`` (no EDM baseline)."""
    overrides = {"outer.enqueue_baseline": False, "outer.literature": [], f"outer.{kind}": [name]}
    return TOY.replace(**overrides)


# wlam is the "weighting" space's density and weighting (tests/study/test_weighting_space.py)
FAMILIES = (
    [("parameterisations", n) for n in PARAMETERISATIONS]
    + [("densities", n) for n in DENSITIES if n != "wlam"]
    + [("weightings", n) for n in WEIGHTINGS if n != "wlam"]
    + [("adaptive", n) for n in ["none", *ADAPTIVE]]
)


@pytest.mark.parametrize("kind, name", FAMILIES, ids=[f"{k}-{n}" for k, n in FAMILIES])
def test_every_registry_entry_gives_a_constructible_objective(kind, name):
    config = _only(kind, name)
    trial = _random_trial(config, seed=len(name))
    objective = spaces.suggest_objective(trial, config, SIGMA_DATA)
    desc = objective.describe()
    key = {
        "parameterisations": "parameterisation",
        "densities": "density",
        "weightings": "weighting",
        "adaptive": "adaptive",
    }[kind]
    chosen = desc[key] if kind == "parameterisations" else (desc[key] or {"name": "none"})
    chosen = chosen if isinstance(chosen, str) else chosen["name"]
    assert chosen == name
    lam_min, lam_max = -2 * math.log(config.sigma_max), -2 * math.log(config.sigma_min)
    lam = torch.linspace(lam_min + 1e-6, lam_max - 1e-6, 201, dtype=torch.float64)
    W = objective.effective_weighting(lam)
    assert torch.isfinite(W).all() and (W > 0).all()
    # describe() (with its resolved defaults) maps back to the trial's own params
    assert spaces.objective_params(desc, config) == trial.params


@pytest.mark.parametrize("kind", ["density", "weighting"])
def test_piecewise_has_one_param_per_bin(kind):
    plural = {"density": "densities", "weighting": "weightings"}[kind]
    config = TOY.replace(
        **{
            "outer.piecewise_bins": 4,
            f"outer.{plural}": ["piecewise"],
            "outer.enqueue_baseline": False,
            "outer.literature": [],
        }
    )
    trial = _random_trial(config)
    desc = spaces.suggest_objective_description(trial, config, SIGMA_DATA)
    prefix = "h" if kind == "density" else "l"
    names = sorted(k for k in trial.params if k.startswith(f"{kind}.piecewise."))
    assert names == [f"{kind}.piecewise.{prefix}{i}" for i in range(4)]
    values = desc[kind]["params"]["heights" if kind == "density" else "log_weights"]
    assert values == [trial.params[n] for n in names]
    low, high = (0.05, 1.0) if kind == "density" else (-3.0, 3.0)
    assert all(low <= v <= high for v in values)


def test_objective_params_rejects_what_the_space_cannot_hold():
    desc = spaces.edm_defaults_description(TOY, SIGMA_DATA)
    desc["density"]["params"]["P_std"] = 3.0
    with pytest.raises(ValueError, match=r"P_std must be in \[0\.4, 2\.5\].*P_std=3\.0"):
        spaces.objective_params(desc)
    desc = spaces.edm_defaults_description(TOY, SIGMA_DATA)
    desc["weighting"] = {"name": "piecewise", "params": {"log_weights": [0.0, 1.0]}}
    with pytest.raises(ValueError, match=r"outer\.piecewise_bins=6 values"):
        spaces.objective_params(desc, TOY)
    desc["weighting"] = {"name": "sigmoid", "params": {"b": 0.0, "c": 1.0}}
    with pytest.raises(ValueError, match=r"parameters \['c'\] are not in the search space"):
        spaces.objective_params(desc, TOY)
    desc["weighting"] = {"name": "unit", "params": {}}
    desc["adaptive"] = {"name": "importance", "params": {"num_bins": 3}}
    with pytest.raises(ValueError, match=r"default parameters"):
        spaces.objective_params(desc, TOY)


def test_edm_defaults_need_edm_in_the_space():
    config = TOY.replace(
        **{
            "outer.enqueue_baseline": False,
            "outer.literature": [],
            "outer.parameterisations": ["v"],
        }
    )
    with pytest.raises(ValueError, match=r"parameterisation 'edm' is not in the search space"):
        spaces.edm_defaults_description(config)


# ----------------------------------------------------------------------------- inner


def _karras_numpy(n, smin, smax, rho=7.0):
    """Karras et al. 2022, eq. 5, written out independently."""
    i = np.arange(n)
    s = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return np.append(s, 0.0)


def _max_rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a[:-1] - b[:-1]) / b[:-1]))


CASES = [
    ("heun", 3),
    ("heun", 5),
    ("heun", 9),
    ("heun", 35),
    ("euler", 4),
    ("euler", 10),
    ("dpmpp_2m", 7),
    ("dpmpp_2m", 50),
]


@pytest.mark.parametrize("sampler, nfe", CASES)
@pytest.mark.parametrize("tune", [False, True])
def test_baselines_round_trip_exactly_through_schedule_params(sampler, nfe, tune):
    config = TOY.replace(
        **{
            "inner.samplers": [sampler],
            "inner.nfe_budgets": [nfe],
            "inner.tune_sigma_range": tune,
            "inner.tune_churn": tune and sampler == "heun",
            # GITS (the peers, the interim score) bounds the budget by its 32-point grid
            "inner.peers": [],
            "outer.pruner": "none",
        }
    )
    baselines = spaces.baseline_schedules(config, nfe)
    assert set(baselines) == {"karras_rho7", "loglinear"}
    n = steps_for_nfe(sampler, nfe)
    independent = {
        "karras_rho7": _karras_numpy(n, 0.002, 80.0),
        "loglinear": np.append(np.exp(np.linspace(math.log(80.0), math.log(0.002), n)), 0.0),
    }
    for name, choice in baselines.items():
        assert choice.sampler == sampler
        assert _max_rel(choice.sigmas, independent[name]) < 1e-12
        params = spaces.schedule_params(
            choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
        )
        back = spaces.suggest_schedule(FixedTrial(params), config, nfe)
        assert back.sampler == sampler
        assert back.sigmas[-1] == 0 and len(back.sigmas) == n + 1
        assert _max_rel(back.sigmas, choice.sigmas) < 1e-10
        assert back.sampler_kwargs.get("S_churn", 0.0) == 0.0


def test_suggested_schedules_are_valid_and_fit_the_budget():
    config = TOY.replace(
        **{
            "inner.samplers": list(SAMPLERS),
            "inner.tune_sigma_range": True,
            "inner.tune_churn": True,
        }
    )
    for seed in range(12):
        trial = _random_trial(config, seed)
        choice = spaces.suggest_schedule(trial, config, 9)
        validate(choice.sigmas)
        n = len(choice.sigmas) - 1
        assert nfe_of(choice.sampler, n) <= 9 and n == steps_for_nfe(choice.sampler, 9)
        gaps = sorted(k for k in trial.params if ".gap_" in k)
        assert gaps == sorted(f"{choice.sampler}.gap_{i}" for i in range(n - 1))
        assert 0.002 <= choice.sigmas[-2] < choice.sigmas[0] <= 80.0
        if choice.sampler == "heun":
            assert 0 <= choice.sampler_kwargs["S_churn"] <= 40
        else:
            assert choice.sampler_kwargs == {}


def test_sigma_range_space_stays_inside_the_run_and_apart():
    for smin, smax in [(0.002, 80.0), (0.01, 0.1), (1e-3, 1.5e-3)]:
        config = TOY.replace(sigma_min=smin, sigma_max=smax, **{"inner.tune_sigma_range": True})
        low, high = spaces.sigma_range_space(config)
        assert low.low == smin and high.high == smax
        assert low.high < high.low  # every sigma_min is below every sigma_max


def test_schedule_params_rejects_schedules_outside_the_space():
    config = TOY.replace(**{"inner.tune_sigma_range": False})
    with pytest.raises(ValueError, match=r"must have 4 values \(3 steps of heun at NFE 5\)"):
        spaces.schedule_params([80.0, 1.0, 0.0], "heun", config=config, nfe=5)
    with pytest.raises(ValueError, match=r"sigma_max must equal the config's sigma_max=80\.0"):
        spaces.schedule_params([40.0, 1.0, 0.002, 0.0], "heun", config=config, nfe=5)
    tiny = [80.0, 79.9999, 0.002, 0.0]  # a gap of ~1e-7 of the range
    with pytest.raises(ValueError, match=r"not in the search space"):
        spaces.schedule_params(tiny, "heun", config=config, nfe=5)
    with pytest.raises(ValueError, match=r"S_churn is searched only for heun"):
        spaces.schedule_params(
            [80.0, 1.0, 0.002, 0.0], "heun", {"S_churn": 5.0}, config=config, nfe=5
        )
    with pytest.raises(ValueError, match=r"sampler 'euler' is not in the search space"):
        spaces.schedule_params([80.0, 1.0, 0.002, 0.0], "euler", config=config, nfe=3)


# ----------------------------------------------------------------------------- real studies


def test_outer_study_runs_with_the_edm_baseline_first():
    study = optuna.create_study(
        sampler=spaces.make_outer_sampler(TOY), pruner=spaces.make_outer_pruner(TOY)
    )
    study.enqueue_trial(spaces.objective_params(spaces.edm_defaults_description(TOY)))

    def objective(trial):
        obj = spaces.suggest_objective(trial, TOY, SIGMA_DATA)
        lam = torch.linspace(-8.0, 12.0, 50, dtype=torch.float64)
        return float(obj.effective_weighting(lam).sum())

    study.optimize(objective, n_trials=5)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 5
    assert trials[0].params["parameterisation"] == "edm"
    assert trials[0].params["density.lognormal.P_mean"] == -1.2


def test_inner_study_runs_with_gp_and_reproduces_enqueued_baselines():
    config = TOY
    nfe = 5
    study = optuna.create_study(
        sampler=spaces.make_inner_sampler(config, seed=1), pruner=spaces.make_inner_pruner(config)
    )
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    baselines = spaces.baseline_schedules(config, nfe)
    for name, choice in baselines.items():
        study.enqueue_trial(
            spaces.schedule_params(
                choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
            ),
            user_attrs={"baseline": name},
        )
    target = torch.log(baselines["loglinear"].sigmas[:-1])

    def objective(trial):
        choice = spaces.suggest_schedule(trial, config, nfe)
        trial.set_user_attr("sigmas", choice.sigmas.tolist())
        return float((torch.log(choice.sigmas[:-1]) - target).square().sum())

    study.optimize(objective, n_trials=5)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 5
    for t in trials[:2]:
        expected = baselines[t.user_attrs["baseline"]].sigmas
        assert _max_rel(t.user_attrs["sigmas"], expected) < 1e-10
    assert trials[1].value < 1e-18  # the loglinear baseline is the target itself


def test_inner_tpe_and_random_samplers_with_several_samplers():
    for inner_sampler in ("tpe", "random"):
        config = TOY.replace(
            **{
                "inner.sampler": inner_sampler,
                "inner.samplers": ["heun", "euler"],
                "inner.tune_churn": True,
            }
        )
        study = optuna.create_study(sampler=spaces.make_inner_sampler(config, seed=0))

        def objective(trial, config=config):
            return float(spaces.suggest_schedule(trial, config, 9).sigmas[1])

        study.optimize(objective, n_trials=5)
        assert len(study.trials) == 5


def test_pruners_follow_the_config():
    hyperband = spaces.make_outer_pruner(TOY)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._min_resource == TOY.train.checkpoint_nimg  # rungs at checkpoints
    assert hyperband._max_resource == TOY.train.train_nimg
    sha = TOY.replace(**{"outer.pruner": "successive_halving"})
    assert isinstance(spaces.make_outer_pruner(sha), optuna.pruners.SuccessiveHalvingPruner)
    median = TOY.replace(**{"outer.pruner": "median"})
    assert isinstance(spaces.make_outer_pruner(median), optuna.pruners.MedianPruner)
    # Optuna cannot prune a multi-objective study
    multi = TOY.replace(**{"outer.objectives": [5, 9]})
    assert isinstance(spaces.make_outer_pruner(multi), optuna.pruners.NopPruner)
    assert spaces.outer_objectives(multi) == (5, 9) and spaces.outer_objectives(TOY) == (5,)
    none = TOY.replace(**{"outer.pruner": "none", "inner.prune": False})
    assert isinstance(spaces.make_outer_pruner(none), optuna.pruners.NopPruner)
    assert isinstance(spaces.make_inner_pruner(none), optuna.pruners.NopPruner)
    random = TOY.replace(**{"outer.sampler": "random"})
    assert isinstance(spaces.make_outer_sampler(random).base, optuna.samplers.RandomSampler)


def test_outer_start_up_is_the_enqueued_configurations():
    """TPE's start-up counts the enqueued trials (EDM's and the literature's), so no preset
    spends its budget on random draws."""
    from sigmatune.study.config import load_config

    for preset in ("toy", "digits", "mnist", "cifar10"):
        config = load_config(preset, {"outer.sampler": "tpe"})  # (toy's own: cmaes)
        tpe = spaces.make_outer_sampler(config).base
        enqueued = int(config.outer.enqueue_baseline) + len(config.outer.literature)
        assert 2 <= tpe._n_startup_trials <= enqueued
        assert tpe._n_startup_trials < config.outer.outer_trials


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_outer_sampler_draws_depend_on_the_trial_number_not_the_process(sampler):
    """Workers that share a study each build the sampler with the config's seed; their draws
    must differ (each trial has its own number), and one process with the same seed must
    make the same study again."""
    config = TOY.replace(**{"outer.sampler": sampler})

    def draws(order):
        study = optuna.create_study(sampler=spaces.make_outer_sampler(config))
        out = {}
        for _ in order:
            # a fresh sampler per trial, as a separate process would have
            study.sampler = spaces.make_outer_sampler(config)
            trial = study.ask()
            out[trial.number] = spaces.suggest_objective_description(trial, config)
            study.tell(trial, 1.0)
        return out

    first = draws(range(4))
    again = draws(range(4))
    assert first == again  # same seed, same study
    labels = [str(d) for d in first.values()]
    assert len(set(labels)) == len(labels)  # every worker's trial draws a different point


def test_no_inner_pruning_with_the_gp_sampler():
    """GPSampler learns from complete trials only: pruning would make it repeat points."""
    gp = TOY.replace(**{"inner.sampler": "gp", "inner.prune": True})
    assert isinstance(spaces.make_inner_pruner(gp), optuna.pruners.NopPruner)
    tpe = TOY.replace(**{"inner.sampler": "tpe", "inner.prune": True})
    assert isinstance(spaces.make_inner_pruner(tpe), optuna.pruners.MedianPruner)


def test_inner_pruner_waits_for_the_baselines_and_two_more():
    """MedianPruner(n_startup_trials=4): the 5th trial is the first that can be pruned."""
    pruner = spaces.make_inner_pruner(TOY.replace(**{"inner.sampler": "tpe"}))
    study = optuna.create_study(pruner=pruner)
    pruned = []

    def objective(trial):
        trial.report(10.0 if trial.number >= 4 else 1.0, step=0)  # worse than all before
        if trial.should_prune():
            pruned.append(trial.number)
            raise optuna.TrialPruned()
        return 1.0

    study.optimize(objective, n_trials=6)
    assert pruned == [4, 5]


REGISTRIES = [("density", n, c) for n, c in DENSITIES.items()] + [
    ("weighting", n, c) for n, c in WEIGHTINGS.items()
]


@pytest.mark.parametrize("kind, name, cls", REGISTRIES, ids=[f"{k}-{n}" for k, n, _ in REGISTRIES])
def test_every_registered_family_declares_the_space_of_each_scalar_parameter(kind, name, cls):
    """One registration per extension point (issue 22): a density or weighting whose search
    space is missing or names other parameters than its constructor fails here, not at trial
    time. List parameters (piecewise) are searched per bin (``PIECEWISE_*``); the uniform
    density's lam range is the run's."""
    import inspect

    if name == "wlam":  # the "weighting" space's: its shape's numbers and the split
        config = TOY.replace(**{"outer.space": "weighting"})
        space = {**spaces.weighting_space(config), "split": spaces.SPLIT_RANGE}
    else:
        space = (spaces.DENSITY_SPACE if kind == "density" else spaces.WEIGHTING_SPACE).get(name)
    assert space is not None, f"{kind} {name!r} has no entry in study.spaces"
    run_range = {"self", "sigma_min", "sigma_max", "lam_min", "lam_max", "args", "kwargs"}
    # list parameters, and the wlam weighting's parameterisation and sigma_data (the point's)
    listed = {"heights", "log_weights", "log_values", "parameterisation", "sigma_data"}
    listed |= {"sampling"}  # the wlam weighting's sampling density (its own shape's numbers)
    scalars = set(inspect.signature(cls.__init__).parameters) - run_range - listed
    assert set(space) == scalars, (kind, name)
