"""The effective-weighting family (objectives.wfamily), its wlam density and weighting, and the
map from the literature onto it (objectives.wlam). Closed forms are written out here, apart
from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from sigmatune.objectives import wlam
from sigmatune.objectives.curves import lam_grid, weighting_curves
from sigmatune.objectives.densities import make_density
from sigmatune.objectives.literature import LITERATURE
from sigmatune.objectives.loss import DiffusionObjective, objective_from_description
from sigmatune.objectives.weightings import make_weighting

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
LAM_MIN, LAM_MAX = -2 * math.log(SIGMA_MAX), -2 * math.log(SIGMA_MIN)
RUN = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}
# members of the family by their papers' formulas (objectives/literature.py's table)
EXACT = {"edm", "edm2", "rectified_flow", "v_cosine", "sigmoid", "eps_cosine"}


def bump(lam, center, slope_low, slope_high, knee, curvature):
    """ln W of the bump, from its definition (numpy)."""
    x = np.asarray(lam, dtype=np.float64) - center
    return (
        slope_low * x
        - (slope_low - slope_high) * knee * np.logaddexp(0.0, x / knee)
        - curvature * x**2 / 2
    )


def normalised(W, lam):
    return W / np.trapezoid(W, lam)


def coefficient_factor(parameterisation, sigma, sigma_data):
    """c_out(σ)²/σ² from Karras et al. 2022, Table 1 (and the flow/x0 variants)."""
    return {
        "edm": sigma_data**2 / (sigma**2 + sigma_data**2),
        "v": 1 / (sigma**2 + 1),
        "eps": np.ones_like(sigma),
        "x0": sigma_data**2 / sigma**2,
        "flow": 1 / (1 + sigma) ** 2,
    }[parameterisation]


@pytest.fixture(scope="module")
def literature_fits():
    out = {}
    for name, cfg in LITERATURE.items():
        desc = cfg.description(SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
        out[name] = desc, wlam.fit_description(desc)
    return out


@pytest.mark.parametrize("name", list(LITERATURE))
def test_every_literature_configuration_is_a_point_of_the_family(name, literature_fits):
    """The fitted bump's W (by the formula above, on a finer grid than the fit's) is within
    the stated L1 tolerance of the configuration's W (by its own density and weighting); the
    six whose papers' W is of the family's form are reproduced to rounding."""
    desc, fit = literature_fits[name]
    lam = np.linspace(LAM_MIN, LAM_MAX, 2001)
    W_lit = weighting_curves(desc, torch.tensor(lam))["W"].numpy()
    log_W = bump(lam, **fit.shape)
    W_fit = np.exp(log_W - log_W.max())
    l1 = np.trapezoid(np.abs(normalised(W_fit, lam) - normalised(W_lit, lam)), lam)
    assert l1 <= wlam.BUMP_TOLERANCE_L1
    assert abs(l1 - fit.l1) < 0.01  # the reported distance is the measured one
    if name in EXACT:
        assert l1 < 1e-5
    assert 0.0 <= fit.split <= 1.0


def test_edm_maps_to_its_closed_form_point():
    """EDM: N(λ; 2.4, 2.4²)·(1 + e^{−(λ−λd)}), λd = −2 ln σd, is the bump with the turn at λd,
    unit knee, curvature 1/2.4² and slopes (2.4 − λd)/2.4² − 1 and (2.4 − λd)/2.4²."""
    fit = wlam.fit_description(LITERATURE["edm"].description(SIGMA_DATA, SIGMA_MIN, SIGMA_MAX))
    lam_d = -2 * math.log(SIGMA_DATA)
    tilt = (2.4 - lam_d) / 2.4**2
    expected = {
        "center": lam_d,
        "slope_low": tilt - 1,
        "slope_high": tilt,
        "knee": 1.0,
        "curvature": 1 / 2.4**2,
    }
    for key, value in expected.items():
        assert fit.shape[key] == pytest.approx(value, abs=1e-5), key
    # its sampling density, N(λ; 2.4, 2.4²), as a shape of its own: a Gaussian without tilt
    sampling = wlam.fit_description(
        LITERATURE["edm"].description(SIGMA_DATA, SIGMA_MIN, SIGMA_MAX), split="shape"
    ).sampling
    gaussian = {"center": 2.4, "slope_low": 0.0, "slope_high": 0.0, "knee": 1.0}
    for key, value in {**gaussian, "curvature": 1 / 2.4**2, "split": 1.0}.items():
        assert sampling[key] == pytest.approx(value, abs=1e-5), key


def test_a_weighting_with_two_bumps_is_not_a_point():
    """The tolerance can fail: a bimodal W is far from every member."""
    lam = lam_grid(SIGMA_MIN, SIGMA_MAX)
    W = torch.exp(-0.5 * (lam + 4) ** 2) + torch.exp(-0.5 * (lam - 6) ** 2)
    shape = wlam.fit_shape(W, lam)
    log_W = torch.tensor(bump(lam.numpy(), **shape))
    l1, _ = wlam.curve_distance(torch.exp(log_W - log_W.max()), W, lam)
    assert l1 > wlam.BUMP_TOLERANCE_L1


def test_the_piecewise_shape_fits_a_piecewise_log_weighting_exactly():
    lam = lam_grid(SIGMA_MIN, SIGMA_MAX)
    knots = np.linspace(LAM_MIN, LAM_MAX, 5)
    values = np.array([-6.0, -1.0, 0.0, -3.0, -9.0])
    W = torch.tensor(np.exp(np.interp(lam.numpy(), knots, values)))
    shape = wlam.fit_shape(W, lam, "piecewise", 5)
    assert shape["log_values"] == pytest.approx(values.tolist(), abs=1e-5)


SHAPES = [
    {"center": 1.0, "slope_low": -0.8, "slope_high": 0.2, "knee": 1.0, "curvature": 0.17},
    {"center": -2.0, "slope_low": 1.5, "slope_high": -2.5, "knee": 0.3, "curvature": 0.0},
    {"center": 3.0, "slope_low": 0.0, "slope_high": -1.0, "knee": 2.0, "curvature": 0.5},
]


@pytest.mark.parametrize("parameterisation", ["edm", "eps", "v", "x0", "flow"])
@pytest.mark.parametrize("split", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
def test_the_objective_of_a_point_has_the_points_W(parameterisation, split, shape_index):
    """DiffusionObjective.effective_weighting (p_λ·w·σ²/c_out²) of the produced objective is
    the bump's formula up to one constant, at every λ of a grid unrelated to the table's."""
    shape = SHAPES[shape_index]
    desc = wlam.point_description(shape, split, parameterisation, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    objective = objective_from_description(desc)
    lam = np.linspace(LAM_MIN + 1e-3, LAM_MAX - 1e-3, 997)
    W = objective.effective_weighting(torch.tensor(lam)).numpy()
    expected = np.exp(bump(lam, **shape))
    ratio = W / expected
    assert np.allclose(ratio, ratio[0], rtol=1e-7)


@pytest.mark.parametrize("split", [0.0, 0.3, 1.0])
def test_the_split_puts_W_to_the_power_split_into_the_density(split):
    """p_λ ∝ W^split (its CDF against quadrature of the formula), the weight carries
    W^(1−split)·c_out²/σ² (to the table's interpolation, 1e-4), and E_p[w] = 1."""
    shape = SHAPES[0]
    density = make_density("wlam", {**shape, "split": split}, **RUN)
    Z = quad(lambda x: math.exp(split * bump(x, **shape)), LAM_MIN, LAM_MAX, limit=200)[0]
    for point in (-5.0, 0.0, 1.0, 7.5):
        mass = quad(lambda x: math.exp(split * bump(x, **shape)), LAM_MIN, point, limit=200)[0]
        assert float(density.cdf(torch.tensor([point]))) == pytest.approx(mass / Z, abs=1e-6)
    weighting = make_weighting(
        "wlam",
        {**shape, "split": split, "parameterisation": "edm", "sigma_data": SIGMA_DATA},
        **RUN,
    )
    lam = np.linspace(LAM_MIN, LAM_MAX, 513)
    sigma = np.exp(-lam / 2)
    w = weighting(torch.tensor(sigma)).numpy()
    expected = np.exp((1 - split) * bump(lam, **shape)) * coefficient_factor(
        "edm", sigma, SIGMA_DATA
    )
    ratio = w / expected
    assert np.allclose(ratio, ratio[0], rtol=1e-4)
    p = density.log_prob(torch.tensor(lam)).exp().numpy()
    assert np.trapezoid(p * w, lam) == pytest.approx(1.0, rel=1e-3)


def test_split_zero_is_uniform_sampling_and_split_one_with_eps_is_a_unit_weight():
    shape = SHAPES[1]
    uniform = make_density("wlam", {**shape, "split": 0.0}, **RUN)
    lam = torch.linspace(LAM_MIN, LAM_MAX, 101, dtype=torch.float64)
    assert torch.allclose(
        uniform.log_prob(lam).exp(), torch.full_like(lam, 1 / (LAM_MAX - LAM_MIN))
    )
    w = make_weighting(
        "wlam", {**shape, "split": 1.0, "parameterisation": "eps", "sigma_data": 1.0}, **RUN
    )
    values = w(torch.exp(-lam / 2))  # W/p: constant to the table's interpolation of ln W
    assert torch.allclose(values, values[0].expand_as(values), rtol=1e-4)


def test_samples_follow_the_density():
    density = make_density("wlam", {**SHAPES[2], "split": 0.7}, **RUN)
    sigma = density.sample(20_000, torch.Generator().manual_seed(0))
    lam = (-2 * torch.log(sigma)).sort().values
    empirical = torch.arange(1, lam.numel() + 1, dtype=torch.float64) / lam.numel()
    ks = (density.cdf(lam) - empirical).abs().max().item()
    assert ks < 0.015  # 1.36/sqrt(20000) = 0.0096 at the 5% level
    assert torch.allclose(
        density.cdf(density.icdf(torch.tensor([0.1, 0.5, 0.9]))),
        torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
        atol=1e-12,
    )


def test_fit_split_recovers_known_powers():
    lam = lam_grid(SIGMA_MIN, SIGMA_MAX)
    log_W = torch.tensor(bump(lam.numpy(), **SHAPES[0]))
    for a in (0.0, 0.35, 1.0):
        p = torch.exp(a * log_W)
        assert wlam.fit_split(p / torch.trapezoid(p, lam), log_W, lam) == pytest.approx(a, abs=1e-6)


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"split": 1.5}, "split must be in [0, 1]"),
        ({"knee": 0.0}, "knee must be > 0"),
        ({"slope_low": 9.0}, "slope_low must be in [-8.0, 8.0]"),
        ({"curvature": -1.0}, "curvature must be >= 0"),
        ({"log_values": [0.0, -1.0], "center": 1.0}, "log_values (the piecewise shape) excludes"),
        ({"log_values": [0.0]}, "at least 2 entries"),
        ({"width": 1.0}, "unknown parameter 'width'"),
    ],
)
def test_bad_parameters_name_the_key_and_value(params, needle):
    with pytest.raises(ValueError) as error:
        make_density("wlam", params, **RUN)
    assert needle in str(error.value)


def test_the_wlam_weighting_refuses_another_density_or_parameterisation():
    shape = {**SHAPES[0], "split": 0.5}
    density = make_density("wlam", shape, **RUN)
    weighting = make_weighting(
        "wlam", {**shape, "parameterisation": "edm", "sigma_data": SIGMA_DATA}, **RUN
    )
    with pytest.raises(ValueError, match="parameterisation='edm'"):
        DiffusionObjective("eps", density, weighting, SIGMA_DATA)
    with pytest.raises(ValueError, match="sigma_data=0.5"):
        DiffusionObjective("edm", density, weighting, 1.0)
    other = make_density("wlam", {**shape, "split": 0.6}, **RUN)
    with pytest.raises(ValueError, match="needs the density 'wlam'"):
        DiffusionObjective("edm", other, weighting, SIGMA_DATA)
    DiffusionObjective("edm", density, weighting, SIGMA_DATA)  # the matching one builds


def test_a_point_trains_a_finite_loss():
    desc = wlam.point_description(SHAPES[0], 0.5, "edm", SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    objective = objective_from_description(desc)
    generator = torch.Generator().manual_seed(0)
    sigma, factor = objective.sample_sigma(256, generator)
    x0 = torch.randn(256, 4, generator=generator) * SIGMA_DATA
    noise = torch.randn(256, 4, generator=generator)
    net = torch.nn.Linear(4, 4).double()
    loss = objective.loss(lambda x, c: net(x.double()).to(x), x0, sigma, noise, factor)
    assert torch.isfinite(loss).all() and loss.mean() > 0


@pytest.mark.parametrize("name", list(LITERATURE))
def test_every_literature_sampling_density_is_a_shape_of_the_family(name):
    """With the sampling density a member of its own (split = "shape"), each configuration's
    p_λ is reproduced: exactly but for the Laplace schedule's (its sharp peak, within 3%)."""
    desc = LITERATURE[name].description(SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    fit = wlam.fit_description(desc, split="shape")
    lam = np.linspace(LAM_MIN, LAM_MAX, 2001)
    p_lit = weighting_curves(desc, torch.tensor(lam))["p_lam"].numpy()
    q = {k: v for k, v in fit.sampling.items() if k != "split"}
    log_p = bump(lam, **q)
    p_fit = np.exp(log_p - log_p.max())
    l1 = np.trapezoid(np.abs(normalised(p_fit, lam) - normalised(p_lit, lam)), lam)
    assert l1 < (0.03 if name == "laplace" else 1e-5)
    assert fit.sampling["split"] == 1.0 and abs(l1 - fit.sampling_l1) < 0.01


@pytest.mark.parametrize("parameterisation", ["edm", "eps", "flow"])
def test_a_point_with_its_own_sampling_density_has_the_points_W_and_that_p(parameterisation):
    shape, sampling = SHAPES[0], {**SHAPES[2], "split": 1.0}
    desc = wlam.point_description(
        shape, 1.0, parameterisation, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, sampling=sampling
    )
    objective = objective_from_description(desc)
    lam = np.linspace(LAM_MIN + 1e-3, LAM_MAX - 1e-3, 997)
    W = objective.effective_weighting(torch.tensor(lam)).numpy()
    ratio = W / np.exp(bump(lam, **shape))
    assert np.allclose(ratio, ratio[0], rtol=1e-7)
    p = objective.density.log_prob(torch.tensor(lam)).exp().numpy()
    ratio_p = p / np.exp(bump(lam, **SHAPES[2]))
    assert np.allclose(ratio_p, ratio_p[0], rtol=1e-4)  # ln p interpolated on 4097 points
    assert wlam.point_of_description(desc) == (shape, 1.0, sampling)


def test_a_sampling_density_excludes_a_power_split():
    with pytest.raises(ValueError, match="split must be 1 when the sampling density is given"):
        wlam.point_description(
            SHAPES[0], 0.5, "eps", SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, sampling={"split": 1.0}
        )
    with pytest.raises(ValueError, match="sampling must be the params of a 'wlam' density"):
        make_weighting("wlam", {**SHAPES[0], "sampling": 3.0}, **RUN)
