"""Weightings: finite, positive, and equal to their closed forms over the run's λ range."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from sigmatune.objectives.weightings import WEIGHTINGS, make_weighting

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
LAM_MIN, LAM_MAX = -2 * math.log(SIGMA_MAX), -2 * math.log(SIGMA_MIN)
LOG_WEIGHTS = [0.3, -1.0, 2.5, 0.0, -4.0]


def closed_form(name: str, params: dict[str, Any], lam: np.ndarray) -> np.ndarray:
    """w over λ, written with numpy from Kingma & Gao 2023 Table 1 / Hang et al. 2023."""
    if name == "unit":
        return np.ones_like(lam)
    if name == "snr":
        return np.exp(params.get("k", 1.0) * lam)
    if name == "min_snr":
        snr = np.exp(lam)
        return np.minimum(snr, params.get("gamma", 5.0)) / snr
    if name == "sigmoid":
        return 1 / (1 + np.exp(lam - params.get("b", 0.0)))
    if name == "piecewise":
        lw = np.asarray(params["log_weights"])
        edges = np.linspace(LAM_MIN, LAM_MAX, len(lw) + 1)
        k = np.clip(np.searchsorted(edges, lam, side="right") - 1, 0, len(lw) - 1)
        return np.exp(lw[k])
    if name == "wlam":
        # split 0 (uniform sampling): w = W·c_out²/σ², scaled so that the mean of w over the
        # range (trapezoid rule, 4097 points) is 1; edm's c_out²/σ² = σd²/(σ² + σd²)
        assert params["split"] == 0.0 and params["parameterisation"] in ("eps", "edm")
        q = {"center": 0.0, "slope_low": 0.0, "slope_high": 0.0, "knee": 1.0, "curvature": 0.0}
        q |= {k: v for k, v in params.items() if k in q}

        def mass(x):
            u = x - q["center"]
            log_w = (
                q["slope_low"] * u
                - (q["slope_low"] - q["slope_high"]) * q["knee"] * np.logaddexp(0, u / q["knee"])
                - q["curvature"] * u**2 / 2
            )
            if params["parameterisation"] == "edm":
                sd2 = params["sigma_data"] ** 2
                log_w = log_w + np.log(sd2 / (np.exp(-x) + sd2))
            return np.exp(log_w)

        grid = np.linspace(LAM_MIN, LAM_MAX, 4097)
        return mass(lam) / np.trapezoid(mass(grid), grid) * (LAM_MAX - LAM_MIN)
    raise AssertionError(f"no closed form written for weighting {name!r}")


CASES = [
    ("unit", {}),
    ("snr", {}),
    ("snr", {"k": 0.5}),
    ("snr", {"k": -1.5}),
    ("min_snr", {}),
    ("min_snr", {"gamma": 0.3}),
    ("sigmoid", {}),
    ("sigmoid", {"b": -2.0}),
    ("sigmoid", {"b": 4.5}),
    ("piecewise", {"log_weights": LOG_WEIGHTS}),
    ("piecewise", {"log_weights": [1.7]}),
    ("wlam", {"split": 0.0, "parameterisation": "eps", "slope_low": 0.5, "slope_high": -0.5}),
    (
        "wlam",
        {
            "split": 0.0,
            "parameterisation": "edm",
            "sigma_data": 0.5,
            "center": 1.4,
            "slope_low": -0.8,
            "slope_high": 0.2,
            "curvature": 0.17,
        },
    ),
]
IDS = [f"{name}-{params}" for name, params in CASES]


def make(name: str, params: dict[str, Any]):
    return make_weighting(name, params, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def test_every_registered_weighting_has_cases():
    assert {name for name, _ in CASES} == set(WEIGHTINGS)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_weighting_matches_its_closed_form(name, params):
    # bin centres and edges' neighbourhoods, avoiding the edges themselves
    lam = np.concatenate([np.linspace(LAM_MIN, LAM_MAX, 203)[1:-1] + 1e-6, [LAM_MIN, LAM_MAX]])
    sigma = torch.tensor(np.exp(-lam / 2), dtype=torch.float64)
    w = make(name, params)(sigma)
    np.testing.assert_allclose(w.numpy(), closed_form(name, params, lam), rtol=1e-10)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighting_is_finite_positive_and_shaped_like_sigma(name, params, dtype):
    lam = torch.linspace(LAM_MIN, LAM_MAX, 1001, dtype=torch.float64)
    sigma = torch.exp(-lam / 2).to(dtype).reshape(7, 11, 13)
    w = make(name, params)(sigma)
    assert w.shape == sigma.shape and w.dtype == dtype
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w.device == sigma.device


def test_piecewise_weighting_extends_its_end_bins_beyond_the_range():
    w = make("piecewise", {"log_weights": LOG_WEIGHTS})
    sigma = torch.tensor([1e6, SIGMA_MAX * 1.5, SIGMA_MIN / 3, 1e-9], dtype=torch.float64)
    expected = np.exp([LOG_WEIGHTS[0]] * 2 + [LOG_WEIGHTS[-1]] * 2)
    np.testing.assert_allclose(w(sigma).numpy(), expected, rtol=1e-12)


def test_piecewise_weighting_bins_are_equal_in_lam():
    """Bin k covers [lam_min + k·Δ, lam_min + (k+1)·Δ): just inside each edge."""
    w = make("piecewise", {"log_weights": LOG_WEIGHTS})
    delta = (LAM_MAX - LAM_MIN) / len(LOG_WEIGHTS)
    for k, log_weight in enumerate(LOG_WEIGHTS):
        for lam in (LAM_MIN + k * delta + 1e-6, LAM_MIN + (k + 1) * delta - 1e-6):
            value = w(torch.tensor([math.exp(-lam / 2)], dtype=torch.float64))
            assert float(value) == pytest.approx(math.exp(log_weight), rel=1e-12)


def test_min_snr_is_one_at_high_noise_and_gamma_over_snr_at_low_noise():
    w = make("min_snr", {"gamma": 5.0})
    sigma = torch.tensor([10.0, 0.01], dtype=torch.float64)  # SNR 0.01 and 1e4
    assert w(sigma).tolist() == pytest.approx([1.0, 5.0 / 1e4], rel=1e-12)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_params_rebuild_the_same_weighting(name, params):
    w = make(name, params)
    again = make(w.name, json.loads(json.dumps(w.params())))
    sigma = torch.logspace(-3, 2, 57, dtype=torch.float64)
    assert torch.equal(again(sigma), w(sigma))


ERRORS = [
    ("foo", {}, r"unknown weighting 'foo'; valid: min_snr, piecewise, sigmoid, snr, unit"),
    ("snr", {"k": 9.0}, r"k must be in \[-4\.0, 4\.0\], but got k=9\.0"),
    ("snr", {"k": float("nan")}, r"k must be finite, but got k=nan"),
    ("min_snr", {"gamma": 0.0}, r"gamma must be > 0, but got gamma=0\.0"),
    ("min_snr", {"gamma": -5.0}, r"gamma must be > 0, but got gamma=-5\.0"),
    ("sigmoid", {"b": float("inf")}, r"b must be finite, but got b=inf"),
    ("sigmoid", {"c": 1.0}, r"unknown parameter 'c' for weighting 'sigmoid'; valid: b"),
    ("unit", {"k": 1.0}, r"unknown parameter 'k' for weighting 'unit'; valid: \(none\)"),
    ("piecewise", {"log_weights": []}, r"log_weights must have K >= 1 entries"),
    ("piecewise", {"log_weights": [0.0, float("nan")]}, r"log_weights\[1\]=nan"),
    (
        "piecewise",
        {"log_weights": [0.0, 60.0]},
        r"log_weights must be finite and in "
        r"\(-50\.0, 50\.0\), but got log_weights\[1\]"
        r"=60\.0",
    ),
    ("piecewise", {}, r"weighting 'piecewise' needs the parameter 'log_weights'"),
]


@pytest.mark.parametrize("name, params, match", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_bad_names_and_parameters_raise_value_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        make(name, params)


def test_the_sigma_range_is_checked():
    with pytest.raises(
        ValueError,
        match=r"sigma_max must be > sigma_min=1\.0, but got "
        r"sigma_max=0\.5",
    ):
        make_weighting("piecewise", {"log_weights": [0.0]}, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"sigma_min must be > 0, but got sigma_min=0\.0"):
        make_weighting("unit", {}, sigma_min=0.0, sigma_max=1.0)
