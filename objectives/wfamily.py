"""A few-parameter family of effective weightings ``W(λ)``, and its exact tabulation.

The outer study's "weighting" space searches the effective weighting itself
(``objectives.loss.DiffusionObjective.effective_weighting``: ``W(λ) = p_λ(λ)·w(σ)·σ²/c_out²``)
rather than the parameterisation, ``p`` and ``w`` apart. Its log is one of two shapes:

- ``bump`` (five numbers): with ``x = λ − center``,

      ln W(λ) = slope_low·x − (slope_low − slope_high)·knee·softplus(x/knee) − curvature·x²/2,

  a smoothed two-slope hinge (``slope_low`` the log-slope far below ``center``, on the noisy
  side; ``slope_high`` far above it; ``knee`` the width of the turn, in λ) times a Gaussian of
  variance ``1/curvature`` centred on the turn. A Gaussian's own centre is a tilt of both
  slopes, so the family holds every "Gaussian × (1 + e^{−(λ−k)})" weighting exactly: EDM's,
  EDM2's, rectified flow's, and also ``sech(λ/2)`` (ε-cosine), ``e^{−λ/2}`` (v-cosine) and
  ``sigmoid(b − λ)`` (Kingma & Gao). Min-SNR's and the Laplace schedule's weightings have two
  turns and are near it (``objectives.wlam`` fits them and says how near).
- ``piecewise`` (K numbers ``log_values``): ``ln W`` linear between K equally spaced knots
  from ``lam_min`` to ``lam_max`` of the run, constant beyond.

:class:`Shape` holds one member on a run's λ range; :class:`ExpTable` tabulates
``exp(power·ln W)`` as a density that is exactly piecewise exponential on a fine grid (log-linear
between grid points), so its CDF and inverse CDF are closed forms and sampling is exact.
This module imports nothing of the project: ``densities.py`` and ``weightings.py`` build their
``wlam`` families on it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BUMP_BOUNDS",
    "BUMP_KEYS",
    "LOG_VALUE_BOUNDS",
    "SHAPES",
    "ExpTable",
    "Shape",
    "make_shape",
]

SHAPES = ("bump", "piecewise")
BUMP_KEYS = ("center", "slope_low", "slope_high", "knee", "curvature")
MAX_SLOPE = 8.0  # |d ln W / dλ|: e^{8·25} is still finite in float64 over any usable range
MAX_LOG_VALUE = 50.0
TABLE_BINS = 4096  # grid bins of ExpTable over the run's λ range
# The searched ranges of the bump's numbers (``center`` spans the run's λ range) and of a
# piecewise shape's log-values (the largest is 0 after normalising): the fits of
# ``objectives.wlam`` stay inside them, so every mapped configuration is a point of the space.
BUMP_BOUNDS = {
    "slope_low": (-4.0, 4.0),
    "slope_high": (-4.0, 4.0),
    "knee": (0.05, 8.0),
    "curvature": (0.0, 2.0),
}
LOG_VALUE_BOUNDS = (-30.0, 0.0)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number, but got {name}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, but got {name}={value}")
    return value


@dataclass(frozen=True)
class Shape:
    """One member of the family on the run's λ range ``[lam_min, lam_max]``; build it with
    :func:`make_shape`. ``log_w(lam)`` is ``ln W`` up to a constant (float64)."""

    kind: str
    lam_min: float
    lam_max: float
    center: float = 0.0
    slope_low: float = 0.0
    slope_high: float = 0.0
    knee: float = 1.0
    curvature: float = 0.0
    log_values: tuple[float, ...] = ()

    def log_w(self, lam: Tensor) -> Tensor:
        """``ln W(λ)`` up to a constant, float64, shaped like ``lam``."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if self.kind == "piecewise":
            values = torch.tensor(self.log_values, dtype=torch.float64, device=lam.device)
            K = values.numel()
            pos = ((lam - self.lam_min) / (self.lam_max - self.lam_min) * (K - 1)).clamp(0, K - 1)
            pos = pos.nan_to_num(0.0)
            i = pos.floor().clamp(max=K - 2).to(torch.long)
            frac = pos - i.to(torch.float64)
            return values[i] * (1 - frac) + values[i + 1] * frac
        x = lam - self.center
        hinge = self.knee * torch.nn.functional.softplus(x / self.knee)
        return (
            self.slope_low * x
            - (self.slope_low - self.slope_high) * hinge
            - 0.5 * self.curvature * x * x
        )

    def params(self) -> dict[str, Any]:
        """The shape's constructor arguments (``log_values`` for a piecewise shape, the five
        bump numbers otherwise), JSON-able."""
        if self.kind == "piecewise":
            return {"log_values": list(self.log_values)}
        return {key: getattr(self, key) for key in BUMP_KEYS}


def make_shape(
    params: Mapping[str, Any], *, lam_min: float, lam_max: float, owner: str = "wlam"
) -> Shape:
    """A :class:`Shape` from ``{"log_values": [...]}`` (piecewise) or the bump's numbers
    (``center``, ``slope_low``, ``slope_high``, ``knee``, ``curvature``; missing ones take
    0, 0, 0, 1, 0). A ValueError names the bad key, its value and what is allowed."""
    params = dict(params)
    log_values = params.pop("log_values", None)
    if log_values is not None:
        extra = sorted(k for k, v in params.items() if v is not None)
        if extra:
            raise ValueError(
                f"{owner}: log_values (the piecewise shape) excludes the bump's parameters, but "
                f"got {extra[0]}={params[extra[0]]!r}"
            )
        if isinstance(log_values, (str, bytes)) or not isinstance(log_values, Sequence):
            raise ValueError(
                f"{owner}: log_values must be a list of at least 2 numbers, but got "
                f"log_values={log_values!r}"
            )
        values = tuple(_real(f"log_values[{i}]", v) for i, v in enumerate(log_values))
        if len(values) < 2 or any(abs(v) > MAX_LOG_VALUE for v in values):
            raise ValueError(
                f"{owner}: log_values must have at least 2 entries, each in [-{MAX_LOG_VALUE}, "
                f"{MAX_LOG_VALUE}], but got log_values={list(values)}"
            )
        return Shape("piecewise", lam_min, lam_max, log_values=values)
    unknown = sorted(set(params) - set(BUMP_KEYS))
    if unknown:
        raise ValueError(
            f"{owner}: unknown shape parameter {unknown[0]!r}; valid: "
            f"{', '.join(BUMP_KEYS)} or log_values"
        )
    defaults = {"center": 0.0, "slope_low": 0.0, "slope_high": 0.0, "knee": 1.0, "curvature": 0}
    v = {k: _real(k, params[k] if params.get(k) is not None else defaults[k]) for k in BUMP_KEYS}
    for key in ("slope_low", "slope_high"):
        if abs(v[key]) > MAX_SLOPE:
            raise ValueError(
                f"{owner}: {key} must be in [-{MAX_SLOPE}, {MAX_SLOPE}], but got {key}={v[key]}"
            )
    if not v["knee"] > 0:
        raise ValueError(f"{owner}: knee must be > 0, but got knee={v['knee']}")
    if not v["curvature"] >= 0:
        raise ValueError(f"{owner}: curvature must be >= 0, but got curvature={v['curvature']}")
    return Shape("bump", lam_min, lam_max, **v)


class ExpTable:
    """The density over ``[lam_min, lam_max]`` proportional to ``exp(g(λ))``, with ``g`` the
    linear interpolation of ``power·shape.log_w`` between :data:`TABLE_BINS` + 1 grid points:
    exactly piecewise exponential, so ``log_prob``, ``cdf`` and ``icdf`` are closed forms."""

    def __init__(self, shape: Shape, power: float, bins: int = TABLE_BINS) -> None:
        self.lam_min, self.lam_max = shape.lam_min, shape.lam_max
        self.bins = int(bins)
        self.h = (self.lam_max - self.lam_min) / self.bins
        grid = torch.linspace(self.lam_min, self.lam_max, self.bins + 1, dtype=torch.float64)
        g = power * shape.log_w(grid)
        g = g - g.max()  # [bins+1], max 0
        self._g = g[:-1]  # log density (unnormalised) at each bin's left end
        self._beta = (g[1:] - g[:-1]) / self.h  # log-slope in each bin
        z = self._beta * self.h
        self._e = torch.exp(self._g)  # [bins]
        masses = self.h * self._e * self._expm1_over(z)
        self._log_Z = math.log(float(masses.sum()))
        self._masses = masses / masses.sum()
        self._cum = torch.cat([torch.zeros(1, dtype=torch.float64), self._masses.cumsum(0)])
        self._cum[-1] = 1.0

    @staticmethod
    def _expm1_over(z: Tensor) -> Tensor:
        """``(e^z − 1)/z``, 1 at ``z = 0``."""
        small = z.abs() < 1e-8
        safe = torch.where(small, torch.ones_like(z), z)
        return torch.where(small, 1 + z / 2, torch.expm1(safe) / safe)

    def _bin(self, lam: Tensor) -> Tensor:
        k = torch.floor((lam - self.lam_min) / self.h).nan_to_num(0.0)
        return k.clamp(0, self.bins - 1).to(torch.long)

    def log_prob(self, lam: Tensor) -> Tensor:
        """Normalised log density at ``lam`` (the end bins' exponentials beyond the range)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        k = self._bin(lam)
        t = lam - (self.lam_min + k.to(torch.float64) * self.h)
        return self._g.to(lam.device)[k] + self._beta.to(lam.device)[k] * t - self._log_Z

    def cdf(self, lam: Tensor) -> Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        k = self._bin(lam)
        t = (lam - (self.lam_min + k.to(torch.float64) * self.h)).clamp(0, self.h)
        beta = self._beta.to(lam.device)[k]
        part = self._e.to(lam.device)[k] * t * self._expm1_over(beta * t) / math.exp(self._log_Z)
        value = (self._cum.to(lam.device)[k] + part).clamp(0, 1)
        value = torch.where(lam < self.lam_min, 0.0, value)
        return torch.where(lam > self.lam_max, 1.0, value)

    def icdf(self, u: Tensor) -> Tensor:
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0, 1)
        cum = self._cum.to(u.device)
        k = (torch.searchsorted(cum, u, right=True) - 1).clamp(0, self.bins - 1)
        e = self._e.to(u.device)[k]
        beta = self._beta.to(u.device)[k]
        # ∫_0^t e^{g_k + β s} ds / Z = u − cum[k]  ⇒  t = log1p(β r)/β,  r = (u − cum[k])·Z/e^{g_k}
        r = ((u - cum[k]) * math.exp(self._log_Z) / e).nan_to_num(0.0, posinf=0.0)
        small = (beta * r).abs() < 1e-10
        t = torch.where(small, r, torch.log1p((beta * r).clamp_min(-1 + 1e-300)) / beta)
        t = t.nan_to_num(0.0).clamp(0, self.h)
        lam = (self.lam_min + k.to(torch.float64) * self.h + t).clamp(self.lam_min, self.lam_max)
        lam = torch.where(u >= 1, self.lam_max, lam)  # the ends exactly, whatever the tails
        return torch.where(u <= 0, self.lam_min, lam)
