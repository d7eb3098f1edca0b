"""Tests of objectives.adaptive: importance sampling, EDM2 uncertainty, CDCD time warping.

Every expectation is derived independently of the code under test: closed forms for the
truncated normal (the lognormal density over λ), quadrature, and Monte Carlo with tolerances
from its standard error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from sigmatune.objectives.adaptive import ADAPTIVE, Importance, TimeWarp, Uncertainty, make_adaptive
from sigmatune.objectives.densities import DENSITIES, make_density
from sigmatune.objectives.loss import DiffusionObjective
from sigmatune.objectives.weightings import make_weighting

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
LAM_MIN, LAM_MAX = -2 * math.log(SIGMA_MAX), -2 * math.log(SIGMA_MIN)
SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2  # EDM: λ ~ N(2.4, 2.4²), truncated to [LAM_MIN, LAM_MAX]
MU, S = -2 * P_MEAN, 2 * P_STD
K_SNR = 0.5  # weighting snr(k) = e^{kλ} = σ^{-2k}: a loss whose size depends strongly on λ


def _objective(adaptive=None) -> DiffusionObjective:
    """EDM's preconditioning and density with weighting snr(K_SNR)."""
    density = make_density(
        "lognormal", {"P_mean": P_MEAN, "P_std": P_STD}, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX
    )
    weighting = make_weighting("snr", {"k": K_SNR}, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return DiffusionObjective("edm", density, weighting, SIGMA_DATA, adaptive=adaptive)


def _assert_close(actual, expected, *, rtol: float = 1.3e-6, atol: float = 1e-5) -> None:
    """``|actual − expected| ≤ atol + rtol·|expected|`` elementwise, NaN failing (a light
    stand-in for ``torch.testing.assert_close``, whose first call imports half of torch)."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    deviation = (actual - expected).abs()
    assert (deviation <= atol + rtol * expected.abs()).all(), (
        f"max deviation {deviation.max().item():.3g} exceeds atol={atol}, rtol={rtol}"
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_net(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
    """A fixed, imperfect network: F ≡ 0."""
    return torch.zeros_like(x)


DIM = 4
# Batches in the loops stay at ≤ 2048 elements per tensor: larger element-wise ops go to
# torch's thread pool, which is slow on a small, busy machine.


def _losses(objective: DiffusionObjective, sigma, factor, generator) -> torch.Tensor:
    """Per-example loss of F ≡ 0 on x0 ~ N(0, σ_d² I_4).

    With EDM's preconditioning E‖F_target‖²/dim = 1 exactly (c_out² is the target's
    variance), so E[loss | σ] = w(σ) = e^{kλ}.
    """
    n = sigma.shape[0]
    x0 = SIGMA_DATA * torch.randn(n, DIM, generator=generator)
    noise = torch.randn(n, DIM, generator=generator)
    return objective.loss(_zero_net, x0, sigma, noise, factor)


def _truncnorm_mean_exp(t: float, a: float, b: float) -> float:
    """E[e^{tλ}] for λ ~ N(MU, S²) truncated to [a, b] (closed form)."""
    shift = MU + S**2 * t
    num = special.ndtr((b - shift) / S) - special.ndtr((a - shift) / S)
    den = special.ndtr((b - MU) / S) - special.ndtr((a - MU) / S)
    return math.exp(MU * t + 0.5 * S**2 * t**2) * num / den


def _p_mass(a: float, b: float) -> float:
    """Mass of the truncated N(MU, S²) on [a, b] (closed form)."""
    den = special.ndtr((LAM_MAX - MU) / S) - special.ndtr((LAM_MIN - MU) / S)
    return (special.ndtr((b - MU) / S) - special.ndtr((a - MU) / S)) / den


def _train_importance(objective: DiffusionObjective, steps: int = 100, batch: int = 512) -> None:
    """Fit the EMA with the objective's own loop: sample σ, compute the loss, observe it."""
    generator = _generator(1)
    for _ in range(steps):
        sigma, factor = objective.sample_sigma(batch, generator)
        loss = _losses(objective, sigma, factor, generator)
        objective.observe(sigma, loss.detach())


# -- registry and construction ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_make_adaptive_builds_each_entry_and_params_round_trip_through_json(name):
    adaptive = make_adaptive(name, {})
    assert isinstance(adaptive, ADAPTIVE[name])
    assert adaptive.name == name
    params = json.loads(json.dumps(adaptive.params()))
    assert make_adaptive(name, params).params() == adaptive.params()


@pytest.mark.parametrize("name", [None, "none"])
def test_make_adaptive_none_gives_none(name):
    assert make_adaptive(name, {}) is None


def test_make_adaptive_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown adaptive 'foo'; valid: importance, none, timewarp, uncertainty"
    ):
        make_adaptive("foo", {})


def test_make_adaptive_unknown_parameter_names_it_and_valid_ones():
    with pytest.raises(ValueError, match="'bins'.*'importance'.*ema_decay, mix, num_bins"):
        make_adaptive("importance", {"bins": 8})


@pytest.mark.parametrize(
    ("name", "param", "value"),
    [
        ("importance", "num_bins", 0),
        ("importance", "num_bins", 2.5),
        ("importance", "num_bins", True),
        ("importance", "ema_decay", 1.0),
        ("importance", "ema_decay", -0.1),
        ("importance", "mix", 0.0),
        ("importance", "mix", 1.5),
        ("importance", "mix", float("nan")),
        ("timewarp", "num_bins", 100_000),
        ("timewarp", "ema_decay", 2.0),
        ("timewarp", "mix", -0.05),
        ("uncertainty", "num_freqs", 0),
        ("uncertainty", "lr_scale", 0.0),
        ("uncertainty", "lr_scale", float("inf")),
    ],
)
def test_make_adaptive_out_of_range_names_parameter_value_and_range(name, param, value):
    with pytest.raises(ValueError) as info:
        make_adaptive(name, {param: value})
    message = str(info.value)
    assert f"{param} must be" in message and f"{param}={value!r}" in message


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_unbound_adaptive_refuses_to_sample(name):
    with pytest.raises(RuntimeError, match="not bound"):
        make_adaptive(name, {}).sample(4)


# -- importance --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_importance() -> DiffusionObjective:
    """An objective whose importance proposal has learned the σ^{-1}-shaped loss (read only)."""
    objective = _objective(Importance())
    _train_importance(objective)
    return objective


def test_importance_leaves_effective_weighting_unchanged_after_learning_a_skewed_loss(
    trained_importance,
):
    plain = _objective()
    adaptive = trained_importance
    importance = adaptive.adaptive

    # The proposal really moved away from p (else the test below would be vacuous) ...
    ratio = importance.proposal_masses() / importance.p_mass
    assert ratio.max() > 3 and ratio.min() < 0.5

    # ... yet W(λ) is the plain objective's at every λ,
    lam = torch.linspace(LAM_MIN + 0.01, LAM_MAX - 0.01, 41, dtype=torch.float64)
    _assert_close(
        adaptive.effective_weighting(lam), plain.effective_weighting(lam), rtol=1e-12, atol=0.0
    )

    # ... and what is realised by sampling agrees: σ ~ q weighted by the factor p/q has the
    # p-mass of every (finer) λ-bin, within Monte Carlo error, while σ ~ q alone does not.
    n = 100_000
    sigma, factor = adaptive.sample_sigma(n, _generator(2))
    lam_s = (-2 * torch.log(sigma)).numpy()
    factor = factor.numpy()
    edges = np.linspace(LAM_MIN, LAM_MAX, 3 * importance.num_bins + 1)
    which = np.clip(np.digitize(lam_s, edges) - 1, 0, len(edges) - 2)
    weighted = np.bincount(which, weights=factor, minlength=len(edges) - 1) / n
    unweighted = np.bincount(which, minlength=len(edges) - 1) / n
    expected = np.array([_p_mass(a, b) for a, b in zip(edges[:-1], edges[1:])])
    # Var[(p/q)·1_bin] ≤ E_q[(p/q)²·1_bin] = E_p[(p/q)·1_bin] ≤ P_bin/mix, as p/q ≤ 1/mix.
    stderr = np.sqrt(expected / (importance.mix * n)) + 1e-9
    z_weighted = np.abs(weighted - expected) / stderr
    z_unweighted = np.abs(unweighted - expected) / (np.sqrt(expected / n) + 1e-9)
    print(f"max |z| with factor {z_weighted.max():.2f}, without {z_unweighted.max():.1f}")
    assert z_weighted.max() < 5.0
    assert z_unweighted.max() > 20.0


def test_importance_proposal_follows_p_times_the_mean_loss_per_bin(trained_importance):
    """Q_k ≈ (1−mix)·P_k·m_k/Σ_j P_j·m_j + mix·P_k with m_k = E_p[e^{kλ} | bin k] (closed form)."""
    importance = trained_importance.adaptive
    edges = importance.edges.numpy()
    p_mass = np.array([_p_mass(a, b) for a, b in zip(edges[:-1], edges[1:])])
    mean = np.array([_truncnorm_mean_exp(K_SNR, a, b) for a, b in zip(edges[:-1], edges[1:])])
    optimal = p_mass * mean / np.sum(p_mass * mean)
    expected = (1 - importance.mix) * optimal + importance.mix * p_mass
    np.testing.assert_allclose(importance.p_mass.numpy(), p_mass, rtol=1e-9, atol=1e-12)
    masses = importance.proposal_masses().numpy()
    big = expected > 0.01
    np.testing.assert_allclose(masses[big], expected[big], rtol=0.15)


def test_importance_lowers_variance_of_the_loss_estimate_with_the_same_expectation(
    trained_importance,
):
    plain = _objective()
    adaptive = trained_importance
    n = 20_000
    sigma_p = plain.density.sample(n, generator=_generator(3))
    loss_p = _losses(plain, sigma_p, None, _generator(4)).double()
    sigma_q, factor_q = adaptive.sample_sigma(n, _generator(5))
    loss_q = _losses(adaptive, sigma_q, factor_q, _generator(6)).double()

    exact = _truncnorm_mean_exp(K_SNR, LAM_MIN, LAM_MAX)  # E_p[w]·E[err] with E[err] = 1
    batch = 256
    var_p, var_q = loss_p.var().item() / batch, loss_q.var().item() / batch
    print(
        f"exact E[loss] = {exact:.4f}; batch-mean ({batch}) estimator: "
        f"without importance mean {loss_p.mean():.4f} var {var_p:.3e}, "
        f"with importance mean {loss_q.mean():.4f} var {var_q:.3e}, "
        f"variance ratio {var_p / var_q:.2f}"
    )
    for loss, var in ((loss_p, var_p), (loss_q, var_q)):
        stderr = math.sqrt(var * batch / n)
        assert abs(loss.mean().item() - exact) < 4 * stderr
    assert var_q < var_p / 2


def test_importance_samples_follow_its_proposal_density():
    importance = Importance(num_bins=16)
    objective = _objective(importance)
    _train_importance(objective, steps=40)
    sigma, _ = objective.sample_sigma(5000, _generator(7))
    lam = (-2 * torch.log(sigma)).numpy()
    assert sigma.min() >= SIGMA_MIN and sigma.max() <= SIGMA_MAX
    # The CDF of q by the midpoint rule on exp(log q), independently of importance.cdf; the
    # grid's nodes include the bin edges, where q jumps, so no midpoint straddles a jump.
    grid = np.linspace(LAM_MIN, LAM_MAX, 256 * importance.num_bins + 1)
    mid = torch.from_numpy(0.5 * (grid[:-1] + grid[1:]))
    density = torch.exp(importance.log_prob(mid)).numpy()
    cdf = np.concatenate([[0.0], np.cumsum(density * np.diff(grid))])
    assert cdf[-1] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(importance.cdf(torch.from_numpy(grid)).numpy(), cdf, atol=2e-4)
    result = stats.kstest(lam, lambda x: np.interp(x, grid, cdf))
    assert result.pvalue > 1e-3


# -- uncertainty -------------------------------------------------------------------------------


def test_uncertainty_learns_log_of_the_conditional_mean_loss():
    """E[w·err | σ] = e^{kλ} here, so the optimum of e^{-u}·w·err + u is u(σ) = kλ."""
    uncertainty = Uncertainty()
    objective = _objective(uncertainty)
    plain = _objective()
    parameters = objective.parameters()
    assert parameters and all(isinstance(p, torch.nn.Parameter) for p in parameters)
    steps = 300
    optimiser = torch.optim.Adam(parameters, lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1 - i / steps)
    generator = _generator(8)
    for _ in range(steps):
        sigma, factor = objective.sample_sigma(128, generator)
        loss = _losses(objective, sigma, factor, generator).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()

    # Where p puts most of its mass (λ within 1.5 std of its mean) u(σ) ≈ kλ.
    lam = torch.linspace(MU - 1.5 * S, MU + 1.5 * S, 25, dtype=torch.float64)
    with torch.no_grad():
        u = uncertainty.u(torch.exp(-lam / 2)).double()
    error = (u - K_SNR * lam).abs().max().item()
    print(f"max |u(σ) − log E[loss|σ]| on the grid: {error:.3f}")
    assert error < 0.15  # 0.02–0.06 over generator seeds 0–7
    # The effective weighting is divided by the learned scale: W ≈ W_plain·e^{-kλ}.
    ratio = objective.effective_weighting(lam) / plain.effective_weighting(lam)
    _assert_close(ratio, torch.exp(-K_SNR * lam), rtol=0.25, atol=0.0)
    _assert_close(ratio, torch.exp(-u), rtol=1e-5, atol=0.0)


def test_uncertainty_transform_is_edm2_formula_and_starts_at_identity():
    uncertainty = Uncertainty(num_freqs=4)
    _objective(uncertainty)
    sigma = torch.tensor([0.01, 0.5, 20.0], dtype=torch.float64)
    err = torch.tensor([0.3, 1.0, 4.0])
    _assert_close(uncertainty.transform(sigma, err), err)  # u ≡ 0 at the start
    with torch.no_grad():
        uncertainty.module.linear.bias.fill_(0.7)
    expected = err * math.exp(-0.7) + 0.7
    _assert_close(uncertainty.transform(sigma, err), expected)


# -- time warping ------------------------------------------------------------------------------


def _bin_of(lam: torch.Tensor, num_bins: int) -> torch.Tensor:
    width = (LAM_MAX - LAM_MIN) / num_bins
    return ((lam - LAM_MIN) / width).floor().clamp(0, num_bins - 1).long()


PROFILES = {
    "zero": lambda lam, k: torch.zeros_like(lam),
    "huge": lambda lam, k: torch.full_like(lam, 1.7e308),  # near float64's maximum
    "tiny": lambda lam, k: torch.full_like(lam, 1e-300),
    "skewed": lambda lam, k: torch.exp(lam),  # σ^{-2}
    "spiky": lambda lam, k: torch.where(k % 7 == 0, 1e30, 0.0) + 0 * lam,
    "nonfinite": lambda lam, k: (
        torch.where(k % 3 == 0, math.nan, torch.where(k % 3 == 1, math.inf, -1.0)) + 0 * lam
    ),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_timewarp_stays_monotone_and_invertible_for_any_loss(profile):
    timewarp = TimeWarp(num_bins=16)
    objective = _objective(timewarp)
    generator = _generator(9)
    for _ in range(15):
        sigma, factor = objective.sample_sigma(256, generator)
        assert torch.equal(factor, torch.ones_like(factor))
        lam = -2 * torch.log(sigma)
        objective.observe(sigma, PROFILES[profile](lam, _bin_of(lam, 16)))

    inner = timewarp.edges[1:-1]
    lam = (
        torch.cat(
            [
                torch.linspace(LAM_MIN, LAM_MAX, 20_001, dtype=torch.float64),
                inner - 1e-7,
                inner + 1e-7,
            ]
        )
        .sort()
        .values
    )
    cdf = timewarp.cdf(lam)
    assert torch.isfinite(cdf).all()
    assert cdf[0] == 0.0 and cdf[-1] == pytest.approx(1.0, abs=1e-12)
    assert (cdf.diff() > 0).all(), "the CDF must be strictly increasing"
    _assert_close(timewarp.icdf(cdf), lam, rtol=0.0, atol=1e-9)
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    _assert_close(timewarp.cdf(timewarp.icdf(u)), u, rtol=0.0, atol=1e-12)
    assert (timewarp.masses() >= timewarp.mix / timewarp.num_bins - 1e-15).all()

    sigma, _ = objective.sample_sigma(10_000, _generator(10))
    assert torch.isfinite(sigma).all()
    assert sigma.min() >= SIGMA_MIN and sigma.max() <= SIGMA_MAX


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_importance_proposal_stays_a_valid_mixture_with_p_for_any_loss(profile):
    importance = Importance(num_bins=16)
    objective = _objective(importance)
    generator = _generator(9)
    for _ in range(15):
        sigma, factor = objective.sample_sigma(256, generator)
        lam = -2 * torch.log(sigma)
        objective.observe(sigma, factor * PROFILES[profile](lam, _bin_of(lam, 16)))
    masses = importance.proposal_masses()
    assert torch.isfinite(masses).all()
    assert masses.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (masses >= importance.mix * importance.p_mass * (1 - 1e-12)).all()
    sigma, factor = objective.sample_sigma(4096, _generator(10))
    assert torch.isfinite(sigma).all() and torch.isfinite(factor).all()
    assert (factor > 0).all() and (factor <= 1 / importance.mix + 1e-9).all()


def test_timewarp_learns_a_density_proportional_to_the_loss_and_samples_follow_it():
    num_bins, mix = 12, 0.05
    timewarp = TimeWarp(num_bins=num_bins, mix=mix)
    objective = _objective(timewarp)
    plain = _objective()
    rng = np.random.default_rng(0)
    profile = torch.from_numpy(rng.uniform(0.1, 5.0, num_bins))  # loss per bin, constant in it
    generator = _generator(11)
    for _ in range(40):
        sigma, _ = objective.sample_sigma(256, generator)
        objective.observe(sigma, profile[_bin_of(-2 * torch.log(sigma), num_bins)])

    # Independent derivation: density ∝ loss per bin, mixed with uniform in λ.
    masses = (1 - mix) * profile.numpy() / profile.sum().item() + mix / num_bins
    edges = np.linspace(LAM_MIN, LAM_MAX, num_bins + 1)
    expected_cdf = np.concatenate([[0.0], np.cumsum(masses)])
    grid = np.linspace(LAM_MIN, LAM_MAX, 997)
    np.testing.assert_allclose(
        timewarp.cdf(torch.from_numpy(grid)).numpy(),
        np.interp(grid, edges, expected_cdf),
        atol=1e-12,
    )

    sigma, _ = objective.sample_sigma(5000, _generator(12))
    lam = (-2 * torch.log(sigma)).numpy()
    result = stats.kstest(lam, lambda x: np.interp(x, edges, expected_cdf))
    print(f"time-warp KS statistic {result.statistic:.4f}, p-value {result.pvalue:.3f}")
    assert result.pvalue > 1e-3

    # W changes by q/p: at bin centres, W_tw/W_plain = (M_k/Δλ)/p(λ).
    centres = torch.from_numpy(0.5 * (edges[:-1] + edges[1:]))
    q = torch.from_numpy(masses / (edges[1] - edges[0]))
    p = torch.from_numpy(
        stats.truncnorm.pdf(
            centres.numpy(), (LAM_MIN - MU) / S, (LAM_MAX - MU) / S, loc=MU, scale=S
        )
    )
    ratio = objective.effective_weighting(centres) / plain.effective_weighting(centres)
    _assert_close(ratio, q / p, rtol=1e-9, atol=0.0)


# -- every mechanism with every density ---------------------------------------------------------

DENSITY_PARAMS = {
    "lognormal": {"P_mean": P_MEAN, "P_std": P_STD},
    "cosine": {"shift": 1.0},
    "uniform": {"lam_min": 0.0, "lam_max": 5.0},  # a sub-range: p = 0 on most bins
    "piecewise": {"heights": [0.05, 1.0, 3.0, 0.01, 2.0]},  # jumps and near-empty stretches
    "laplace": {"mu": 1.0, "b": 0.5},
    "wlam": {"center": 1.0, "slope_low": -0.8, "slope_high": 0.2, "curvature": 0.2},
}


def test_density_cases_cover_the_density_registry():
    assert set(DENSITY_PARAMS) == set(DENSITIES)


@pytest.mark.parametrize("density_name", sorted(DENSITY_PARAMS))
@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_every_adaptive_trains_and_samples_with_every_density(name, density_name):
    run = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}
    density = make_density(density_name, DENSITY_PARAMS[density_name], **run)
    weighting = make_weighting("snr", {"k": K_SNR}, **run)
    objective = DiffusionObjective("edm", density, weighting, SIGMA_DATA, make_adaptive(name, {}))
    plain = DiffusionObjective("edm", density, weighting, SIGMA_DATA)
    parameters = objective.parameters()
    optimiser = torch.optim.Adam(parameters, lr=0.05) if parameters else None
    generator = _generator(16)
    for _ in range(10):
        sigma, factor = objective.sample_sigma(256, generator)
        loss = _losses(objective, sigma, factor, generator)
        assert torch.isfinite(loss).all()
        if optimiser is not None:
            optimiser.zero_grad()
            loss.mean().backward()
            optimiser.step()
        objective.observe(sigma, loss.detach())

    n = 10_000
    sigma, factor = objective.sample_sigma(n, _generator(17))
    assert sigma.dtype == torch.float64 and sigma.shape == factor.shape == (n,)
    assert sigma.min() >= SIGMA_MIN and sigma.max() <= SIGMA_MAX
    assert torch.isfinite(factor).all() and (factor > 0).all()
    lam = -2 * torch.log(sigma)
    inside = torch.linspace(density.lam_min, density.lam_max, 101, dtype=torch.float64)
    inside = inside[torch.isfinite(density.log_prob(inside))]
    W = objective.effective_weighting(inside)
    assert torch.isfinite(W).all() and (W >= 0).all()
    if name != "importance":
        return
    # Importance sampling stays on p's support and is unbiased for E_p[g(λ)]: with g = 1
    # and g = λ, against the midpoint rule on exp(log p).
    assert torch.isfinite(density.log_prob(lam)).all()
    _assert_close(W, plain.effective_weighting(inside), rtol=1e-12, atol=0.0)
    grid = torch.linspace(LAM_MIN, LAM_MAX, 200_001, dtype=torch.float64)
    mid = 0.5 * (grid[1:] + grid[:-1])
    p = torch.exp(density.log_prob(mid)) * (grid[1] - grid[0])
    for g, exact in ((torch.ones_like(lam), p.sum()), (lam, (p * mid).sum())):
        values = factor * g
        stderr = values.std() / math.sqrt(n)
        assert abs(values.mean() - exact) < 5 * stderr + 1e-6, (g, values.mean(), exact)


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_state_dict_round_trip_through_torch_save_restores_behaviour(name, tmp_path):
    adaptive = make_adaptive(name, {})
    objective = _objective(adaptive)
    parameters = objective.parameters()
    optimiser = torch.optim.Adam(parameters, lr=0.05) if parameters else None
    generator = _generator(13)
    for _ in range(20):
        sigma, factor = objective.sample_sigma(256, generator)
        loss = _losses(objective, sigma, factor, generator)
        if optimiser is not None:
            optimiser.zero_grad()
            loss.mean().backward()
            optimiser.step()
        objective.observe(sigma, loss.detach())

    state = adaptive.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    torch.save(state, tmp_path / "adaptive.pt")
    restored = make_adaptive(name, adaptive.params())
    fresh = make_adaptive(name, adaptive.params())
    _objective(restored)
    _objective(fresh)
    restored.load_state_dict(torch.load(tmp_path / "adaptive.pt", weights_only=True))

    def behaviour(a):
        sigma, factor = a.sample(512, _generator(14))
        err = torch.rand(512, generator=_generator(15))
        lam = torch.linspace(LAM_MIN, LAM_MAX, 33, dtype=torch.float64)
        with torch.no_grad():
            return sigma, factor, a.transform(sigma, err), a.effective_factor(lam)

    for got, want in zip(behaviour(restored), behaviour(adaptive)):
        assert torch.equal(got, want)
    assert any(
        not torch.equal(got, want) for got, want in zip(behaviour(fresh), behaviour(adaptive))
    ), "training changed nothing, so the round trip proves nothing"


@pytest.mark.parametrize("name", ["importance", "timewarp"])
def test_load_state_dict_rejects_a_state_of_another_size(name):
    adaptive = make_adaptive(name, {"num_bins": 8})
    _objective(adaptive)
    state = make_adaptive(name, {"num_bins": 4}).state_dict()
    with pytest.raises(ValueError, match="shape"):
        adaptive.load_state_dict(state)
