"""The outer "weighting" space (outer.space = "weighting"): W(λ) of objectives.wfamily, its
split between p and w, and the parameterisation; the literature enqueued as their points."""

from __future__ import annotations

import math
import types

import optuna
import pytest
import torch

from sigmatune.objectives import wlam
from sigmatune.objectives.curves import lam_grid, weighting_curves
from sigmatune.objectives.literature import LITERATURE
from sigmatune.study import records, spaces
from sigmatune.study import run as run_module
from sigmatune.study.config import ConfigError, load_config

SIGMA_DATA = 0.5
WEIGHTING = load_config("toy", {"outer.space": "weighting"})  # outer.split = "shape"
POWER = load_config("toy", {"outer.space": "weighting", "outer.split": "power"})
BUMP = ("center", "slope_low", "slope_high", "knee", "curvature")


def _ask(study: optuna.Study, config) -> tuple[optuna.trial.Trial, dict]:
    trial = study.ask()
    return trial, spaces.suggest_objective_description(trial, config, SIGMA_DATA)


@pytest.mark.parametrize(
    "key, value",
    [("outer.space", "weights"), ("outer.weighting_shape", 3), ("outer.split", "half")],
)
def test_a_bad_outer_space_key_is_one_paragraph_naming_key_value_and_choices(tmp_path, key, value):
    storage = tmp_path / "never.db"
    with pytest.raises(ConfigError) as error:
        load_config("toy", {key: value, "storage": f"sqlite:///{storage}"})
    message = str(error.value)
    assert "\n" not in message and key in message and repr(value) in message
    allowed = {
        "outer.space": "components, weighting",
        "outer.weighting_shape": "bump, piecewise",
        "outer.split": "shape, power",
    }[key]
    assert allowed in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_literature_needs_no_density_or_weighting_names_in_the_weighting_space():
    """Their points use the wlam density and weighting; in the components space the same
    names are errors."""
    overrides = {"outer.densities": ["lognormal"], "outer.weightings": ["unit"]}
    config = load_config("toy", {**overrides, "outer.space": "weighting"})
    assert "min_snr" in config.outer.literature
    with pytest.raises(ConfigError, match="outer.densities must include 'cosine'"):
        load_config("toy", overrides)


@pytest.mark.parametrize("name", ["edm", "min_snr", "sigmoid"])
@pytest.mark.parametrize("config", [WEIGHTING, POWER], ids=["shape", "power"])
def test_an_enqueued_literature_configuration_is_trained_as_its_point(name, config):
    """objective_params maps a literature configuration to its nearest point; the trial that
    Optuna hands out suggests exactly that point, whose W is within the family's tolerance
    of the configuration's (exactly EDM's and sigmoid's), with its parameterisation and
    adaptive mechanism. With outer.split = "shape" its sampling density is the
    configuration's too: EDM and sigmoid are their own objectives again."""
    desc = LITERATURE[name].description(
        SIGMA_DATA, float(config.sigma_min), float(config.sigma_max)
    )
    study = optuna.create_study()
    study.enqueue_trial(spaces.objective_params(desc, config))
    _, point = _ask(study, config)
    assert point["density"]["name"] == point["weighting"]["name"] == "wlam"
    assert point["parameterisation"] == desc["parameterisation"]
    assert point["adaptive"] == desc["adaptive"]
    lam = lam_grid(float(config.sigma_min), float(config.sigma_max), 1001)
    mine, theirs = weighting_curves(point, lam), weighting_curves(desc, lam)
    l1, _ = wlam.curve_distance(mine["W"], theirs["W"], lam)
    assert l1 <= wlam.BUMP_TOLERANCE_L1
    if name != "min_snr":
        assert l1 < 1e-4
    p_l1, _ = wlam.curve_distance(mine["p_lam"], theirs["p_lam"], lam)
    if config is WEIGHTING:
        assert p_l1 < 1e-4
    elif name == "edm":
        assert p_l1 > 0.5  # no power of EDM's W is near its sampling density


@pytest.mark.parametrize("config", [WEIGHTING, POWER], ids=["shape", "power"])
def test_proposed_points_train_objectives_whose_W_is_the_suggested_shape(config):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    lam = lam_grid(float(config.sigma_min), float(config.sigma_max), 301)

    def log_bump(q):
        x = lam - q["center"]
        hinge = q["knee"] * torch.nn.functional.softplus(x / q["knee"])
        log_w = q["slope_low"] * x - (q["slope_low"] - q["slope_high"]) * hinge
        return log_w - q["curvature"] * x**2 / 2

    for _ in range(3):
        trial, desc = _ask(study, config)
        p = trial.params
        log_W = log_bump({k: p[f"wlam.{k}"] for k in BUMP})
        curves = weighting_curves(desc, lam)
        l1, _ = wlam.curve_distance(curves["W"], torch.exp(log_W - log_W.max()), lam)
        assert l1 < 1e-9
        if config is POWER:
            log_p = p["wlam.split"] * log_W
        else:
            log_p = log_bump({k: p[f"wlam.p.{k}"] for k in BUMP})
        p_l1, _ = wlam.curve_distance(curves["p_lam"], torch.exp(log_p - log_p.max()), lam)
        assert p_l1 < 1e-4  # the density's table interpolates ln p between 4097 points
        assert spaces.objective_params(desc, config) == p  # and back
        study.tell(trial, 1.0)


def test_the_piecewise_shape_is_searched_with_piecewise_bins_knots():
    config = load_config(
        "toy",
        {
            "outer.space": "weighting",
            "outer.weighting_shape": "piecewise",
            "outer.piecewise_bins": 4,
        },
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial, desc = _ask(study, config)
    assert sorted(k for k in trial.params if k.startswith("wlam.v")) == [
        f"wlam.v{i}" for i in range(4)
    ]
    assert len(desc["density"]["params"]["log_values"]) == 4
    assert spaces.objective_params(desc, config) == trial.params
    edm = spaces.edm_defaults_description(config, SIGMA_DATA)  # mapped onto 4 knots
    assert len(spaces.objective_params(edm, config)) == 1 + 4 + 4 + 1  # W's and p's knots


def test_points_outside_the_space_are_refused_with_the_value():
    point = wlam.point_description(
        {"center": 0.0, "slope_low": 6.0, "slope_high": -1.0, "knee": 1.0, "curvature": 0.0},
        0.5,
        "eps",
        SIGMA_DATA,
        float(WEIGHTING.sigma_min),
        float(WEIGHTING.sigma_max),
    )
    with pytest.raises(ValueError, match=r"slope_low must be in \[-4.0, 4.0\].*6.0"):
        spaces.objective_params(point, POWER)
    with pytest.raises(ValueError, match=r"p ∝ W\^split is not in the search space"):
        spaces.objective_params(
            wlam.point_description(
                {"center": 0.0, "slope_low": 1.0, "slope_high": -1.0, "knee": 1.0},
                0.5,
                "eps",
                SIGMA_DATA,
                0.002,
                80.0,
            ),
            WEIGHTING,
        )
    piecewise = wlam.point_description(
        {"log_values": [0.0, -1.0]}, 0.5, "eps", SIGMA_DATA, 0.002, 80.0
    )
    with pytest.raises(ValueError, match="piecewise W"):
        spaces.objective_params(piecewise, WEIGHTING)


def test_configurations_that_map_to_the_same_point_are_enqueued_once(monkeypatch):
    """eps-cosine and its own point (the same W and split) are one trial, not two."""
    config = WEIGHTING
    desc = LITERATURE["eps_cosine"].description(
        SIGMA_DATA, float(config.sigma_min), float(config.sigma_max)
    )
    fit = spaces.weighting_fit(desc, config)
    twin = wlam.point_description(
        fit.shape,
        fit.split,
        "eps",
        SIGMA_DATA,
        float(config.sigma_min),
        float(config.sigma_max),
        sampling=fit.sampling,
    )
    sigmoid = LITERATURE["sigmoid"].description(
        SIGMA_DATA, float(config.sigma_min), float(config.sigma_max)
    )
    monkeypatch.setattr(
        run_module,
        "enqueued_configurations",
        lambda ctx: {"eps_cosine": desc, "twin": twin, "sigmoid": sigmoid},
    )
    study = optuna.create_study()
    run_module.enqueue_configurations(types.SimpleNamespace(config=config), study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["sigmatune:name"] for t in waiting] == ["eps_cosine", "sigmoid"]


@pytest.mark.slow
def test_a_tiny_run_in_the_weighting_space_trains_the_literature_points_and_a_proposal(tmp_path):
    config = load_config(
        "toy",
        {
            "name": "wspace",
            "storage": f"sqlite:///{tmp_path / 'run.db'}",
            "device": "cpu",
            "outer.space": "weighting",
            "outer.outer_trials": 3,
            "outer.pruner": "none",
            "outer.literature": ["sigmoid"],
            "network.params": {"hidden": 32, "depth": 2, "emb_dim": 16},
            "train.train_nimg": 4096,
            "train.checkpoint_nimg": 2048,
            "train.batch_size": 256,
            "train.ema_halflife_nimg": 1000,
            "inner.inner_trials": 3,
            "inner.nfe_budgets": [5],
            "inner.fid_num_images": 128,
            "inner.batch_size": 128,
            "inner.peers": [],
        },
    )
    summary = run_module.run(config, progress=False, log=lambda line: None)
    study = optuna.load_study(study_name="wspace", storage=config.storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3, summary.lines
    names = [t.user_attrs.get("sigmatune:name") for t in trials]
    assert names == ["edm", "sigmoid", None]
    assert all("wlam.p.center" in t.params for t in trials)
    for t in trials:  # where each model spends its capacity, stored with it
        lam_errors = records.read_trial(t).lam_errors
        assert lam_errors["reference"] == "exact" and len(lam_errors["error"]) == 16
        assert all(math.isfinite(e) and e >= 0 for e in lam_errors["error"])


def test_the_gmm32_preset_searches_w_lambda_on_a_mixture_with_an_exact_denoiser():
    config = load_config("gmm32")
    assert (config.dataset, config.network.name, config.inner.fid_extractor) == (
        "gmm32",
        "mlp",
        "rff",
    )
    assert (config.outer.space, config.outer.split) == ("weighting", "shape")
    assert "timewarp" not in config.outer.adaptive
    enqueued = int(config.outer.enqueue_baseline) + len(config.outer.literature)
    assert config.outer.outer_trials >= 2 * enqueued  # room to propose
