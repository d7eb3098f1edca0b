"""The per-lam denoising error stored with an outer trial (study.records owns the key)."""

from __future__ import annotations

import optuna
import pytest
import torch

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.capacity import LamErrors, denoising_error_by_lam, lam_edges
from sigmatune.study import records


def test_lam_errors_round_trip_through_the_trial_record():
    mixture = GaussianMixture.random(d=4, K=2, seed=0)
    x0 = mixture.sample(64, generator=torch.Generator().manual_seed(0))
    errors = denoising_error_by_lam(
        lambda x, s: 0.9 * x, x0, lam_edges(0.01, 10.0, 3), exact=mixture.denoise, per_bin=8
    )
    study = optuna.create_study()
    trial = study.ask()
    records.write_lam_errors(trial, errors.to_dict())
    study.tell(trial, 1.0)
    stored = records.read_trial(study.trials[0]).lam_errors
    assert LamErrors.from_dict(stored) == errors
    assert records.read_trial(study.trials[0]).lam_errors["reference"] == "exact"


def test_a_malformed_record_is_refused_before_anything_is_written():
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ValueError, match="lam_errors must have the keys"):
        records.write_lam_errors(trial, {"error": [1.0]})
    study.tell(trial, 1.0)
    assert records.read_trial(study.trials[0]).lam_errors is None


def test_a_weighting_space_point_has_a_short_label():
    from sigmatune.objectives.wlam import point_description

    shape = {"center": 1.5, "slope_low": -0.8, "slope_high": 0.2, "knee": 1.0, "curvature": 0.17}
    desc = point_description(shape, 0.25, "edm", 0.5, 0.002, 80.0)
    assert records.objective_label(desc) == "edm W(1.5,-0.8,0.2,1,0.17) split 0.25"
    sampling = {"center": 2.4, "slope_low": 0.0, "slope_high": 0.0, "knee": 1.0, "curvature": 0.17}
    desc = point_description(shape, 1.0, "edm", 0.5, 0.002, 80.0, sampling={**sampling, "split": 1})
    assert records.objective_label(desc) == "edm W(1.5,-0.8,0.2,1,0.17) p(2.4,0,0,1,0.17)"
