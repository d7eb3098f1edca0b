"""objectives.curves: a training objective tabulated over lam, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.objectives import curves as F

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def test_lam_grid_spans_the_run_and_refuses_a_bad_range():
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 11)
    assert lam.dtype == torch.float64 and lam.shape == (11,)
    assert float(lam[0]) == pytest.approx(-2 * math.log(SIGMA_MAX))
    assert float(lam[-1]) == pytest.approx(-2 * math.log(SIGMA_MIN))
    with pytest.raises(ValueError, match="sigma_min"):
        F.lam_grid(1.0, 0.5)


def _desc(parameterisation, density, weighting, sigma_data=0.5):
    return {
        "parameterisation": parameterisation,
        "sigma_data": sigma_data,
        "density": {"name": density[0], "params": density[1]},
        "weighting": {"name": weighting[0], "params": weighting[1]},
        "adaptive": None,
        "sigma_min": SIGMA_MIN,
        "sigma_max": SIGMA_MAX,
    }


def test_edm_defaults_weighting_matches_the_closed_form():
    # docs/development.md: for EDM's defaults W(lam) = N(lam; 2.4, 2.4^2) (e^-lam + sd^2)/sd^2,
    # up to the truncation constant; p_lam = N(lam; 2.4, 2.4^2) up to the same constant.
    sd = 0.5
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 101)
    c = F.weighting_curves(
        _desc("edm", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}), sd), lam
    )
    normal = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    ratio_p = c["p_lam"] / normal
    ratio_W = c["W"] / (normal * (torch.exp(-lam) + sd**2) / sd**2)
    assert torch.allclose(ratio_p, ratio_p[50].expand_as(ratio_p), rtol=1e-9)
    assert torch.allclose(ratio_W, ratio_W[50].expand_as(ratio_W), rtol=1e-9)
    # the truncated normal keeps most of its mass inside [lam_min, lam_max] here
    assert 1.0 <= float(ratio_p[0]) < 1.1
    assert torch.allclose(c["w"], torch.ones_like(lam))
    assert torch.allclose(c["sigma"], torch.exp(-lam / 2))


def test_eps_unit_weighting_is_the_density_and_normalised_w_has_area_one():
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 201)
    c = F.weighting_curves(_desc("eps", ("cosine", {"shift": 1.0}), ("unit", {})), lam)
    assert torch.allclose(c["W"], c["p_lam"], rtol=1e-9)  # c_out = -sigma: W = p_lam
    # p_lam of cosine: sech((lam - shift)/2) / (2 pi), truncated: a constant ratio
    ratio = c["p_lam"] / (1 / torch.cosh((lam - 1.0) / 2) / (2 * math.pi))
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert float(torch.trapezoid(c["W_normalised"], lam)) == pytest.approx(1.0, rel=1e-12)
