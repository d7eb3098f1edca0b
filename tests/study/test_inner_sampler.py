"""The inner search's samplers (issue 18, item 4): ``inner.sampler = "cmaes"`` is CMA-ES started
at the study's best starting point (``spaces.WarmCmaEsSampler``), and a missing ``cmaes``
package is a config error naming it."""

from __future__ import annotations

import importlib.util
import math

import optuna
import pytest

from sigmatune.study import spaces
from sigmatune.study.config import ConfigError, load_config


def test_cmaes_without_its_package_is_one_paragraph_naming_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"inner\.sampler = 'cmaes'.*pip install cmaes.*gp"):
        load_config("toy", {"inner.sampler": "cmaes"})
    with pytest.raises(ConfigError, match=r"inner\.sampler must be one of gp, tpe, cmaes, random"):
        load_config("toy", {"inner.sampler": "bobyqa"})


def test_warm_cmaes_searches_around_the_best_starting_point():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config("toy", {"inner.sampler": "cmaes"})
    sampler = spaces.make_inner_sampler(config, seed=3)
    assert isinstance(sampler, spaces.WarmCmaEsSampler)
    study = optuna.create_study(sampler=sampler)
    best = {"x": 0.8, "y": 2.0}
    for point in ({"x": 0.1, "y": 0.2}, best, {"x": 0.5, "y": 8.0}):
        study.enqueue_trial(point)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.1, 10.0, log=True)
        return (x - 0.75) ** 2 + (math.log(y) - math.log(2.5)) ** 2

    study.optimize(objective, n_trials=3 + 10)
    drawn = study.trials[3:]
    assert all("cma:generation" in t.system_attrs for t in drawn)  # CMA-ES drew them
    # started at the best starting point with a step of 0.1 of each range: every draw is
    # within 5 steps of it (in each param's [0, 1] scale; log for y)
    span_y = math.log(10.0) - math.log(0.1)
    for t in drawn:
        assert abs(t.params["x"] - best["x"]) < 5 * spaces.CMA_SIGMA0
        assert abs(math.log(t.params["y"]) - math.log(best["y"])) < 5 * spaces.CMA_SIGMA0 * span_y
    assert study.best_value <= objective(optuna.trial.FixedTrial(best))
