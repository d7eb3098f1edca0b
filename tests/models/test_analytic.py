"""GaussianMixture: exact sampling and the exact denoiser, checked against Monte Carlo,
torch.distributions and Tweedie's formula."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.models.analytic import GaussianMixture

MIXTURES = {
    "ring": lambda: GaussianMixture.ring(n_modes=8, radius=1.0, std=0.1),
    # unequal stds and weights, so a formula that confuses per-component variances fails
    "random3d": lambda: GaussianMixture.random(d=3, K=4, seed=1),
}


def torch_mixture(gm: GaussianMixture, sigma: float) -> torch.distributions.Distribution:
    """The noisy marginal p_sigma built independently from torch.distributions."""
    scale = (gm.stds**2 + sigma**2).sqrt()[:, None].expand_as(gm.means)
    components = torch.distributions.Independent(torch.distributions.Normal(gm.means, scale), 1)
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights), components
    )


@pytest.mark.parametrize("sigma", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_denoiser_equals_monte_carlo_posterior_mean(mixture: str, sigma: float) -> None:
    # E[x0 | x*] by self-normalised importance sampling: x0_j ~ p, weights N(x*; x0_j, sigma^2 I).
    gm = MIXTURES[mixture]()
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(200_000, g)  # [N, d]
    x_star = gm.sample(8, g) + sigma * torch.randn(8, gm.dim, generator=g, dtype=torch.float64)
    w = torch.softmax(-(torch.cdist(x_star, x0) ** 2) / (2 * sigma**2), dim=1)  # [8, N]
    estimate = w @ x0  # [8, d]
    ess = 1 / (w**2).sum(dim=1)
    assert ess.min() > 300, f"Monte Carlo too weak: effective sample size {ess.min():.0f}"
    # standard error of a self-normalised importance-sampling mean (delta method)
    se = ((w[:, :, None] ** 2) * (x0[None] - estimate[:, None]) ** 2).sum(dim=1).sqrt()
    denoised = gm.denoise(x_star, sigma)
    z = (denoised - estimate).abs() / se
    assert z.max() < 5, f"max |D - MC| / SE = {z.max():.2f} at sigma={sigma}"


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0, 30.0])
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_log_prob_matches_torch_distributions(mixture: str, sigma: float) -> None:
    gm = MIXTURES[mixture]()
    x = gm.sample(64, torch.Generator().manual_seed(1)) * 1.5
    expected = torch_mixture(gm, sigma).log_prob(x)
    torch.testing.assert_close(gm.log_prob(x, sigma), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.03, 0.3, 3.0])
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_denoiser_satisfies_tweedie(mixture: str, sigma: float) -> None:
    # Tweedie / Karras et al. 2022 eq. 3: D(x, sigma) = x + sigma^2 grad_x log p_sigma(x),
    # with the score taken by autograd of torch.distributions' density.
    gm = MIXTURES[mixture]()
    x = (gm.sample(32, torch.Generator().manual_seed(2)) * 1.2).requires_grad_(True)
    (score,) = torch.autograd.grad(torch_mixture(gm, sigma).log_prob(x).sum(), x)
    torch.testing.assert_close(
        gm.denoise(x.detach(), sigma), x.detach() + sigma**2 * score, rtol=1e-9, atol=1e-9
    )


def test_denoiser_accepts_images_scalar_sigma_and_keeps_dtype() -> None:
    gm = GaussianMixture.random(d=48, K=5, seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 4, generator=g)  # [B, C, H, W], float32
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 80.0])
    out = gm(x, sigma)
    assert out.shape == x.shape and out.dtype == torch.float32
    flat = gm.denoise(x.reshape(6, -1).double(), sigma.double())
    torch.testing.assert_close(out, flat.reshape(x.shape).float())
    torch.testing.assert_close(gm.denoise(x, 0.7), gm.denoise(x, torch.full((6,), 0.7)))
    with pytest.raises(ValueError, match="48 values per example"):
        gm.denoise(torch.zeros(2, 47), 1.0)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        gm.denoise(torch.zeros(2, 48), torch.ones(3))


def test_denoiser_limits_are_stable() -> None:
    gm = GaussianMixture.ring(n_modes=4, radius=1.0, std=0.1)
    # far from every mode, tiny sigma: the nearest mode's posterior mean, no NaN from underflow
    x = torch.tensor([[1e4, 0.0], [0.0, -1e4]], dtype=torch.float64)
    out = gm.denoise(x, 1e-3)
    assert torch.isfinite(out).all()
    s2, v = 0.01, 0.01 + 1e-6
    torch.testing.assert_close(out[0], torch.tensor([1 + s2 / v * (1e4 - 1), 0.0]).double())
    # huge sigma: the mixture mean (0); tiny sigma on a mode: the point itself
    torch.testing.assert_close(gm.denoise(x, 1e8), torch.zeros(2, 2).double(), atol=1e-6, rtol=0)
    x = torch.tensor([[1.05, 0.02]], dtype=torch.float64)
    torch.testing.assert_close(gm.denoise(x, 1e-6), x, atol=1e-9, rtol=0)


def test_sample_moments_and_sigma_data() -> None:
    ring = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.3)
    # means on a circle around 0: E||x0||^2 / d = r^2 / 2 + s^2
    assert ring.sigma_data == pytest.approx(math.sqrt(2.0**2 / 2 + 0.3**2), rel=1e-12)
    gm = GaussianMixture.random(d=5, K=6, seed=4)
    x = gm.sample(400_000, torch.Generator().manual_seed(5))
    assert x.shape == (400_000, 5) and x.dtype == torch.float64
    expected_mean = (gm.weights[:, None] * gm.means).sum(dim=0)
    se = x.std(dim=0) / math.sqrt(x.shape[0])
    assert ((x.mean(dim=0) - expected_mean).abs() < 5 * se).all()
    measured = ((x - x.mean(dim=0)) ** 2).mean().sqrt().item()
    assert measured == pytest.approx(gm.sigma_data, rel=5e-3)
    # the same generator seed gives the same samples
    a = gm.sample(10, torch.Generator().manual_seed(7))
    assert torch.equal(a, gm.sample(10, torch.Generator().manual_seed(7)))


def test_sample_component_frequencies_follow_weights() -> None:
    means = torch.tensor([[-10.0], [0.0], [10.0]])
    gm = GaussianMixture(means, [0.5, 1.0, 0.2], [1.0, 2.0, 5.0])
    x = gm.sample(80_000, torch.Generator().manual_seed(8))
    k = (x - means.T.double()).abs().argmin(dim=1)
    freq = torch.bincount(k, minlength=3).double() / x.shape[0]
    p = torch.tensor([1.0, 2.0, 5.0]).double() / 8
    assert ((freq - p).abs() < 5 * (p * (1 - p) / x.shape[0]).sqrt()).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"means": [1.0, 2.0], "stds": 1.0}, r"means must have shape \[K, d\]"),
        ({"means": [[0.0], [1.0]], "stds": [1.0, 1.0, 1.0]}, r"stds must be a scalar or"),
        ({"means": [[0.0], [1.0]], "stds": [1.0, 0.0]}, r"stds must be > 0, but got stds="),
        ({"means": [[0.0], [1.0]], "stds": 1.0, "weights": [1.0, -1.0]}, r"weights must be > 0"),
        ({"means": [[0.0], [1.0]], "stds": 1.0, "weights": [1.0]}, r"weights must have shape"),
        ({"means": [[0.0], [float("nan")]], "stds": 1.0}, r"means must be finite"),
    ],
)
def test_constructor_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_helpers_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_modes must be >= 1, but got n_modes=0"):
        GaussianMixture.ring(n_modes=0)
    with pytest.raises(ValueError, match="radius must be > 0"):
        GaussianMixture.ring(radius=-1.0)
    with pytest.raises(ValueError, match="d must be >= 1, but got d=0"):
        GaussianMixture.random(d=0)
    gm = GaussianMixture.random(d=7, K=3, seed=9)
    assert gm.means.shape == (3, 7) and gm.weights.sum().item() == pytest.approx(1.0)
