"""The literature registry: every entry's effective weighting W(λ) against the formula its own
paper states, written here from the paper in its own variables (σ, t, SNR), independently of
the code; and same_effective_weighting on pairs built analytically to be equal or different."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sigmatune.objectives import weightings
from sigmatune.objectives.literature import (
    LITERATURE,
    get_literature,
    literature_names,
)
from sigmatune.objectives.loss import objective_from_description, same_effective_weighting
from sigmatune.objectives.weightings import Weighting

SIGMA_DATA = 0.5
RUNS = [(0.002, 80.0), (0.02, 10.0)]  # EDM's range, and a narrower one


def lam_grid(sigma_min: float, sigma_max: float, n: int = 801) -> np.ndarray:
    return np.linspace(-2 * math.log(sigma_max), -2 * math.log(sigma_min), n)


def normalised(W: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """W divided by its integral over the grid: the papers' normalisations differ."""
    return W / integrate.trapezoid(W, lam)


# -- the papers' own formulas ----------------------------------------------------------------
# Each gives the ε-space weight per unit λ, W(λ), from the paper's loss: its weight on its own
# error, converted to ‖ε̂ − ε‖², times the density of the noise level per unit λ.


def lognormal_per_lam(lam: np.ndarray, P_mean: float, P_std: float) -> np.ndarray:
    """Karras et al. 2022: ln σ ~ N(P_mean, P_std²); as a density over λ = −2 ln σ,
    p_λ = p_σ(σ)·|dσ/dλ| = p_σ(σ)·σ/2."""
    sigma = np.exp(-lam / 2)
    return stats.lognorm(s=P_std, scale=math.exp(P_mean)).pdf(sigma) * sigma / 2


def edm_loss_weight(sigma: np.ndarray, sigma_data: float) -> np.ndarray:
    """Karras et al. 2022, Table 1: λ(σ) = (σ² + σ_data²)/(σ·σ_data)² on ‖D − y‖²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def cosine_t(lam: np.ndarray) -> np.ndarray:
    """t of λ under ᾱ(t) = cos²(πt/2) (α_t = cos(πt/2), Salimans & Ho 2022; Nichol & Dhariwal
    2021 with s → 0): SNR = ᾱ/(1 − ᾱ) = cot²(πt/2) = e^λ, so t = (2/π)·atan(e^{−λ/2})."""
    return (2 / np.pi) * np.arctan(np.exp(-lam / 2))


def per_unit_lam(t_of, lam: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """|dt/dλ| by a central difference: the density of λ when t ~ U(0, 1)."""
    return np.abs(t_of(lam + h) - t_of(lam - h)) / (2 * h)


def w_edm(lam: np.ndarray, sd: float) -> np.ndarray:
    # ‖D − y‖² = σ²‖ε̂ − ε‖²
    sigma = np.exp(-lam / 2)
    return lognormal_per_lam(lam, -1.2, 1.2) * edm_loss_weight(sigma, sd) * sigma**2


def w_edm2(lam: np.ndarray, sd: float) -> np.ndarray:
    # Karras et al. 2024, eq. 21: λ(σ)/e^{u(σ)}·‖D − y‖² + u(σ), with u = 0 at the start
    sigma = np.exp(-lam / 2)
    u = 0.0
    return lognormal_per_lam(lam, -0.4, 1.0) * edm_loss_weight(sigma, sd) / np.exp(u) * sigma**2


def w_rectified_flow(lam: np.ndarray, sd: float) -> np.ndarray:
    # Esser et al. 2024, §3.1: w_t = t/(1 − t)·π_ln(t; m, s), π_ln the logit-normal density
    m, s = 0.0, 1.0
    sigma = np.exp(-lam / 2)
    t = sigma / (1 + sigma)
    logit = np.log(t / (1 - t))
    pi_ln = np.exp(-((logit - m) ** 2) / (2 * s**2)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))
    return t / (1 - t) * pi_ln


def w_min_snr(lam: np.ndarray, sd: float) -> np.ndarray:
    # Hang et al. 2023: min{SNR, γ}·‖x̂0 − x0‖² and ‖x̂0 − x0‖² = ‖ε̂ − ε‖²/SNR; t uniform, cosine
    snr, gamma = np.exp(lam), 5.0
    return per_unit_lam(cosine_t, lam) * np.minimum(snr, gamma) / snr


def w_v_cosine(lam: np.ndarray, sd: float) -> np.ndarray:
    # Salimans & Ho 2022, §4: ‖v − v̂‖² = (1 + SNR)·‖x − x̂‖² ('SNR+1'), ‖x − x̂‖² = ‖ε − ε̂‖²/SNR
    snr = np.exp(lam)
    return per_unit_lam(cosine_t, lam) * (1 + snr) / snr


def w_sigmoid(lam: np.ndarray, sd: float) -> np.ndarray:
    # Kingma & Gao 2023, §5: the weighting function itself, w(λ) = sigmoid(−λ + b), b = 2
    return 1 / (1 + np.exp(lam - 2.0))


def w_laplace(lam: np.ndarray, sd: float) -> np.ndarray:
    # Hang et al. 2024, §2: p(λ) = e^{−|λ − μ|/b}/(2b); v-MSE: ‖v − v̂‖² = ‖ε − ε̂‖²/α², with
    # α² = SNR/(1 + SNR) in the VP view
    mu, b = 0.0, 0.5
    alpha2 = np.exp(lam) / (1 + np.exp(lam))
    return np.exp(-np.abs(lam - mu) / b) / (2 * b) / alpha2


def w_eps_cosine(lam: np.ndarray, sd: float) -> np.ndarray:
    # Ho et al. 2020, L_simple: unit weight on ‖ε − ε̂‖², t uniform under the cosine schedule
    return per_unit_lam(cosine_t, lam)


PAPER_W = {
    "edm": w_edm,
    "edm2": w_edm2,
    "rectified_flow": w_rectified_flow,
    "min_snr": w_min_snr,
    "v_cosine": w_v_cosine,
    "sigmoid": w_sigmoid,
    "laplace": w_laplace,
    "eps_cosine": w_eps_cosine,
}

# Kingma & Gao 2023, Table 1: W(λ) of published objectives, up to a constant.
KINGMA_GAO_TABLE_1 = {
    "edm": lambda lam, sd: stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + sd**2) / sd**2,
    "v_cosine": lambda lam, sd: np.exp(-lam / 2),
    "eps_cosine": lambda lam, sd: 1 / np.cosh(lam / 2),
}


def effective_weighting(name: str, run: tuple[float, float], sd: float = SIGMA_DATA):
    objective = objective_from_description(get_literature(name).description(sd, *run))
    lam = lam_grid(*run)
    return lam, objective.effective_weighting(torch.from_numpy(lam)).numpy()


def test_every_entry_has_its_papers_formula():
    assert set(PAPER_W) == set(LITERATURE)


@pytest.mark.parametrize("run", RUNS, ids=[f"{a}-{b}" for a, b in RUNS])
@pytest.mark.parametrize("name", list(LITERATURE))
def test_effective_weighting_equals_the_papers_formula(name, run):
    lam, W = effective_weighting(name, run)
    assert np.all(np.isfinite(W)) and np.all(W > 0)
    expected = PAPER_W[name](lam, SIGMA_DATA)
    np.testing.assert_allclose(normalised(W, lam), normalised(expected, lam), rtol=1e-7)


@pytest.mark.parametrize("sd", [0.5, 1.3])
@pytest.mark.parametrize("name", list(KINGMA_GAO_TABLE_1))
def test_effective_weighting_equals_kingma_and_gao_table_1(name, sd):
    lam, W = effective_weighting(name, RUNS[0], sd)
    expected = KINGMA_GAO_TABLE_1[name](lam, sd)
    np.testing.assert_allclose(normalised(W, lam), normalised(expected, lam), rtol=1e-9)


def test_edm2_weighting_is_edms_at_the_start_and_moves_with_the_learned_uncertainty():
    desc = get_literature("edm2").description(SIGMA_DATA, *RUNS[0])
    objective = objective_from_description(desc)
    lam = torch.from_numpy(lam_grid(*RUNS[0]))
    assert torch.equal(objective.adaptive.effective_factor(lam), torch.ones_like(lam))
    start = objective.effective_weighting(lam)
    with torch.no_grad():
        objective.adaptive.module.linear.bias.fill_(0.3)  # u(σ) = 0.3 everywhere
    torch.testing.assert_close(objective.effective_weighting(lam), start * math.exp(-0.3))


def test_rectified_flows_logit_normal_t_is_its_lognormal_sigma():
    """logit(t) = ln(t/(1 − t)) = ln σ for t = σ/(1 + σ): the entry's σ's, mapped to t, have
    logit(t) ~ N(0, 1) (the range σ in [1e-6, 1e6] truncates beyond 13 standard deviations)."""
    desc = get_literature("rectified_flow").description(SIGMA_DATA, 1e-6, 1e6)
    sigma = objective_from_description(desc).density.sample(
        20_000, torch.Generator().manual_seed(0)
    )
    t = (sigma / (1 + sigma)).numpy()
    assert stats.kstest(np.log(t / (1 - t)), stats.norm(0, 1).cdf).pvalue > 1e-3


# -- the registry ---------------------------------------------------------------------------


def test_names_are_the_registry_keys_with_edm_first():
    names = literature_names()
    assert names == list(LITERATURE) and names[0] == "edm"
    assert len(set(names)) == len(names) >= 7
    for name, config in LITERATURE.items():
        assert config.name == name
        assert config.title and config.notes is not None
        assert re.search(r"\b(19|20)\d\d\b", config.citation), config.citation


@pytest.mark.parametrize("name", list(LITERATURE))
def test_description_is_describe_form_and_round_trips(name):
    config = get_literature(name)
    desc = config.description(SIGMA_DATA, *RUNS[0])
    assert json.loads(json.dumps(desc)) == desc
    assert desc["parameterisation"] == config.parameterisation
    assert desc["density"]["name"] == config.density.name
    assert desc["weighting"]["name"] == config.weighting.name
    assert (desc["adaptive"] or {}).get("name") == getattr(config.adaptive, "name", None)
    for key, value in config.density.params.items():
        assert desc["density"]["params"][key] == value
    for key, value in config.weighting.params.items():
        assert desc["weighting"]["params"][key] == value
    assert (desc["sigma_data"], desc["sigma_min"], desc["sigma_max"]) == (SIGMA_DATA, *RUNS[0])
    assert objective_from_description(desc).describe() == desc


def test_registry_terms_are_read_only_and_descriptions_are_fresh_copies():
    config = get_literature("edm")
    with pytest.raises(TypeError):
        config.density.params["P_mean"] = 0.0
    desc = config.description(SIGMA_DATA, *RUNS[0])
    desc["density"]["params"]["P_mean"] = 0.0
    assert config.description(SIGMA_DATA, *RUNS[0])["density"]["params"]["P_mean"] == -1.2


def test_unknown_name_lists_the_valid_ones():
    valid = ", ".join(LITERATURE)
    with pytest.raises(
        ValueError, match=re.escape(f"unknown literature configuration 'ddpm'; valid: {valid}")
    ):
        get_literature("ddpm")


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 0.002, 80.0), r"sigma_data must be finite and > 0, but got sigma_data=0\.0"),
        ((0.5, 0.0, 80.0), r"sigma_min must be > 0, but got sigma_min=0\.0"),
        ((0.5, 1.0, 0.5), r"sigma_max must be > sigma_min=1\.0, but got sigma_max=0\.5"),
    ],
)
def test_description_checks_the_run(args, match):
    with pytest.raises(ValueError, match=match):
        get_literature("v_cosine").description(*args)


def test_no_two_literature_configurations_are_the_same_objective():
    descs = {name: c.description(SIGMA_DATA, *RUNS[0]) for name, c in LITERATURE.items()}
    names = list(descs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not same_effective_weighting(descs[a], descs[b]), (a, b)


# -- same_effective_weighting ----------------------------------------------------------------


def describe(parameterisation, density, weighting, adaptive=None, run=RUNS[0], sd=SIGMA_DATA):
    return {
        "parameterisation": parameterisation,
        "sigma_data": sd,
        "density": {"name": density[0], "params": density[1]},
        "weighting": {"name": weighting[0], "params": weighting[1]},
        "adaptive": None if adaptive is None else {"name": adaptive, "params": {}},
        "sigma_min": run[0],
        "sigma_max": run[1],
    }


EDM = describe("edm", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}))


class EDMWeightInEps(Weighting):
    """EDM's whole W moved into an ε-space weight for λ drawn uniformly (importance sampling
    from the uniform law): w(σ) = N(λ; 2.4, 2.4²)·(σ² + σd²)/σd², λ = −2 ln σ."""

    name = "edm_w_in_eps"

    def __init__(self, sigma_data: float) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float64)
        lam = -2 * torch.log(s)
        w = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) * (s**2 + self.sigma_data**2)
        return (w / self.sigma_data**2).to(sigma.dtype)

    def params(self) -> dict[str, float]:
        return {"sigma_data": self.sigma_data}


def test_edm_equals_eps_with_uniform_lam_and_edms_w_as_its_weight(monkeypatch):
    monkeypatch.setitem(weightings.WEIGHTINGS, EDMWeightInEps.name, EDMWeightInEps)
    eps = describe("eps", ("uniform", {}), (EDMWeightInEps.name, {"sigma_data": SIGMA_DATA}))
    assert same_effective_weighting(EDM, eps, rtol=1e-9)
    # the same weight with EDM's own density counts p twice: a different objective
    twice = describe(
        "eps",
        ("lognormal", {"P_mean": -1.2, "P_std": 1.2}),
        (EDMWeightInEps.name, {"sigma_data": SIGMA_DATA}),
    )
    assert not same_effective_weighting(EDM, twice)


@pytest.mark.parametrize("P_mean, P_std, k", [(-1.2, 1.2, 0.5), (0.3, 0.8, -1.0)])
def test_snr_weight_is_a_shifted_lognormal(P_mean, P_std, k):
    """N(λ; μ, s²)·e^{kλ} ∝ N(λ; μ + k·s², s²), μ = −2·P_mean, s = 2·P_std: an snr(k) weight
    on a log-normal density equals the unit weight on P_mean − 2·k·P_std², truncation too."""
    a = describe("eps", ("lognormal", {"P_mean": P_mean, "P_std": P_std}), ("snr", {"k": k}))
    shifted = {"P_mean": P_mean - 2 * k * P_std**2, "P_std": P_std}
    b = describe("eps", ("lognormal", shifted), ("unit", {}))
    assert same_effective_weighting(a, b, rtol=1e-9)
    c = describe("eps", ("lognormal", {"P_mean": P_mean, "P_std": P_std}), ("unit", {}))
    assert not same_effective_weighting(a, c)


def test_structural_equivalences_are_the_same_objective():
    cosine = ("cosine", {"shift": 1.0})
    # x0: σ²/c_out² = σ²/σd², times snr(1) = 1/σ²: a constant, as for ε with unit weight
    assert same_effective_weighting(
        describe("x0", cosine, ("snr", {"k": 1.0})),
        describe("eps", cosine, ("unit", {})),
        rtol=1e-9,
    )
    # v is EDM's preconditioning with σd = 1
    assert same_effective_weighting(
        describe("edm", cosine, ("unit", {}), sd=1.0),
        describe("v", cosine, ("unit", {})),
        rtol=1e-9,
    )
    # importance sampling changes the variance only; EDM2's uncertainty starts at u = 0
    assert same_effective_weighting(EDM, {**EDM, "adaptive": {"name": "importance", "params": {}}})
    edm2 = get_literature("edm2").description(SIGMA_DATA, *RUNS[0])
    assert same_effective_weighting(edm2, {**edm2, "adaptive": None}, rtol=1e-9)


def test_truncations_of_one_law_agree_on_the_common_range():
    wide = EDM
    narrow = describe(
        "edm", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}), run=(0.02, 10.0)
    )
    assert same_effective_weighting(wide, narrow, rtol=1e-9)
    disjoint = {**narrow, "sigma_min": 100.0, "sigma_max": 200.0}
    assert not same_effective_weighting(wide, disjoint)


def test_tolerance_separates_near_and_far_objectives():
    near = describe("edm", ("lognormal", {"P_mean": -1.2001, "P_std": 1.2}), ("unit", {}))
    assert same_effective_weighting(EDM, near)  # W's differ by < 0.1% over the range
    assert not same_effective_weighting(EDM, near, rtol=1e-5)
    eps = describe("eps", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}))
    assert not same_effective_weighting(EDM, eps)  # off by (e^{−λ} + σd²)/σd²
    full = describe("eps", ("uniform", {}), ("unit", {}))
    part = describe("eps", ("uniform", {"lam_min": 0.0}), ("unit", {}))
    assert not same_effective_weighting(full, part)  # zero on half the range


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rtol": 0.0}, r"rtol must be a real number in \(0, 1\), but got rtol=0\.0"),
        ({"rtol": float("nan")}, r"rtol must be .* rtol=nan"),
        ({"points": 1}, r"points must be an integer >= 2, but got points=1"),
        ({"points": 10.0}, r"points must be an integer >= 2, but got points=10\.0"),
    ],
)
def test_same_effective_weighting_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        same_effective_weighting(EDM, EDM, **kwargs)
