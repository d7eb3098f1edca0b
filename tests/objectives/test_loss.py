"""DiffusionObjective: the loss, the effective weighting W(λ), and the interchangeability of
factors between p(σ), w(σ) and the parameterisation, checked on an analytic Gaussian mixture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sigmatune.objectives.densities import DENSITIES, make_density
from sigmatune.objectives.loss import DiffusionObjective, objective_from_description
from sigmatune.objectives.parameterisations import PARAMETERISATIONS
from sigmatune.objectives.weightings import make_weighting

SIGMA_DATA = 0.5
RUN = {"sigma_min": 0.002, "sigma_max": 80.0}
LAM_MIN, LAM_MAX = -2 * math.log(RUN["sigma_max"]), -2 * math.log(RUN["sigma_min"])


def coefficients(name: str, s: torch.Tensor, sd: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise), written out from docs/development.md, independently of
    the code."""
    one = torch.ones_like(s)
    if name == "v":
        name, sd = "edm", 1.0
    if name == "edm":
        r = torch.sqrt(s**2 + sd**2)
        return sd**2 / r**2, s * sd / r, 1 / r, torch.log(s) / 4
    if name == "eps":
        return one, -s, 1 / torch.sqrt(s**2 + sd**2), torch.log(s) / 4
    if name == "x0":
        return 0 * one, sd * one, 1 / torch.sqrt(s**2 + sd**2), torch.log(s) / 4
    if name == "flow":
        return 1 / (1 + s), -s / (1 + s), 1 / (1 + s), torch.log(s) / 4
    raise AssertionError(f"no coefficients written for {name!r}")


def sigma_sq_over_c_out_sq(name: str, lam: np.ndarray, sd: float) -> np.ndarray:
    """σ²/c_out² by hand: the factor that takes a weight from F-space to ε-space."""
    s2 = np.exp(-lam)
    return {
        "edm": (s2 + sd**2) / sd**2,
        "v": s2 + 1,
        "eps": np.ones_like(lam),
        "x0": s2 / sd**2,
        "flow": (1 + np.sqrt(s2)) ** 2,
    }[name]


def objective(
    parameterisation: str,
    density: tuple[str, dict],
    weighting: tuple[str, dict],
    run: dict | None = None,
    sigma_data: float = SIGMA_DATA,
    adaptive=None,
):
    run = run or RUN
    return DiffusionObjective(
        parameterisation,
        make_density(*density, **run),
        make_weighting(*weighting, **run),
        sigma_data,
        adaptive,
    )


# -- the per-example loss ---------------------------------------------------------------------


def random_network(seed: int, dim: int):
    """A fixed smooth F(x_in, c_noise) -> like x_in, far from any optimum."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    u = torch.randn(dim, generator=g, dtype=torch.float64)

    def F(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        flat = x_in.reshape(x_in.shape[0], -1)
        out = torch.tanh(flat.to(A) @ A) + c_noise.to(A)[:, None] * u
        return out.reshape(x_in.shape).to(x_in.dtype)

    return F


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
def test_unit_loss_is_x0_space_mse_over_c_out_squared(name):
    g = torch.Generator().manual_seed(0)
    B = 64
    x0 = torch.randn(B, 2, 3, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 2, 3, 2, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(B, dtype=torch.float64).uniform_(-6, 4.3, generator=g))
    F = random_network(1, 12)
    obj = objective(name, ("lognormal", {}), ("unit", {}))
    loss = obj.loss(F, x0, sigma, noise)
    c_skip, c_out, c_in, c_noise = coefficients(name, sigma, SIGMA_DATA)
    col = (B, 1, 1, 1)
    x = x0 + sigma.view(col) * noise
    D = c_skip.view(col) * x + c_out.view(col) * F(c_in.view(col) * x, c_noise)
    mse_x0 = (D - x0).square().mean(dim=(1, 2, 3))
    assert loss.shape == (B,) and loss.dtype == torch.float64
    torch.testing.assert_close(loss, mse_x0 / c_out**2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
def test_the_network_that_predicts_the_target_has_zero_loss(name):
    """F(c_in·x, c_noise) = F_target (computed from x0 and ε outside the code) gives 0."""
    g = torch.Generator().manual_seed(2)
    B = 16
    x0 = torch.randn(B, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 5, generator=g, dtype=torch.float64)
    sigma = torch.logspace(-2.6, 1.9, B, dtype=torch.float64)
    c_skip, c_out, _, _ = (c[:, None] for c in coefficients(name, sigma, SIGMA_DATA))
    target = (x0 - c_skip * (x0 + sigma[:, None] * noise)) / c_out
    obj = objective(name, ("uniform", {}), ("unit", {}))
    loss = obj.loss(lambda x_in, c_noise: target, x0, sigma, noise)
    assert float(loss.abs().max()) < 1e-18


def test_weight_and_factor_multiply_the_error():
    g = torch.Generator().manual_seed(3)
    B = 32
    x0 = torch.randn(B, 4, generator=g)
    noise = torch.randn(B, 4, generator=g)
    sigma = torch.logspace(-2.5, 1.8, B, dtype=torch.float64)
    factor = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    F = random_network(4, 4)
    unit = objective("edm", ("lognormal", {}), ("unit", {})).loss(F, x0, sigma, noise)
    weighted = objective("edm", ("lognormal", {}), ("snr", {"k": 0.5}))
    loss = weighted.loss(F, x0, sigma, noise, factor=factor)
    expected = unit.double() / sigma * factor  # e^{0.5·λ} = 1/σ
    assert loss.dtype == torch.float32  # σ is cast to x0's dtype
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=0)


def test_the_network_is_called_once_on_the_whole_batch():
    calls = []

    def F(x_in, c_noise):
        calls.append((tuple(x_in.shape), tuple(c_noise.shape), x_in.dtype, c_noise.dtype))
        return torch.zeros_like(x_in)

    obj = objective("edm", ("lognormal", {}), ("min_snr", {}))
    sigma, factor = obj.sample_sigma(10, generator=torch.Generator().manual_seed(0))
    x0 = torch.randn(10, 3, 8, 8)
    obj.loss(F, x0, sigma, torch.randn_like(x0), factor)
    assert calls == [((10, 3, 8, 8), (10,), torch.float32, torch.float32)]


def test_loss_rejects_mismatched_shapes():
    obj = objective("edm", ("lognormal", {}), ("unit", {}))
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"sigma must have shape \[B\]=\[4\]"):
        obj.loss(lambda x, c: x, x0, torch.ones(3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"noise\.shape=\(4, 3\)"):
        obj.loss(lambda x, c: x, x0, torch.ones(4), torch.randn(4, 3))


def test_sample_sigma_draws_from_the_density_with_unit_factor():
    obj = objective("eps", ("cosine", {"shift": 1.0}), ("unit", {}))
    sigma, factor = obj.sample_sigma(500, generator=torch.Generator().manual_seed(5))
    expected = obj.density.sample(500, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sigma, expected)
    assert factor.shape == (500,) and torch.all(factor == 1)


# -- the effective weighting ------------------------------------------------------------------


@pytest.mark.parametrize("run", [{"sigma_min": 1e-6, "sigma_max": 1e6}, RUN])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_effective_weighting_of_edm_defaults(run, sigma_data):
    """W(λ) = N(λ; 2.4, 2.4²)/Z·(e^{−λ} + σd²)/σd², Z the normal mass on the run's λ range."""
    obj = objective(
        "edm",
        ("lognormal", {"P_mean": -1.2, "P_std": 1.2}),
        ("unit", {}),
        run=run,
        sigma_data=sigma_data,
    )
    lo, hi = -2 * math.log(run["sigma_max"]), -2 * math.log(run["sigma_min"])
    Z = stats.norm.cdf(hi, 2.4, 2.4) - stats.norm.cdf(lo, 2.4, 2.4)
    lam = np.linspace(lo, hi, 301)
    expected = stats.norm.pdf(lam, 2.4, 2.4) / Z * (np.exp(-lam) + sigma_data**2) / sigma_data**2
    W = obj.effective_weighting(torch.from_numpy(lam))
    assert W.dtype == torch.float64
    np.testing.assert_allclose(W.numpy(), expected, rtol=1e-9)


DENSITY_CASES = [
    ("lognormal", {}),
    ("cosine", {"shift": -1.0}),
    ("uniform", {"lam_min": -2.0}),
    ("piecewise", {"heights": [3.0, 1.0, 0.5, 2.0]}),
    ("laplace", {"mu": 1.0, "b": 0.75}),
    ("wlam", {"center": 1.0, "slope_low": -0.8, "slope_high": 0.2, "split": 0.5}),
]


def test_density_cases_cover_the_registry():
    assert {name for name, _ in DENSITY_CASES} == set(DENSITIES)


@pytest.mark.parametrize("density", DENSITY_CASES, ids=[d[0] for d in DENSITY_CASES])
def test_effective_weighting_of_eps_with_unit_weight_is_p(density):
    obj = objective("eps", density, ("unit", {}))
    lam = torch.linspace(LAM_MIN - 1, LAM_MAX + 1, 401, dtype=torch.float64)
    torch.testing.assert_close(
        obj.effective_weighting(lam), obj.density.log_prob(lam).exp(), rtol=1e-12, atol=0
    )


def test_effective_weighting_of_eps_lognormal_is_the_truncated_normal():
    obj = objective("eps", ("lognormal", {"P_mean": 0.3, "P_std": 0.8}), ("unit", {}))
    mu, s = -0.6, 1.6
    law = stats.truncnorm((LAM_MIN - mu) / s, (LAM_MAX - mu) / s, loc=mu, scale=s)
    lam = np.linspace(LAM_MIN, LAM_MAX, 201)
    np.testing.assert_allclose(
        obj.effective_weighting(torch.from_numpy(lam)).numpy(), law.pdf(lam), rtol=1e-9
    )


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
@pytest.mark.parametrize("weighting", [("unit", {}), ("sigmoid", {"b": 1.0})])
def test_effective_weighting_is_p_times_w_times_sigma_sq_over_c_out_sq(name, weighting):
    obj = objective(name, ("cosine", {}), weighting)
    lam = np.linspace(LAM_MIN, LAM_MAX, 201)
    p = np.cosh(lam / 2) ** -1 / (2 * np.pi)  # sech(λ/2)/(2π), then truncated
    Z = (2 / np.pi) * (np.arctan(np.exp(LAM_MAX / 2)) - np.arctan(np.exp(LAM_MIN / 2)))
    w = 1 / (1 + np.exp(lam - 1.0)) if weighting[0] == "sigmoid" else 1.0
    expected = p / Z * w * sigma_sq_over_c_out_sq(name, lam, SIGMA_DATA)
    np.testing.assert_allclose(
        obj.effective_weighting(torch.from_numpy(lam)).numpy(), expected, rtol=1e-9
    )


def test_effective_weighting_is_zero_off_the_support():
    obj = objective("x0", ("uniform", {"lam_min": 0.0, "lam_max": 4.0}), ("snr", {"k": 2.0}))
    lam = torch.tensor([-2000.0, -1.0, 5.0, 2000.0], dtype=torch.float64)
    assert obj.effective_weighting(lam).tolist() == [0.0, 0.0, 0.0, 0.0]


# -- interchangeability on an analytic Gaussian mixture ---------------------------------------


class Mixture:
    """p(x0) = Σ π_k N(μ_k, s_k² I) in 2-D, with the exact posterior mean E[x0 | x0 + σε]."""

    def __init__(self, means, stds, weights):
        self.means = torch.tensor(means, dtype=torch.float64)  # [K, d]
        self.stds = torch.tensor(stds, dtype=torch.float64)  # [K]
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)  # [K]

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        eps = torch.randn(n, self.means.shape[1], generator=g, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d = x.shape[1]
        var = self.stds**2 + sigma[:, None] ** 2  # [n, K]
        diff = x[:, None, :] - self.means  # [n, K, d]
        log_r = self.weights.log() - d / 2 * var.log() - diff.square().sum(-1) / (2 * var)
        r = torch.softmax(log_r, dim=1)  # [n, K]: responsibilities under p_σ
        post = self.means + (self.stds**2 / var)[..., None] * diff  # E[x0 | x, k]
        return (r[..., None] * post).sum(1)


DATA = Mixture([[-1.0, 0.5], [0.8, 0.9], [0.2, -1.1]], [0.15, 0.3, 0.2], [0.5, 0.3, 0.2])
# the "trained" model: the exact denoiser of a slightly wrong mixture, so the loss is nontrivial
MODEL = Mixture([[-0.8, 0.6], [0.9, 0.6], [0.1, -1.2]], [0.25, 0.2, 0.3], [0.4, 0.4, 0.2])


def network_for(name: str):
    """The raw F of `name` whose denoiser D = c_skip·x + c_out·F is MODEL.denoise."""

    def F(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = coefficients(name, sigma, SIGMA_DATA)
        x = x_in / c_in[:, None]
        return (MODEL.denoise(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    return F


def monte_carlo_loss(obj: DiffusionObjective, n: int, seed: int) -> tuple[float, float, float]:
    """(mean, standard error, variance) of the per-example loss, σ drawn by the objective."""
    g = torch.Generator().manual_seed(seed)
    sigma, factor = obj.sample_sigma(n, generator=g)
    x0 = DATA.sample(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    loss = obj.loss(network_for(obj.parameterisation), x0, sigma, noise, factor)
    var = float(loss.var())
    return float(loss.mean()), math.sqrt(var / n), var


def lognormal_shift_pair(k: float, P_mean: float, P_std: float):
    """p·e^{kλ} for λ ~ N(μ, s²) is e^{kμ + k²s²/2}·N(μ + k·s², s²): moving the factor e^{kλ}
    from w into p shifts P_mean by −k·s²/2 = −2k·P_std² and leaves a constant, which a
    one-bin piecewise weighting carries. Returns (new P_mean, constant)."""
    mu, s = -2 * P_mean, 2 * P_std
    mu_new = mu + k * s**2

    def mass(m):
        return stats.norm.cdf(LAM_MAX, m, s) - stats.norm.cdf(LAM_MIN, m, s)

    return -mu_new / 2, math.exp(k * mu + k**2 * s**2 / 2) * mass(mu_new) / mass(mu)


def _pairs():
    heights = [0.2, 1.0, 3.0, 4.0, 2.0, 0.5, 0.1]
    K = len(heights)
    log_weights = [math.log(h * K / sum(heights)) for h in heights]  # p_uniform = 1/(K·Δ)
    P_mean_snr, C_snr = lognormal_shift_pair(0.25, -1.2, 1.2)
    P_mean_x0, C_x0 = lognormal_shift_pair(-1.0, -1.2, 1.2)  # σ²/c_out² = e^{−λ}/σd² for x0
    return {
        "piecewise p vs piecewise w": (
            ("eps", ("piecewise", {"heights": heights}), ("unit", {})),
            ("eps", ("uniform", {}), ("piecewise", {"log_weights": log_weights})),
        ),
        "snr(k) in w vs shifted lognormal p": (
            ("eps", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("snr", {"k": 0.25})),
            (
                "eps",
                ("lognormal", {"P_mean": P_mean_snr, "P_std": 1.2}),
                ("piecewise", {"log_weights": [math.log(C_snr)]}),
            ),
        ),
        "x0 parameterisation vs eps with shifted lognormal p": (
            ("x0", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {})),
            (
                "eps",
                ("lognormal", {"P_mean": P_mean_x0, "P_std": 1.2}),
                ("piecewise", {"log_weights": [math.log(C_x0 / SIGMA_DATA**2)]}),
            ),
        ),
    }


PAIRS = _pairs()
N_MC = 80_000


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_moving_a_factor_between_p_and_w_keeps_w_and_the_expected_loss(pair):
    a, b = (objective(*spec) for spec in PAIRS[pair])
    lam = torch.linspace(LAM_MIN, LAM_MAX, 2001, dtype=torch.float64)
    torch.testing.assert_close(
        a.effective_weighting(lam), b.effective_weighting(lam), rtol=1e-9, atol=0
    )
    mean_a, se_a, var_a = monte_carlo_loss(a, N_MC, seed=10)
    mean_b, se_b, var_b = monte_carlo_loss(b, N_MC, seed=11)
    se = math.hypot(se_a, se_b)
    print(
        f"\n{pair}: E[loss] A={mean_a:.5f}±{se_a:.5f} (var {var_a:.4g}), "
        f"B={mean_b:.5f}±{se_b:.5f} (var {var_b:.4g}); |Δ|/SE={abs(mean_a - mean_b) / se:.2f}, "
        f"var ratio B/A={var_b / var_a:.3f}"
    )
    assert abs(mean_a - mean_b) < 4 * se
    # the estimators differ: same mean, different variance (far beyond the MC error of a
    # variance estimate, which is ~1% here)
    assert abs(math.log(var_b / var_a)) > 0.2


def test_a_different_effective_weighting_gives_a_different_expected_loss():
    """Control, so that the test above has power: lognormal against cosine differ by > 4 SE."""
    a = objective("eps", ("lognormal", {}), ("unit", {}))
    b = objective("eps", ("cosine", {}), ("unit", {}))
    mean_a, se_a, _ = monte_carlo_loss(a, N_MC // 4, seed=10)
    mean_b, se_b, _ = monte_carlo_loss(b, N_MC // 4, seed=11)
    print(f"\ncontrol: lognormal {mean_a:.4f}±{se_a:.4f}, cosine {mean_b:.4f}±{se_b:.4f}")
    assert abs(mean_a - mean_b) > 4 * math.hypot(se_a, se_b)


def test_the_exact_denoiser_has_lower_loss_than_the_model():
    """Sanity of the mixture: its posterior mean is the minimiser of the x0-space error."""
    obj = objective("x0", ("lognormal", {}), ("unit", {}))
    g = torch.Generator().manual_seed(0)
    sigma, _ = obj.sample_sigma(50_000, generator=g)
    x0 = DATA.sample(50_000, g)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    exact = (DATA.denoise(x, sigma) - x0).square().mean()
    model = (MODEL.denoise(x, sigma) - x0).square().mean()
    assert exact < 0.9 * model


# -- description round trip and the adaptive hooks --------------------------------------------


ROUND_TRIP = [
    ("edm", ("lognormal", {}), ("unit", {})),
    ("v", ("cosine", {"shift": 0.7}), ("snr", {"k": -0.5})),
    ("x0", ("uniform", {"lam_min": -3.0, "lam_max": 6.0}), ("min_snr", {"gamma": 2.0})),
    ("flow", ("piecewise", {"heights": [1.0, 2.0, 0.5]}), ("sigmoid", {"b": 2.0})),
    ("eps", ("piecewise", {"heights": [4.0, 1.0]}), ("piecewise", {"log_weights": [0.1, -2.0]})),
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=[s[0] for s in ROUND_TRIP])
def test_description_round_trip_gives_the_same_objective(spec):
    obj = objective(*spec, run={"sigma_min": 0.01, "sigma_max": 50.0}, sigma_data=0.7)
    desc = json.loads(json.dumps(obj.describe()))
    assert desc == {
        "parameterisation": spec[0],
        "sigma_data": 0.7,
        "density": {"name": spec[1][0], "params": obj.density.params()},
        "weighting": {"name": spec[2][0], "params": obj.weighting.params()},
        "adaptive": None,
        "sigma_min": 0.01,
        "sigma_max": 50.0,
    }
    again = objective_from_description(desc)
    assert again.describe() == desc
    lam = torch.linspace(-10, 12, 301, dtype=torch.float64)
    assert torch.equal(again.effective_weighting(lam), obj.effective_weighting(lam))


class StubAdaptive:
    """An adaptive mechanism written to the contract's interface, recording the calls."""

    name = "stub"

    def __init__(self):
        self.bound_to = None
        self.observed = []
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def bind(self, objective):
        self.bound_to = objective

    def sample(self, n, generator=None):
        sigma = torch.full((n,), 0.5, dtype=torch.float64)
        return sigma, torch.full((n,), 3.0, dtype=torch.float64)

    def transform(self, sigma, weighted_err):
        return self.scale * weighted_err + 1.0

    def observe(self, sigma, weighted_err_detached):
        self.observed.append((sigma, weighted_err_detached))

    def effective_factor(self, lam):
        return torch.full_like(lam, 0.25)

    def parameters(self):
        return [self.scale]

    def state_dict(self):
        return {"scale": self.scale.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.scale.copy_(state["scale"])

    def params(self):
        return {}


def test_the_adaptive_hooks_are_called():
    stub = StubAdaptive()
    obj = objective("edm", ("lognormal", {}), ("unit", {}), adaptive=stub)
    plain = objective("edm", ("lognormal", {}), ("unit", {}))
    assert stub.bound_to is obj
    sigma, factor = obj.sample_sigma(6)
    assert torch.all(sigma == 0.5) and torch.all(factor == 3.0)
    x0 = torch.randn(6, 3)
    noise = torch.randn(6, 3)
    F = random_network(0, 3)
    loss = obj.loss(F, x0, sigma, noise, factor)
    torch.testing.assert_close(loss, 2.0 * 3.0 * plain.loss(F, x0, sigma, noise) + 1.0)
    obj.observe(sigma, loss.detach())
    assert len(stub.observed) == 1 and torch.equal(stub.observed[0][1], loss.detach())
    lam = torch.linspace(-5, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(obj.effective_weighting(lam), 0.25 * plain.effective_weighting(lam))
    assert obj.parameters() == [stub.scale] and plain.parameters() == []
    state = obj.state_dict()
    with torch.no_grad():
        stub.scale.fill_(5.0)
    obj.load_state_dict(state)
    assert float(stub.scale.detach()) == 2.0
    assert plain.state_dict() == {}
    with pytest.raises(ValueError, match=r"no adaptive mechanism, but got state with keys"):
        plain.load_state_dict(state)


def test_description_round_trip_keeps_the_adaptive_mechanism():
    adaptive = pytest.importorskip("sigmatune.objectives.adaptive")
    for name in sorted(adaptive.ADAPTIVE):
        obj = objective(
            "edm", ("lognormal", {}), ("unit", {}), adaptive=adaptive.make_adaptive(name, {})
        )
        # let the mechanism adapt a little, so that its state matters
        F = network_for("edm")
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            sigma, factor = obj.sample_sigma(256, generator=g)
            x0 = DATA.sample(256, g)
            loss = obj.loss(
                F, x0, sigma, torch.randn(x0.shape, generator=g, dtype=torch.float64), factor
            )
            obj.observe(sigma, loss.detach())
        desc = json.loads(json.dumps(obj.describe()))
        assert desc["adaptive"] == {"name": name, "params": obj.adaptive.params()}
        again = objective_from_description(desc)
        assert type(again.adaptive) is type(obj.adaptive) and again.describe() == desc
        again.load_state_dict(obj.state_dict())
        lam = torch.linspace(LAM_MIN, LAM_MAX, 101, dtype=torch.float64)
        torch.testing.assert_close(again.effective_weighting(lam), obj.effective_weighting(lam))


def test_bad_objectives_raise_value_errors():
    density = make_density("lognormal", {}, **RUN)
    unit = make_weighting("unit", {}, **RUN)
    with pytest.raises(
        ValueError,
        match=r"unknown parameterisation 'eps2'; valid: edm, eps, "
        r"flow, v, x0",
    ):
        DiffusionObjective("eps2", density, unit, SIGMA_DATA)
    with pytest.raises(
        ValueError,
        match=r"sigma_data must be finite and > 0, but got "
        r"sigma_data=0\.0",
    ):
        DiffusionObjective("edm", density, unit, 0.0)
    with pytest.raises(ValueError, match=r"sigma_data.*sigma_data=nan"):
        DiffusionObjective("edm", density, unit, float("nan"))
    other_range = make_weighting(
        "piecewise", {"log_weights": [0.0]}, sigma_min=0.01, sigma_max=80.0
    )
    with pytest.raises(
        ValueError,
        match=r"sigma_min=0\.01, but the density has "
        r"sigma_min=0\.002",
    ):
        DiffusionObjective("edm", density, other_range, SIGMA_DATA)
    with pytest.raises(ValueError, match=r"density must be an objectives\.densities\.Density"):
        DiffusionObjective("edm", "lognormal", unit, SIGMA_DATA)


def test_bad_descriptions_raise_value_errors():
    desc = objective("edm", ("lognormal", {}), ("unit", {})).describe()
    for key in ("parameterisation", "sigma_min", "density"):
        broken = {k: v for k, v in desc.items() if k != key}
        with pytest.raises(ValueError, match=rf"description lacks {key!r}"):
            objective_from_description(broken)
    with pytest.raises(ValueError, match=r"unknown density 'gamma'"):
        objective_from_description({**desc, "density": {"name": "gamma", "params": {}}})
    with pytest.raises(ValueError, match=r"P_std must be > 0, but got P_std=-2\.0"):
        objective_from_description(
            {**desc, "density": {"name": "lognormal", "params": {"P_std": -2.0}}}
        )
    with pytest.raises(ValueError, match=r"description\['weighting'\] must be a dict"):
        objective_from_description({**desc, "weighting": "unit"})
    pytest.importorskip("sigmatune.objectives.adaptive")
    with pytest.raises(ValueError, match=r"unknown adaptive 'magic'"):
        objective_from_description({**desc, "adaptive": {"name": "magic", "params": {}}})
