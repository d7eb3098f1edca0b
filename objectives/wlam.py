"""Training objectives as points of the effective-weighting family, and back.

A point of the outer "weighting" space is ``(W, split, parameterisation)``: ``W`` a member of
``objectives.wfamily`` (the bump's five numbers, or a piecewise ``log_values``); the split of
it between the sampling density and the loss weight (the variance choice), either a power
``split`` in [0, 1] (``p_λ ∝ W^split``, the weight carrying ``W^{1−split}``) or a sampling
density ``p`` that is a member of the family itself (``sampling``; the weight is ``W/p``);
and the parameterisation F is trained in. :func:`point_description` turns a point into a
``DiffusionObjective.describe()`` dict (the ``wlam`` density and weighting) whose effective
weighting is exactly ``W``. :func:`fit_description` goes the other way: the point nearest to
any described objective (a literature configuration, say): ``W`` fitted in log space on the
run's λ grid, and the objective's ``p_λ`` either by the nearest power of ``W`` (L1) or by a
member of its own. :func:`curve_distance` says how near (the L1 distance of the two
normalised curves, between 0 and 2, and the largest relative difference where the second is
above 1e-3 of its peak).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sigmatune.objectives.curves import lam_grid, weighting_curves
from sigmatune.objectives.densities import lam_range
from sigmatune.objectives.loss import objective_from_description
from sigmatune.objectives.wfamily import (
    BUMP_BOUNDS,
    BUMP_KEYS,
    LOG_VALUE_BOUNDS,
    SHAPES,
    make_shape,
)

__all__ = [
    "BUMP_TOLERANCE_L1",
    "SPLITS",
    "Fit",
    "curve_distance",
    "fit_description",
    "fit_shape",
    "fit_split",
    "point_description",
    "point_of_description",
]

# Every literature configuration lies within this L1 distance of its fitted bump (normalised
# W over the run's λ range; 2 is disjoint). EDM, EDM2, rectified flow, v-cosine, sigmoid and
# ε-cosine are exact members; min-SNR-5 (two turns: sech's and min(1, 5e^{−λ})'s) and the
# Laplace schedule (a sharp and a smooth turn at λ = 0) are within 0.06.
BUMP_TOLERANCE_L1 = 0.08
_DIGITS = 6  # fitted numbers are rounded, so that one W has one set of params
_SIGNIFICANT = 1e-3  # maxrel is taken where W is above this fraction of its peak
# how a point splits W between p and w: p ∝ W^split ("power"), or p a member of its own
SPLITS = ("power", "shape")


@dataclass(frozen=True)
class Fit:
    """A point fitted to a described objective: W's shape params, the split (or, with
    ``sampling``, the sampling density's own params), and how far the point is from the
    objective: ``l1``/``max_rel`` between the two W's, ``sampling_l1`` between the two p's."""

    shape: dict[str, Any]
    split: float
    l1: float
    max_rel: float
    sampling: dict[str, Any] | None = None
    sampling_l1: float = math.nan


def curve_distance(W_a: torch.Tensor, W_b: torch.Tensor, lam: torch.Tensor) -> tuple[float, float]:
    """``(L1, max_rel)`` between two weightings tabulated on ``lam``, each divided by its
    trapezoidal area: ``L1 = ∫|Ŵ_a − Ŵ_b| dλ`` (0 same, 2 disjoint), ``max_rel`` the largest
    ``|Ŵ_a − Ŵ_b|/Ŵ_b`` where ``Ŵ_b`` exceeds 1e-3 of its peak."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    a = torch.as_tensor(W_a, dtype=torch.float64)
    b = torch.as_tensor(W_b, dtype=torch.float64)
    a, b = a / torch.trapezoid(a, lam), b / torch.trapezoid(b, lam)
    l1 = float(torch.trapezoid((a - b).abs(), lam))
    mask = b > _SIGNIFICANT * b.max()
    return l1, float(((a - b).abs()[mask] / b[mask]).max())


def point_description(
    shape: Mapping[str, Any],
    split: float,
    parameterisation: str,
    sigma_data: float,
    sigma_min: float,
    sigma_max: float,
    adaptive: Mapping[str, Any] | None = None,
    sampling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The objective of one point, in ``DiffusionObjective.describe()`` form: the ``wlam``
    density (``p_λ ∝ W^split``, or the ``wlam`` density of the params ``sampling``, whose own
    shape then sets p and ``split`` must be 1) and the ``wlam`` weighting that completes it to
    ``W``; built once, so a ValueError names a bad parameter."""
    weighting = {**dict(shape), "parameterisation": parameterisation, "sigma_data": sigma_data}
    if sampling is None:
        density = {**dict(shape), "split": split}
        weighting["split"] = split
    else:
        density = dict(sampling)
        weighting["sampling"] = density
        if split != 1.0:
            raise ValueError(
                f"split must be 1 when the sampling density is given (its own params carry "
                f"its split), but got split={split}"
            )
    raw = {
        "parameterisation": parameterisation,
        "sigma_data": sigma_data,
        "density": {"name": "wlam", "params": density},
        "weighting": {"name": "wlam", "params": weighting},
        "adaptive": None if adaptive is None else dict(adaptive),
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
    }
    return objective_from_description(raw).describe()


def point_of_description(
    desc: Mapping[str, Any],
) -> tuple[dict[str, Any], float, dict[str, Any] | None] | None:
    """``(shape, split, sampling)`` of a description that :func:`point_description` wrote
    (``sampling`` None and ``split`` the power, or the sampling density's params and split 1),
    else None."""
    density, weighting = desc.get("density") or {}, desc.get("weighting") or {}
    if density.get("name") != "wlam" or weighting.get("name") != "wlam":
        return None
    params = dict(weighting.get("params") or {})
    params.pop("parameterisation", None)
    params.pop("sigma_data", None)
    sampling = params.pop("sampling", None)
    split = float(params.pop("split", 1.0))
    return params, split, None if sampling is None else dict(sampling)


def _bump_log_w(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    center, slope_low, slope_high, knee, curvature = q
    x = lam - center
    return (
        slope_low * x
        - (slope_low - slope_high) * knee * np.logaddexp(0.0, x / knee)
        - 0.5 * curvature * x * x
    )


def _canonical_bump(q: np.ndarray, lam_min: float, lam_max: float) -> dict[str, float]:
    """Rounded params, with the unused ones fixed: equal slopes make ``knee`` moot (1), and
    ``center`` too without curvature (the range's middle)."""
    center, slope_low, slope_high, knee, curvature = (float(v) for v in q)
    if abs(slope_low - slope_high) < 1e-5:
        slope_low = slope_high = (slope_low + slope_high) / 2
        knee = 1.0
        if curvature < 1e-7:
            center, curvature = (lam_min + lam_max) / 2, 0.0
        elif lam_min <= center + slope_low / curvature <= lam_max:
            # a Gaussian: its centre, without a tilt (one set of numbers for one curve)
            center, slope_low, slope_high = center + slope_low / curvature, 0.0, 0.0
    values = dict(zip(BUMP_KEYS, (center, slope_low, slope_high, knee, curvature), strict=True))
    # rounded; a number within rounding of 0 is 0 (sigmoid's flat side, a centre at λ = 0)
    out = {k: round(v, _DIGITS) if abs(v) > 5e-6 else 0.0 for k, v in values.items()}
    out["center"] = min(max(out["center"], lam_min), lam_max)
    for key, (low, high) in BUMP_BOUNDS.items():
        out[key] = min(max(out[key], low), high)
    return out


def _fit_bump(log_W: np.ndarray, weight: np.ndarray, lam: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares

    lo, hi = float(lam[0]), float(lam[-1])

    def residual(q: np.ndarray) -> np.ndarray:
        center, slope_low, slope_high, log_knee, curvature, offset = q
        shape = (center, slope_low, slope_high, math.exp(log_knee), curvature)
        return weight * (_bump_log_w(np.array(shape), lam) + offset - log_W)

    k_lo, k_hi = (math.log(b) for b in BUMP_BOUNDS["knee"])
    lower = [lo, BUMP_BOUNDS["slope_low"][0], BUMP_BOUNDS["slope_high"][0], k_lo, 0.0, -np.inf]
    upper = [hi, BUMP_BOUNDS["slope_low"][1], BUMP_BOUNDS["slope_high"][1], k_hi, 2.0, np.inf]

    def screened(start: list[float]) -> float:  # the cost with the best offset
        shape = np.array([start[0], start[1], start[2], math.exp(start[3]), start[4]])
        r = _bump_log_w(shape, lam) - log_W
        offset = -float(np.sum(weight**2 * r) / np.sum(weight**2))
        return float(np.sum((weight * (r + offset)) ** 2))

    pairs = ((0.5, -0.5), (-1.0, 0.0), (0.0, -1.0), (1.0, -2.0))
    chosen = []
    for s_low, s_high in pairs:  # the best centre, knee and curvature for each pair of slopes
        for curvature in (0.0, 0.2):
            chosen.append(
                min(
                    (
                        [center, s_low, s_high, math.log(knee), curvature, 0.0]
                        for center in np.linspace(lo + 1, hi - 1, 15)
                        for knee in (0.5, 2.0)
                    ),
                    key=screened,
                )
            )
    best = None
    for start in chosen:  # least squares from each
        start[5] = float(log_W.max())
        found = least_squares(residual, start, bounds=(lower, upper))
        if best is None or found.cost < best.cost:
            best = found
    assert best is not None
    q = best.x.copy()
    q[3] = math.exp(q[3])
    return q[:5]


def _fit_piecewise(log_W: np.ndarray, weight: np.ndarray, lam: np.ndarray, bins: int) -> list:
    """Weighted least squares of the knot values (``ln W`` is linear in them)."""
    K = int(bins)
    pos = (lam - lam[0]) / (lam[-1] - lam[0]) * (K - 1)
    i = np.clip(np.floor(pos).astype(int), 0, K - 2)
    frac = pos - i
    A = np.zeros((lam.size, K))
    A[np.arange(lam.size), i] = 1 - frac
    A[np.arange(lam.size), i + 1] += frac
    coef, *_ = np.linalg.lstsq(A * weight[:, None], log_W * weight, rcond=None)
    coef = coef - coef.max()  # W up to a constant: the largest knot value is 0
    low, high = LOG_VALUE_BOUNDS
    return [min(max(round(float(v), _DIGITS) + 0.0, low), high) for v in coef]


def fit_shape(
    W: torch.Tensor, lam: torch.Tensor, shape: str = "bump", bins: int = 6
) -> dict[str, Any]:
    """Shape params of the family member nearest to ``W`` tabulated on ``lam`` (equally
    spaced, spanning the run's λ range): least squares on ``ln W``, weighted by
    ``sqrt(Ŵ/max Ŵ) + 1e-3`` (the tails count by their mass); ``bins`` knots for
    ``shape = "piecewise"``. Rounded to 6 decimals and inside the searched ranges."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, but got shape={shape!r}")
    lam_np = torch.as_tensor(lam, dtype=torch.float64).numpy()
    W_np = torch.as_tensor(W, dtype=torch.float64).numpy()
    if not (np.all(np.isfinite(W_np)) and W_np.max() > 0):
        raise ValueError("W must be finite with a positive peak to be fitted")
    log_W = np.log(np.maximum(W_np, W_np.max() * 1e-300))
    weight = np.sqrt(W_np / W_np.max()) + 1e-3
    if shape == "piecewise":
        return {"log_values": _fit_piecewise(log_W, weight, lam_np, bins)}
    q = _fit_bump(log_W, weight, lam_np)
    return _canonical_bump(q, float(lam_np[0]), float(lam_np[-1]))


def fit_split(p_lam: torch.Tensor, log_W: torch.Tensor, lam: torch.Tensor) -> float:
    """The power ``a`` in [0, 1] whose density ``p ∝ W^a`` is nearest to ``p_λ`` (both
    tabulated on ``lam``): the least L1 distance between the normalised curves, over a grid of
    201 powers refined by a bounded scalar search; rounded to 6 decimals."""
    from scipy.optimize import minimize_scalar

    lam = torch.as_tensor(lam, dtype=torch.float64)
    p = torch.as_tensor(p_lam, dtype=torch.float64).clamp_min(0)
    p = p / torch.trapezoid(p, lam)
    x = torch.as_tensor(log_W, dtype=torch.float64)
    x = x - x.max()

    def distance(a: float) -> float:
        q = torch.exp(a * x)
        return float(torch.trapezoid((q / torch.trapezoid(q, lam) - p).abs(), lam))

    grid = [k / 200 for k in range(201)]
    start = min(grid, key=distance)
    found = minimize_scalar(
        distance,
        bounds=(max(0.0, start - 0.005), min(1.0, start + 0.005)),
        method="bounded",
        options={"xatol": 1e-9},
    )
    a = float(found.x) if distance(float(found.x)) <= distance(start) else start
    a = round(min(max(a, 0.0), 1.0), _DIGITS)
    return a if a > 5e-6 else 0.0


def fit_description(
    desc: Mapping[str, Any], shape: str = "bump", bins: int = 6, split: str = "power"
) -> Fit:
    """The point nearest to a described objective (adaptive mechanisms in their initial
    state), and its distance: on :func:`~objectives.curves.lam_grid` of the run's range.
    ``split = "power"``: the sampling density is ``W^split``; ``"shape"``: a member of the
    family of its own, fitted to the objective's ``p_λ``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, but got split={split!r}")
    sigma_min, sigma_max = float(desc["sigma_min"]), float(desc["sigma_max"])
    lam = lam_grid(sigma_min, sigma_max)
    curves = weighting_curves(desc, lam)
    params = fit_shape(curves["W"], lam, shape, bins)
    lam_min, lam_max = lam_range(sigma_min, sigma_max)
    member = make_shape(params, lam_min=lam_min, lam_max=lam_max)
    log_W = member.log_w(lam)
    l1, max_rel = curve_distance(torch.exp(log_W - log_W.max()), curves["W"], lam)
    if split == "power":
        a = fit_split(curves["p_lam"], log_W, lam)
        p_log = a * (log_W - log_W.max())
        sampling_l1, _ = curve_distance(torch.exp(p_log), curves["p_lam"], lam)
        return Fit(params, a, l1, max_rel, None, sampling_l1)
    p_params = fit_shape(curves["p_lam"], lam, shape, bins)
    p_member = make_shape(p_params, lam_min=lam_min, lam_max=lam_max).log_w(lam)
    sampling_l1, _ = curve_distance(torch.exp(p_member - p_member.max()), curves["p_lam"], lam)
    return Fit(params, 1.0, l1, max_rel, {**p_params, "split": 1.0}, sampling_l1)
