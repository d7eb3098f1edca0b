"""Parameterisations: hand-written closed forms and the targets each one makes F predict."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.objectives.parameterisations import (
    PARAMETERISATIONS,
    Coefficients,
    get_parameterisation,
)

SIGMA_DATA = 0.5
SIGMAS = [0.002, 0.1, 0.5, 1.0, 3.0, 80.0]


def closed_form(name: str, s: float, sd: float) -> tuple[float, float, float, float]:
    """(c_skip, c_out, c_in, c_noise) written out with `math`, from docs/development.md / the
    papers."""
    if name == "edm":  # Karras et al. 2022, Table 1
        r = math.sqrt(s * s + sd * sd)
        return sd * sd / (s * s + sd * sd), s * sd / r, 1 / r, math.log(s) / 4
    if name == "v":  # edm with sigma_data = 1
        r = math.sqrt(s * s + 1)
        return 1 / (s * s + 1), s / r, 1 / r, math.log(s) / 4
    if name == "eps":
        return 1.0, -s, 1 / math.sqrt(s * s + sd * sd), math.log(s) / 4
    if name == "x0":
        return 0.0, sd, 1 / math.sqrt(s * s + sd * sd), math.log(s) / 4
    if name == "flow":
        return 1 / (1 + s), -s / (1 + s), 1 / (1 + s), math.log(s) / 4
    raise AssertionError(f"no closed form written for {name!r}")


def physical_target(
    name: str, x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor, sd: float
) -> torch.Tensor:
    """What F is meant to predict, derived by hand for each parameterisation."""
    if name == "edm":  # EDM eq. 8 expanded: (s·x0/sd − sd·ε)/sqrt(s² + sd²)
        return (s * x0 / sd - sd * eps) / torch.sqrt(s**2 + sd**2)
    if name == "v":  # −(α·ε − σ_VP·x0), α = 1/sqrt(1+s²), σ_VP = s/sqrt(1+s²)
        return -(eps - s * x0) / torch.sqrt(1 + s**2)
    if name == "eps":
        return eps
    if name == "x0":
        return x0 / sd
    if name == "flow":  # rectified-flow velocity
        return eps - x0
    raise AssertionError(f"no target written for {name!r}")


def test_registry_holds_the_five_parameterisations():
    assert set(PARAMETERISATIONS) == {"edm", "v", "eps", "x0", "flow"}


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
@pytest.mark.parametrize("sigma_data", [SIGMA_DATA, 1.3])
def test_coefficients_match_closed_forms(name, sigma_data):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    c = get_parameterisation(name)(sigma, sigma_data)
    assert isinstance(c, Coefficients)
    for i, s in enumerate(SIGMAS):
        expected = closed_form(name, s, sigma_data)
        got = [float(t[i]) for t in c]
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (name, s)


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
def test_a_few_values_by_hand(name):
    """sigma = 1 with sigma_data = 0.5, numbers worked out on paper."""
    c = get_parameterisation(name)(torch.tensor([1.0], dtype=torch.float64), 0.5)
    got = [float(t[0]) for t in c]
    expected = {
        "edm": [0.2, 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25), 0.0],
        "v": [0.5, 1 / math.sqrt(2), 1 / math.sqrt(2), 0.0],
        "eps": [1.0, -1.0, 1 / math.sqrt(1.25), 0.0],
        "x0": [0.0, 0.5, 1 / math.sqrt(1.25), 0.0],
        "flow": [0.5, -0.5, 0.5, 0.0],
    }[name]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
def test_denoiser_of_the_physical_target_returns_x0(name):
    """D = c_skip·x + c_out·F_target is x0, with F_target the quantity the parameterisation is
    meant to predict (derived by hand, not the code's (x0 − c_skip·x)/c_out)."""
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    x0 = torch.randn(len(SIGMAS), 7, generator=g, dtype=torch.float64)
    eps = torch.randn(len(SIGMAS), 7, generator=g, dtype=torch.float64)
    s = sigma[:, None]
    c_skip, c_out, _, _ = (t[:, None] for t in get_parameterisation(name)(sigma, SIGMA_DATA))
    x = x0 + s * eps
    target = physical_target(name, x0, eps, s, SIGMA_DATA)
    torch.testing.assert_close(c_skip * x + c_out * target, x0, rtol=1e-12, atol=1e-12)
    # and the generic target formula agrees with the hand-derived one
    torch.testing.assert_close((x0 - c_skip * x) / c_out, target, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficients_are_shaped_and_typed_like_sigma(name, dtype):
    sigma = torch.rand(3, 4, dtype=dtype) + 0.1
    for t in get_parameterisation(name)(sigma, SIGMA_DATA):
        assert t.shape == sigma.shape and t.dtype == dtype
        assert torch.isfinite(t).all()


def test_unknown_parameterisation_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown parameterisation 'foo'; valid: edm, eps, "
        r"flow, v, x0",
    ):
        get_parameterisation("foo")
