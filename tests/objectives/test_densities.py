"""Densities over λ: normalised, sampled exactly, and equal to independently written laws."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sigmatune.objectives.densities import DENSITIES, make_density

N_SAMPLES = 20_000
P_MIN = 1e-3  # KS p-value threshold, with fixed seeds


def lam_bounds(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    return -2 * math.log(sigma_max), -2 * math.log(sigma_min)


@dataclass
class Case:
    name: str
    params: dict[str, Any]
    sigma_min: float
    sigma_max: float

    @property
    def id(self) -> str:
        return f"{self.name}-{self.params}-[{self.sigma_min},{self.sigma_max}]"

    def make(self):
        return make_density(
            self.name, self.params, sigma_min=self.sigma_min, sigma_max=self.sigma_max
        )

    def reference(self) -> tuple[Any, Any, float, float]:
        """(cdf, pdf, lo, hi) of the truncated law over λ, written independently of the code."""
        lo, hi = lam_bounds(self.sigma_min, self.sigma_max)
        if self.name == "lognormal":
            mu, s = -2 * self.params.get("P_mean", -1.2), 2 * self.params.get("P_std", 1.2)
            law = stats.truncnorm((lo - mu) / s, (hi - mu) / s, loc=mu, scale=s)
            return law.cdf, law.pdf, lo, hi
        if self.name == "cosine":
            # t ~ U(0, 1), λ = −2 ln tan(πt/2) + shift is decreasing in t, so
            # P(Λ <= λ) = 1 − t(λ) with t(λ) = (2/π)·atan(exp(−(λ − shift)/2)), and
            # p(λ) = |dt/dλ| = sin(π·t(λ))/(2π).
            shift = self.params.get("shift", 0.0)

            def t_of(lam):
                return (2 / np.pi) * np.arctan(np.exp(-(np.asarray(lam) - shift) / 2))

            Z = t_of(lo) - t_of(hi)
            return (
                (lambda lam: np.clip((t_of(lo) - t_of(np.clip(lam, lo, hi))) / Z, 0, 1)),
                (lambda lam: np.sin(np.pi * t_of(lam)) / (2 * np.pi) / Z),
                lo,
                hi,
            )
        if self.name == "laplace":
            law = stats.laplace(loc=self.params.get("mu", 0.0), scale=self.params.get("b", 0.5))
            # the truncated law from scipy's, by the survival function above the centre
            # (where 1 − cdf would round to 0 in a far tail)
            if lo >= law.mean():
                Z = law.sf(lo) - law.sf(hi)
                return (
                    (lambda lam: np.clip((law.sf(lo) - law.sf(np.clip(lam, lo, hi))) / Z, 0, 1)),
                    (lambda lam: law.pdf(lam) / Z),
                    lo,
                    hi,
                )
            Z = law.cdf(hi) - law.cdf(lo)
            return (
                (lambda lam: np.clip((law.cdf(np.clip(lam, lo, hi)) - law.cdf(lo)) / Z, 0, 1)),
                (lambda lam: law.pdf(lam) / Z),
                lo,
                hi,
            )
        if self.name == "uniform":
            a, b = self.params.get("lam_min", lo), self.params.get("lam_max", hi)
            law = stats.uniform(loc=a, scale=b - a)
            return law.cdf, law.pdf, a, b
        if self.name == "piecewise":
            h = np.asarray(self.params["heights"], dtype=float)
            edges = np.linspace(lo, hi, len(h) + 1)
            cum = np.concatenate([[0.0], np.cumsum(h) / h.sum()])
            width = (hi - lo) / len(h)

            def pdf(lam):
                k = np.clip(np.floor((np.asarray(lam) - lo) / width), 0, len(h) - 1).astype(int)
                return h[k] / h.sum() / width

            return (lambda lam: np.interp(lam, edges, cum)), pdf, lo, hi
        if self.name == "wlam":
            # ln p = split·ln W interpolated linearly between 4097 equally spaced points of the
            # range (objectives.wfamily), ln W the bump: each bin's mass in closed form
            q = {"center": 0.0, "slope_low": 0.0, "slope_high": 0.0, "knee": 1.0}
            q |= {"curvature": 0.0, "split": 1.0} | self.params
            grid = np.linspace(lo, hi, 4097)
            x = grid - q["center"]
            log_w = (
                q["slope_low"] * x
                - (q["slope_low"] - q["slope_high"]) * q["knee"] * np.logaddexp(0, x / q["knee"])
                - q["curvature"] * x**2 / 2
            )
            f = q["split"] * log_w
            f = f - f.max()
            dx = grid[1] - grid[0]
            z = np.diff(f)
            with np.errstate(invalid="ignore", divide="ignore"):
                masses = np.where(
                    np.abs(z) < 1e-12,
                    np.exp(f[:-1]) * dx,
                    (np.exp(f[1:]) - np.exp(f[:-1])) * dx / z,
                )
            Z = masses.sum()
            cum = np.concatenate([[0.0], np.cumsum(masses)]) / Z

            def wlam_pdf(lam):
                return np.exp(np.interp(lam, grid, f)) / Z

            def wlam_cdf(lam):
                lam = np.clip(np.asarray(lam, dtype=float), lo, hi)
                k = np.clip(np.floor((lam - lo) / dx).astype(int), 0, len(grid) - 2)
                t = lam - grid[k]
                beta = z[k] / dx
                with np.errstate(invalid="ignore", divide="ignore"):
                    part = np.where(
                        np.abs(beta * t) < 1e-12,
                        t,
                        np.expm1(beta * t) / np.where(beta == 0, 1, beta),
                    )
                return np.clip(cum[k] + np.exp(f[k]) * part / Z, 0, 1)

            return wlam_cdf, wlam_pdf, lo, hi
        raise AssertionError(f"no reference written for density {self.name!r}")


RUN = (0.002, 80.0)
CASES = [
    Case("lognormal", {}, *RUN),
    Case("lognormal", {"P_mean": 0.4, "P_std": 0.6}, 0.05, 3.0),
    Case("lognormal", {"P_mean": 1.0, "P_std": 0.5}, *RUN),  # range mostly above the centre
    Case("lognormal", {"P_mean": 1.5, "P_std": 0.4}, 0.01, 1.0),  # far tail: mass ~1e-4
    Case("cosine", {}, *RUN),
    Case("cosine", {"shift": 1.5}, 0.02, 20.0),
    Case("cosine", {"shift": -3.0}, 0.5, 5.0),
    Case("laplace", {}, *RUN),  # Hang et al. 2024: mu = 0, b = 0.5
    Case("laplace", {"mu": 2.0, "b": 1.5}, 0.05, 3.0),  # the centre inside, range off-centre
    Case("laplace", {"mu": -3.0, "b": 0.75}, 0.01, 1.0),  # range above the centre: tail mass
    Case("uniform", {}, *RUN),
    Case("uniform", {"lam_min": -3.0, "lam_max": 5.0}, *RUN),
    Case("piecewise", {"heights": [1.0, 2.0, 3.0]}, *RUN),
    Case("piecewise", {"heights": [0.5, 4.0, 1.0, 0.1, 2.0]}, 0.01, 10.0),
    Case("piecewise", {"heights": [2.0]}, 0.1, 1.0),
    Case("wlam", {}, *RUN),  # split 1 of a flat W: uniform
    Case(
        "wlam",
        {"center": 1.4, "slope_low": -0.8, "slope_high": 0.2, "curvature": 0.17, "split": 0.6},
        *RUN,
    ),
    Case("wlam", {"center": -2.0, "slope_low": 2.5, "slope_high": -3.0, "knee": 0.2}, 0.05, 3.0),
]
IDS = [case.id for case in CASES]


def lam_of(sigma: torch.Tensor) -> np.ndarray:
    return (-2 * torch.log(sigma)).numpy()


def test_every_registered_density_has_cases():
    assert {case.name for case in CASES} == set(DENSITIES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_density_integrates_to_one_over_its_support(case):
    d = case.make()

    def p(lam: float) -> float:
        return math.exp(float(d.log_prob(torch.tensor(lam, dtype=torch.float64))))

    points = None
    if case.name == "laplace" and d.lam_min < case.params.get("mu", 0.0) < d.lam_max:
        points = [case.params.get("mu", 0.0)]  # the kink at the centre
    if case.name == "piecewise":
        points = np.linspace(d.lam_min, d.lam_max, len(case.params["heights"]) + 1)[1:-1]
    if case.name == "wlam" and d.lam_min < case.params.get("center", 0.0) < d.lam_max:
        points = [case.params.get("center", 0.0)]  # the turn of the hinge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        total, _ = integrate.quad(
            p, d.lam_min, d.lam_max, points=points, limit=500, epsabs=1e-13, epsrel=1e-11
        )
    assert total == pytest.approx(1.0, abs=1e-7)
    outside = torch.tensor([d.lam_min - 1e-3, d.lam_max + 1e-3, -1e3, 1e3], dtype=torch.float64)
    assert torch.all(d.log_prob(outside) == -math.inf)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_log_prob_and_cdf_match_the_independent_law(case):
    d = case.make()
    ref_cdf, ref_pdf, lo, hi = case.reference()
    assert (d.lam_min, d.lam_max) == pytest.approx((lo, hi), abs=1e-12)
    grid = np.linspace(lo, hi, 97)
    lam = torch.tensor(grid, dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(lam).exp().numpy(), ref_pdf(grid), rtol=1e-8)
    np.testing.assert_allclose(d.cdf(lam).numpy(), ref_cdf(grid), rtol=1e-8, atol=1e-12)
    beyond = torch.tensor([lo - 5.0, hi + 5.0], dtype=torch.float64)
    assert d.cdf(beyond).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_samples_pass_a_ks_test_against_the_independent_law(case):
    d = case.make()
    sigma = d.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1234))
    assert sigma.shape == (N_SAMPLES,) and sigma.dtype == torch.float64
    assert float(sigma.min()) >= case.sigma_min and float(sigma.max()) <= case.sigma_max
    ref_cdf, _, lo, hi = case.reference()
    lam = lam_of(sigma)
    assert lam.min() >= lo - 1e-9 and lam.max() <= hi + 1e-9
    assert stats.kstest(lam, ref_cdf).pvalue > P_MIN
    # every sample is inside the support, as log_prob sees it
    assert torch.isfinite(d.log_prob(torch.from_numpy(lam))).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_icdf_inverts_cdf(case):
    d = case.make()
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    lam = d.icdf(u)
    assert torch.all(lam[1:] >= lam[:-1])
    assert float(lam[0]) == pytest.approx(d.lam_min, abs=1e-9)
    assert float(lam[-1]) == pytest.approx(d.lam_max, abs=1e-9)
    torch.testing.assert_close(d.cdf(lam), u, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sampling_is_reproducible_with_a_generator(case):
    d = case.make()
    a = d.sample(100, generator=torch.Generator().manual_seed(7))
    b = d.sample(100, generator=torch.Generator().manual_seed(7))
    c = d.sample(100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert d.sample(0).shape == (0,)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params_rebuild_the_same_density(case):
    d = case.make()
    params = json.loads(json.dumps(d.params()))
    again = make_density(d.name, params, sigma_min=case.sigma_min, sigma_max=case.sigma_max)
    lam = torch.linspace(d.lam_min - 1, d.lam_max + 1, 101, dtype=torch.float64)
    assert torch.equal(again.log_prob(lam), d.log_prob(lam))


@pytest.mark.parametrize("P_mean, P_std", [(-1.2, 1.2), (0.5, 0.3), (-0.4, 2.0)])
def test_lognormal_gives_normal_lam_when_the_range_is_wide(P_mean, P_std):
    """λ ~ N(−2·P_mean, (2·P_std)²), checked against scipy.stats.norm (the truncation at
    σ in [1e-12, 1e12], λ in ±55, is more than 13 standard deviations away)."""
    d = make_density(
        "lognormal", {"P_mean": P_mean, "P_std": P_std}, sigma_min=1e-12, sigma_max=1e12
    )
    law = stats.norm(loc=-2 * P_mean, scale=2 * P_std)
    grid = np.linspace(-2 * P_mean - 6 * P_std, -2 * P_mean + 6 * P_std, 41)
    np.testing.assert_allclose(
        d.log_prob(torch.from_numpy(grid)).numpy(), law.logpdf(grid), rtol=1e-10, atol=1e-10
    )
    lam = lam_of(d.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0)))
    assert stats.kstest(lam, law.cdf).pvalue > P_MIN
    # and ln σ ~ N(P_mean, P_std²) directly, EDM's form
    assert stats.kstest(-lam / 2, stats.norm(loc=P_mean, scale=P_std).cdf).pvalue > P_MIN


@pytest.mark.parametrize("sigma_min, sigma_max", [(1e-8, 1e8), RUN])
def test_cosine_zero_is_the_law_of_lam_under_the_cosine_schedule(sigma_min, sigma_max):
    """Monte Carlo: t ~ U(0, 1), λ = −2 ln tan(πt/2), kept when inside the run's range (the
    truncated law is the conditional one); two-sample KS against Cosine(0).sample."""
    lo, hi = lam_bounds(sigma_min, sigma_max)
    t = np.random.default_rng(0).uniform(size=N_SAMPLES + 2000)
    lam_mc = -2 * np.log(np.tan(np.pi * t / 2))
    lam_mc = lam_mc[(lam_mc >= lo) & (lam_mc <= hi)][:N_SAMPLES]
    d = make_density("cosine", {"shift": 0.0}, sigma_min=sigma_min, sigma_max=sigma_max)
    lam = lam_of(d.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0)))
    assert stats.ks_2samp(lam, lam_mc).pvalue > P_MIN


@pytest.mark.parametrize("mu, b", [(0.0, 0.5), (1.5, 0.75)])
def test_laplace_is_the_law_of_lam_under_hang_et_al_schedule(mu, b):
    """Monte Carlo from the paper's schedule (Hang et al. 2024, §2): t ~ U(0, 1),
    λ = mu − b·sgn(0.5 − t)·ln(1 − 2|t − 0.5|), on a range wide enough to hold every draw;
    two-sample KS against Laplace(mu, b).sample, and the tails' halves at mu."""
    t = np.random.default_rng(0).uniform(size=N_SAMPLES)
    lam_mc = mu - b * np.sign(0.5 - t) * np.log(1 - 2 * np.abs(t - 0.5))
    d = make_density("laplace", {"mu": mu, "b": b}, sigma_min=1e-8, sigma_max=1e8)
    assert lam_mc.min() > d.lam_min and lam_mc.max() < d.lam_max
    lam = lam_of(d.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0)))
    assert stats.ks_2samp(lam, lam_mc).pvalue > P_MIN
    assert float(d.cdf(torch.tensor(mu, dtype=torch.float64))) == pytest.approx(0.5, abs=1e-12)


def test_piecewise_bin_frequencies_match_heights():
    """Inverse-CDF sampling of the piecewise law: each bin gets n·h_k/Σh samples, within
    4 binomial standard errors, and within a bin the λ's are uniform (KS)."""
    heights = [0.5, 4.0, 1.0, 0.1, 2.0, 3.0]
    d = make_density("piecewise", {"heights": heights}, sigma_min=0.002, sigma_max=80.0)
    lam = lam_of(d.sample(N_SAMPLES, generator=torch.Generator().manual_seed(3)))
    lo, hi = lam_bounds(0.002, 80.0)
    width = (hi - lo) / len(heights)
    bins = np.clip(np.floor((lam - lo) / width), 0, len(heights) - 1).astype(int)
    counts = np.bincount(bins, minlength=len(heights))
    # the normaliser of heights over λ: Σ h_k·width, so the bin mass is h_k·width/normaliser
    expected = np.array(heights) * width / (sum(heights) * width)
    se = np.sqrt(N_SAMPLES * expected * (1 - expected))
    assert np.all(np.abs(counts - N_SAMPLES * expected) < 4 * se), (counts, N_SAMPLES * expected)
    assert stats.chisquare(counts, N_SAMPLES * expected).pvalue > P_MIN
    in_bin = (lam[bins == 1] - (lo + width)) / width
    assert stats.kstest(in_bin, stats.uniform().cdf).pvalue > P_MIN


def test_piecewise_cdf_and_icdf_are_exact_inverses():
    d = make_density(
        "piecewise", {"heights": [0.5, 4.0, 1.0, 0.1, 2.0]}, sigma_min=0.01, sigma_max=10.0
    )
    u = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(d.cdf(d.icdf(u)), u, rtol=0, atol=1e-13)
    lam = torch.linspace(d.lam_min, d.lam_max, 5001, dtype=torch.float64)
    torch.testing.assert_close(d.icdf(d.cdf(lam)), lam, rtol=0, atol=1e-12)


ERRORS = [
    ("lognormal", {"P_std": -1.0}, RUN, r"P_std must be > 0, but got P_std=-1\.0"),
    ("lognormal", {"P_std": 0.0}, RUN, r"P_std.*P_std=0\.0"),
    ("lognormal", {"P_mean": float("nan")}, RUN, r"P_mean must be finite.*P_mean=nan"),
    ("lognormal", {"P_mean": 12.0, "P_std": 0.5}, RUN, r"mass .* must be at least"),
    ("cosine", {"shift": float("inf")}, RUN, r"shift must be finite.*shift=inf"),
    ("laplace", {"b": 0.0}, RUN, r"b must be > 0, but got b=0\.0"),
    ("laplace", {"b": -0.5}, RUN, r"b must be > 0, but got b=-0\.5"),
    ("laplace", {"b": float("nan")}, RUN, r"b must be finite, but got b=nan"),
    ("laplace", {"mu": "0"}, RUN, r"mu must be a finite real number.*mu='0'"),
    ("laplace", {"mu": 40.0, "b": 0.5}, RUN, r"laplace\(mu=40\.0, b=0\.5\) puts mass .* at least"),
    ("laplace", {"scale": 1.0}, RUN, r"unknown parameter 'scale' for density 'laplace'; valid: mu"),
    ("cosine", {"shift": "a"}, RUN, r"shift must be a finite real number.*shift='a'"),
    (
        "uniform",
        {"lam_min": 2.0, "lam_max": 1.0},
        RUN,
        r"lam_max must be in \(lam_min=2\.0.*"
        r"lam_max=1\.0",
    ),
    ("uniform", {"lam_min": -20.0}, RUN, r"lam_min must be in \[-8\.76.*lam_min=-20\.0"),
    ("uniform", {"lam_max": 30.0}, RUN, r"lam_max must be in .*12\.4.*lam_max=30\.0"),
    ("piecewise", {"heights": []}, RUN, r"heights must have K >= 1 entries, but got heights=\[\]"),
    (
        "piecewise",
        {"heights": [1.0, -1.0]},
        RUN,
        r"heights.*> 0|heights.*\(0\.0, inf\).*"
        r"heights\[1\]=-1\.0",
    ),
    ("piecewise", {"heights": [1.0, 0.0]}, RUN, r"heights\[1\]=0\.0"),
    ("piecewise", {"heights": [1.0, float("inf")]}, RUN, r"heights\[1\]=inf"),
    ("piecewise", {"heights": [float("nan")]}, RUN, r"heights\[0\]=nan"),
    ("piecewise", {"heights": 3.0}, RUN, r"heights must be a sequence.*heights=3\.0"),
    ("piecewise", {}, RUN, r"density 'piecewise' needs the parameter 'heights'"),
    (
        "lognormal",
        {"P_avg": 1.0},
        RUN,
        r"unknown parameter 'P_avg' for density 'lognormal'; "
        r"valid: P_mean, P_std",
    ),
    ("foo", {}, RUN, r"unknown density 'foo'; valid: cosine, laplace, lognormal, piecewise, unif"),
    ("lognormal", {}, (0.0, 80.0), r"sigma_min must be > 0, but got sigma_min=0\.0"),
    ("cosine", {}, (-1.0, 80.0), r"sigma_min must be > 0, but got sigma_min=-1\.0"),
    ("uniform", {}, (1.0, 1.0), r"sigma_max must be > sigma_min=1\.0, but got sigma_max=1\.0"),
    ("piecewise", {"heights": [1.0]}, (0.002, float("inf")), r"sigma_max must be finite"),
]


@pytest.mark.parametrize("name, params, run, match", ERRORS, ids=[e[3][:40] for e in ERRORS])
def test_bad_names_and_parameters_raise_value_errors(name, params, run, match):
    with pytest.raises(ValueError, match=match):
        make_density(name, params, sigma_min=run[0], sigma_max=run[1])


def test_sample_rejects_a_negative_count():
    d = make_density("uniform", {}, sigma_min=0.1, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"n must be an integer >= 0, but got n=-1"):
        d.sample(-1)
