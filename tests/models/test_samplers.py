"""Samplers on the analytic Gaussian mixture, where the error is discretisation error alone:
convergence to the true distribution, orders of accuracy, NFE counts, churn, and the
batch-size independence of ``generate``."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.samplers import (
    SAMPLERS,
    euler,
    euler_step,
    generate,
    get_sampler,
    heun,
    heun_step,
    nfe,
    steps_for_nfe,
)
from sigmatune.models.schedules import karras, loglinear

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
EXPECTED_NFE = {"euler": lambda n: n, "heun": lambda n: 2 * n - 1, "dpmpp_2m": lambda n: n}
EXPECTED_ORDER = {"euler": 1.0, "heun": 2.0, "dpmpp_2m": 2.0}


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 128) -> float:
    """SW_2 between two equal-size point clouds: RMS over fixed random directions of the
    distance between sorted projections (the 1-D optimal coupling)."""
    g = torch.Generator().manual_seed(1234)
    theta = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0)
    pa = (a.double() @ theta).sort(dim=0).values
    pb = (b.double() @ theta).sort(dim=0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


class CountingDenoiser:
    """Wraps a denoiser, counts calls and checks what the sampler hands it."""

    def __init__(self, D) -> None:
        self.D, self.calls, self.sigmas = D, 0, []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        assert (sigma > 0).all()
        self.calls += 1
        self.sigmas.append(sigma[0].item())
        return self.D(x, sigma)


@pytest.fixture(scope="module")
def ring() -> GaussianMixture:
    return GaussianMixture.ring(n_modes=8, radius=1.0, std=0.1)


@pytest.fixture(scope="module")
def trajectory_errors(ring: GaussianMixture) -> dict[str, dict[int, float]]:
    """Mean per-sample distance ||x_n - x_ref|| of deterministic sampling with n karras steps
    from a 1024-step Heun reference, same initial noise, float64."""
    g = torch.Generator().manual_seed(2)
    x_T = SIGMA_MAX * torch.randn(256, 2, generator=g, dtype=torch.float64)
    x_ref = heun(ring, x_T, karras(1024, SIGMA_MIN, SIGMA_MAX))
    return {
        name: {
            n: (fn(ring, x_T, karras(n, SIGMA_MIN, SIGMA_MAX)) - x_ref).norm(dim=1).mean().item()
            for n in (16, 32, 64, 128)
        }
        for name, fn in SAMPLERS.items()
    }


def log_log_slope(errors: dict[int, float], ns: tuple[int, ...]) -> float:
    """Least-squares slope of log(error) against log(n)."""
    x = torch.tensor([math.log(n) for n in ns], dtype=torch.float64)
    y = torch.tensor([math.log(errors[n]) for n in ns], dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_converges_to_the_true_distribution(ring: GaussianMixture, name: str) -> None:
    # SW between generated and true samples falls with n, and at 256 steps it is no larger
    # than the SW between two independent true sample sets of the same size.
    n_samples = 4096
    g = torch.Generator().manual_seed(0)
    reference = ring.sample(n_samples, g)
    null = torch.tensor(
        [sliced_wasserstein(ring.sample(n_samples, g), reference) for _ in range(8)]
    )
    x_T = SIGMA_MAX * torch.randn(n_samples, 2, generator=g, dtype=torch.float64)
    sw = {
        n: sliced_wasserstein(SAMPLERS[name](ring, x_T, karras(n, SIGMA_MIN, SIGMA_MAX)), reference)
        for n in (4, 8, 16, 256)
    }
    print(f"{name}: SW by steps {sw}; SW of true vs true {null.mean():.4f} ± {null.std():.4f}")
    assert sw[4] > sw[8] > sw[16] > sw[256]
    assert sw[4] > 5 * null.max()  # too few steps is visibly wrong
    assert sw[256] < null.mean() + 3 * null.std()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_has_its_order_of_accuracy(
    trajectory_errors: dict[str, dict[int, float]], name: str
) -> None:
    errors = trajectory_errors[name]
    slope = log_log_slope(errors, (32, 64, 128))
    print(f"{name}: trajectory error {errors}, log-log slope {slope:.3f}")
    assert errors[16] > errors[32] > errors[64] > errors[128]
    assert -EXPECTED_ORDER[name] - 0.25 < slope < -EXPECTED_ORDER[name] + 0.25


def test_heun_error_falls_faster_than_euler(trajectory_errors: dict[str, dict[int, float]]) -> None:
    ns = (32, 64, 128)
    euler_slope = log_log_slope(trajectory_errors["euler"], ns)
    heun_slope = log_log_slope(trajectory_errors["heun"], ns)
    assert heun_slope < euler_slope - 0.75
    assert trajectory_errors["heun"][128] < trajectory_errors["euler"][128] / 10


@pytest.mark.parametrize("schedule", [karras, loglinear], ids=["karras", "loglinear"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_solves_single_gaussian_flow_in_closed_form(name: str, schedule) -> None:
    # For p = N(0, s^2 I) the probability-flow ODE dx/dsigma = (x - D)/sigma with
    # D = s^2/(s^2 + sigma^2) x has the solution
    # x(sigma) = x(sigma_max) sqrt((s^2 + sigma^2)/(s^2 + sigma_max^2));
    # the last step to 0 returns D(x(sigma_min), sigma_min).
    s = 0.5
    gm = GaussianMixture(torch.zeros(1, 3), s)
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_T = SIGMA_MAX * x_T
    x_min = x_T * math.sqrt((s**2 + SIGMA_MIN**2) / (s**2 + SIGMA_MAX**2))
    expected = x_min * s**2 / (s**2 + SIGMA_MIN**2)
    out = SAMPLERS[name](gm, x_T, schedule(512, SIGMA_MIN, SIGMA_MAX))
    torch.testing.assert_close(out, expected, rtol=1e-2 if name == "euler" else 2e-4, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_counting_denoiser_confirms_nfe(ring: GaussianMixture, name: str, n: int) -> None:
    D = CountingDenoiser(ring)
    x = SIGMA_MAX * torch.randn(5, 2)
    out = SAMPLERS[name](D, x, karras(n, SIGMA_MIN, SIGMA_MAX))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert D.calls == nfe(name, n) == EXPECTED_NFE[name](n)
    assert nfe(SAMPLERS[name], n) == nfe(name, n)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_steps_for_nfe_is_the_largest_n_within_budget(name: str) -> None:
    for budget in range(1, 40):
        n = steps_for_nfe(name, budget)
        assert EXPECTED_NFE[name](n) <= budget < EXPECTED_NFE[name](n + 1)
    with pytest.raises(ValueError, match=r"nfe must allow at least one step .* but got nfe=0"):
        steps_for_nfe(name, 0)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, but got n=0"):
        nfe(name, 0)


def test_unknown_sampler_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown sampler 'foo'; valid: dpmpp_2m, euler, heun"):
        nfe("foo", 3)
    with pytest.raises(ValueError, match=r"unknown sampler 'foo'"):
        get_sampler("foo")
    with pytest.raises(ValueError, match=r"not in the registry"):
        steps_for_nfe(lambda D, x, sigmas: x, 3)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_validates_the_schedule(ring: GaussianMixture, name: str) -> None:
    with pytest.raises(ValueError, match=r"sigmas must be strictly decreasing"):
        SAMPLERS[name](ring, torch.zeros(2, 2), [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"sigmas must end with exactly 0"):
        SAMPLERS[name](ring, torch.zeros(2, 2), [2.0, 1.0])


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_churn_follows_edm_algorithm_2(ring: GaussianMixture, name: str) -> None:
    # gamma = min(S_churn/n, sqrt(2)-1) inside [S_min, S_max], 0 outside: D sees sigma_hat =
    # sigma (1 + gamma) first at each step, and noise(i) is asked for exactly at churned steps.
    sigmas = karras(6, SIGMA_MIN, SIGMA_MAX)
    asked: list[int] = []

    def noise(i: int) -> torch.Tensor:
        asked.append(i)
        return torch.zeros(3, 2, dtype=torch.float64)

    for S_churn, gamma in [(1.2, 0.2), (60.0, math.sqrt(2) - 1)]:
        D, asked[:] = CountingDenoiser(ring), []
        x = SIGMA_MAX * torch.randn(3, 2, dtype=torch.float64)
        SAMPLERS[name](D, x, sigmas, S_churn=S_churn, S_min=0.05, S_max=10.0, noise=noise)
        churned = [i for i in range(6) if 0.05 <= sigmas[i] <= 10.0]
        assert asked == churned and len(churned) == 3
        per_step = 1 if name == "euler" else 2
        first = [D.sigmas[per_step * i] for i in range(5)] + [D.sigmas[-1]]
        expected = [sigmas[i].item() * (1 + gamma * (i in churned)) for i in range(6)]
        assert first == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"S_churn must be >= 0 and finite, but got S_churn=-1"):
        SAMPLERS[name](ring, torch.zeros(2, 2), sigmas, S_churn=-1.0)


def test_churn_noise_changes_the_result(ring: GaussianMixture) -> None:
    x = SIGMA_MAX * torch.randn(4, 2, generator=torch.Generator().manual_seed(4))
    sigmas = karras(8, SIGMA_MIN, SIGMA_MAX)
    plain = heun(ring, x, sigmas)
    noisy = heun(ring, x, sigmas, S_churn=20.0, noise=lambda i: torch.ones_like(x))
    assert not torch.allclose(plain, noisy)


# ------------------------------------------------------------- steps, and sigmas with grad


def test_samplers_are_loops_over_their_steps(ring: GaussianMixture) -> None:
    x = SIGMA_MAX * torch.randn(8, 2, generator=torch.Generator().manual_seed(6))
    sigmas = karras(4, SIGMA_MIN, SIGMA_MAX).tolist()
    for sampler, step in ((euler, euler_step), (heun, heun_step)):
        y = x
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            y = step(ring, y, sigma, sigma_next)
        assert torch.equal(sampler(ring, x, sigmas), y)
        # into 0, a step is the denoiser's output, exactly; a known D(x) saves one call
        assert torch.equal(step(ring, x, 3.0, 0.0), ring(x, torch.full((8,), 3.0)))
        D = CountingDenoiser(ring)
        known = ring(x, torch.full((8,), 3.0))
        assert torch.equal(step(D, x, 3.0, 1.0, denoised=known), step(ring, x, 3.0, 1.0))
        assert D.calls == (0 if step is euler_step else 1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_schedule_requiring_grad_gives_the_same_samples(ring: GaussianMixture, name: str) -> None:
    x = SIGMA_MAX * torch.randn(16, 2, generator=torch.Generator().manual_seed(7))
    sigmas = karras(5, SIGMA_MIN, SIGMA_MAX)
    plain = SAMPLERS[name](ring, x, sigmas)
    traced = SAMPLERS[name](ring, x, sigmas.clone().requires_grad_(True))
    assert traced.requires_grad and traced.dtype == torch.float32
    torch.testing.assert_close(traced, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gradient_wrt_the_schedule_matches_finite_differences(
    ring: GaussianMixture, name: str
) -> None:
    # the output's gradient w.r.t. every positive sigma (through the step coefficients and
    # D's sigma input) against central differences, float64
    x = 3.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sigmas = torch.tensor([3.0, 1.2, 0.5, 0.1, 0.0], dtype=torch.float64)
    weights = torch.randn(8, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def f(s: torch.Tensor) -> torch.Tensor:
        return (SAMPLERS[name](ring, x, s) * weights).sum()

    s = sigmas.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(s), s)
    h = 1e-6
    numeric = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        e = torch.zeros_like(sigmas)
        e[i] = h
        numeric[i] = (f(sigmas + e) - f(sigmas - e)) / (2 * h)
    assert numeric.abs().max() > 1e-2  # the schedule matters
    torch.testing.assert_close(grad[:4], numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def image_mixture() -> GaussianMixture:
    return GaussianMixture.random(d=48, K=6, seed=5)  # stands in for a [3, 4, 4] image model


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("heun", {"S_churn": 40.0, "S_noise": 1.003})],
    ids=["euler", "heun", "dpmpp_2m", "heun-churn"],
)
def test_generate_is_independent_of_batch_size(
    image_mixture: GaussianMixture, name: str, kwargs: dict
) -> None:
    seeds = list(range(100, 170))  # 70 images
    sigmas = karras(6, SIGMA_MIN, SIGMA_MAX)
    runs = {}
    for batch_size in (1, 7, 64):
        batches = list(
            generate(image_mixture, sigmas, name, seeds, (3, 4, 4), batch_size, **kwargs)
        )
        assert [len(b) for b in batches] == [
            min(batch_size, 70 - i) for i in range(0, 70, batch_size)
        ]
        runs[batch_size] = torch.cat(batches)
    assert runs[1].shape == (70, 3, 4, 4) and runs[1].dtype == torch.float32
    assert torch.equal(runs[1], runs[7]) and torch.equal(runs[1], runs[64])
    # an image depends on its own seed only: reversed seeds give reversed images
    reversed_run = torch.cat(
        list(generate(image_mixture, sigmas, name, seeds[::-1], (3, 4, 4), 16, **kwargs))
    )
    assert torch.equal(reversed_run, runs[1].flip(0))


def test_generate_initial_noise_comes_from_each_seed(image_mixture: GaussianMixture) -> None:
    def identity(D, x, sigmas, *, noise=None):  # a user's sampler function
        return x

    sigmas = karras(4, SIGMA_MIN, SIGMA_MAX)
    (out,) = generate(image_mixture, sigmas, identity, [7, 11], (3, 4, 4), 8)
    for row, seed in zip(out, [7, 11]):
        eps = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(row, SIGMA_MAX * eps)


def test_generate_with_churn_differs_from_deterministic(image_mixture: GaussianMixture) -> None:
    sigmas = karras(6, SIGMA_MIN, SIGMA_MAX)
    (plain,) = generate(image_mixture, sigmas, "heun", range(8), (3, 4, 4), 8)
    (churn,) = generate(image_mixture, sigmas, "heun", range(8), (3, 4, 4), 8, S_churn=40.0)
    assert not torch.allclose(plain, churn)


def test_generate_runs_without_grad_and_leaves_grad_mode_alone(ring: GaussianMixture) -> None:
    seen: list[bool] = []

    def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return ring(x, sigma)

    batches = generate(D, karras(3, SIGMA_MIN, SIGMA_MAX), "euler", range(4), (2,), 2)
    first = next(batches)
    assert torch.is_grad_enabled() and not first.requires_grad
    list(batches)
    assert seen and not any(seen)


def test_generate_rejects_bad_arguments(ring: GaussianMixture) -> None:
    sigmas = karras(3, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(
        ValueError, match=r"batch_size must be an integer >= 1, but got batch_size=0"
    ):
        next(generate(ring, sigmas, "euler", range(4), (2,), 0))
    with pytest.raises(ValueError, match=r"unknown sampler 'rk4'"):
        next(generate(ring, sigmas, "rk4", range(4), (2,), 2))
    with pytest.raises(ValueError, match=r"sigmas must be strictly decreasing"):
        next(generate(ring, [1.0, 1.0, 0.0], "euler", range(4), (2,), 2))
