"""A training objective tabulated over logSNR: ``p_lam``, ``w`` and the effective ``W``.

``W(lam) = p_lam(lam) * w(sigma) * sigma^2 / c_out(sigma)^2`` is the eps-space weight per unit
lam (Kingma & Gao 2023, eq. 9 convention; ``objectives.loss.DiffusionObjective.
effective_weighting``): the part of an objective that decides what it optimises, whatever
split into ``p`` and ``w`` produced it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from sigmatune.objectives.densities import make_density
from sigmatune.objectives.loss import objective_from_description
from sigmatune.objectives.weightings import make_weighting

LAM_POINTS = 161


def lam_grid(sigma_min: float, sigma_max: float, points: int = LAM_POINTS) -> torch.Tensor:
    """``points`` logSNR values from ``lam_min = -2 ln sigma_max`` to ``lam_max = -2 ln
    sigma_min`` (float64)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, but got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    return torch.linspace(
        -2 * math.log(sigma_max), -2 * math.log(sigma_min), points, dtype=torch.float64
    )


def weighting_curves(desc: Mapping[str, Any], lam: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tabulate a training weighting (a ``DiffusionObjective.describe()`` dict) over ``lam``.

    Returns float64 tensors shaped like ``lam``: ``sigma = exp(-lam/2)``; ``p_lam``, the
    noise-level density per unit lam (``p_lam = p_sigma * sigma / 2``); ``w``, the loss weight in
    the parameterisation's own space; ``W``, the effective eps-space weight per unit lam;
    ``W_normalised``, ``W`` divided by its trapezoidal area over ``lam``. An adaptive mechanism
    enters ``W`` in its initial state (its learned state is not part of the description).
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    sigma_min, sigma_max = float(desc["sigma_min"]), float(desc["sigma_max"])
    density = make_density(
        desc["density"]["name"],
        dict(desc["density"].get("params") or {}),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )
    weighting = make_weighting(
        desc["weighting"]["name"],
        dict(desc["weighting"].get("params") or {}),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )
    objective = objective_from_description(dict(desc))
    sigma = torch.exp(-lam / 2)
    with torch.no_grad():
        p_lam = density.log_prob(lam).exp().to(torch.float64)
        w = weighting(sigma).to(torch.float64)
        W = objective.effective_weighting(lam).to(torch.float64)
    area = torch.trapezoid(W, lam)
    W_normalised = W / area if torch.isfinite(area) and area > 0 else torch.full_like(W, math.nan)
    return {
        "lam": lam,
        "sigma": sigma,
        "p_lam": p_lam,
        "w": w,
        "W": W,
        "W_normalised": W_normalised,
    }
