"""objectives.distances against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.objectives.distances import sliced_wasserstein


def test_shifted_cloud_gives_the_projected_shift():
    """b = a + t: every 1-D projection moves by <t, theta>, so SW_2^2 = E[<t, theta>^2] =
    |t|^2 / d for theta uniform on the sphere in d dimensions."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(a, a + t, num_projections=20_000)
    assert sw == pytest.approx(3.0 / math.sqrt(4), rel=0.02)


def test_scaled_gaussian_in_one_dimension():
    """W_2 between N(0, 1) and N(0, s^2) in 1-D is |1 - s|; with matched quantiles exactly."""
    q = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)
    z = math.sqrt(2) * torch.erfinv(2 * q - 1)
    sw = sliced_wasserstein(z[:, None], 3 * z[:, None].flip(0), num_projections=8)
    assert sw == pytest.approx(2 * float(z.pow(2).mean().sqrt()), rel=1e-12)


def test_same_cloud_in_another_order_is_zero_and_errors_name_the_sizes():
    a = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(a, a[torch.randperm(100)]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="100 and 99"):
        sliced_wasserstein(a, a[:99])
    with pytest.raises(ValueError, match="3 and 2"):
        sliced_wasserstein(a, a[:, :2])
