"""Denoising error per λ bin (models.capacity) against closed forms for a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.capacity import LamErrors, denoising_error_by_lam, lam_edges

MU, S, D = 0.3, 0.4, 4  # one Gaussian N(MU, S² I) in D dimensions
GAUSSIAN = GaussianMixture(torch.full((1, D), MU), S)
EDGES = torch.tensor([-4.0, -1.0, 0.5, 2.0, 6.0], dtype=torch.float64)


def bin_mean(f, lo, hi):
    """The mean of f(σ) over λ uniform in [lo, hi], σ = e^{−λ/2}."""
    return quad(lambda lam: f(math.exp(-lam / 2)), lo, hi)[0] / (hi - lo)


def shrink(sigma):
    return S**2 / (S**2 + sigma**2)


def test_the_exact_denoiser_has_no_excess_error():
    mixture = GaussianMixture.random(d=8, K=3, seed=1)
    x0 = mixture.sample(500, generator=torch.Generator().manual_seed(0))
    out = denoising_error_by_lam(mixture.denoise, x0, EDGES, exact=mixture.denoise, per_bin=64)
    assert out.reference == "exact" and out.error == [0.0] * 4


def test_a_wrongly_shrinking_model_has_the_closed_form_excess_error():
    """D(x) = μ + a·(x − μ) against D* = μ + k(σ)·(x − μ), k = s²/(s² + σ²): the excess error
    per coordinate is (a − k)²·E(x − μ)² = (a − k)²·(s² + σ²)."""
    a = 0.5
    x0 = GAUSSIAN.sample(4000, generator=torch.Generator().manual_seed(0))
    out = denoising_error_by_lam(
        lambda x, sigma: MU + a * (x - MU), x0, EDGES, exact=GAUSSIAN.denoise, per_bin=2000
    )
    for j in range(4):
        expected = bin_mean(
            lambda s: (a - shrink(s)) ** 2 * (S**2 + s**2), float(EDGES[j]), float(EDGES[j + 1])
        )
        assert abs(out.error[j] - expected) < 4 * out.stderr[j] + 1e-6 * expected, j


def test_held_out_loss_of_the_exact_denoiser_is_the_bayes_error():
    """Against x0, the exact denoiser's error per coordinate is the posterior variance
    s²σ²/(s² + σ²)."""
    x0 = GAUSSIAN.sample(4000, generator=torch.Generator().manual_seed(1))
    out = denoising_error_by_lam(GAUSSIAN.denoise, x0, EDGES, per_bin=2000, seed=3)
    assert out.reference == "data"
    for j in range(4):
        expected = bin_mean(
            lambda s: S**2 * s**2 / (S**2 + s**2), float(EDGES[j]), float(EDGES[j + 1])
        )
        assert abs(out.error[j] - expected) < 4 * out.stderr[j], j


def test_the_same_seed_gives_the_same_draws_and_the_record_round_trips():
    x0 = GAUSSIAN.sample(100, generator=torch.Generator().manual_seed(2)).float()
    model = lambda x, sigma: x * 0.9  # noqa: E731
    a = denoising_error_by_lam(model, x0, EDGES, per_bin=16, batch_size=7)
    b = denoising_error_by_lam(model, x0, EDGES, per_bin=16, batch_size=64)
    assert a.error == pytest.approx(b.error, rel=1e-6)
    assert LamErrors.from_dict(a.to_dict()) == a
    assert a.centres == pytest.approx([-2.5, -0.25, 1.25, 4.0])


def test_lam_edges_span_the_run():
    edges = lam_edges(0.002, 80.0, 4)
    assert edges.tolist() == pytest.approx(
        torch.linspace(-2 * math.log(80.0), -2 * math.log(0.002), 5).tolist()
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"edges": [1.0, 0.0]}, "strictly increasing"),
        ({"edges": [0.0]}, "at least 2"),
        ({"per_bin": 1}, "per_bin must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    x0 = torch.zeros(4, D)
    args = {"edges": EDGES, **kwargs}
    with pytest.raises(ValueError, match=match):
        denoising_error_by_lam(GAUSSIAN.denoise, x0, args.pop("edges"), **args)
