"""The diffusion training objective in noise levels: parameterisation, p(σ) and w(σ) apart.

The loss of one example (Karras et al. 2022, eq. 8) is

    w(σ)·‖F(c_in·x, c_noise) − F_target‖²,   x = x0 + σ·ε,   F_target = (x0 − c_skip·x)/c_out,

with σ drawn from a :class:`~objectives.densities.Density` outside the loss (as k-diffusion's
``sample_density``) and ``w`` a :class:`~objectives.weightings.Weighting`. Since
``‖D − x0‖² = c_out²·‖F − F_target‖²`` and ``‖ε̂ − ε‖² = ‖D − x0‖²/σ²``, the same objective in
ε-space, per unit of λ, has the *effective weighting* (Kingma & Gao 2023, eq. 6 and App. E)

    W(λ) = p_λ(λ)·w(σ)·σ²/c_out(σ)²,

which is what the study compares across parameterisations, densities and weightings: two
objectives with the same ``W`` have the same expected loss, however the factors are split.
An optional adaptive mechanism (``objectives.adaptive``) hooks into sampling, the loss, and
``W`` without changing the callers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sigmatune.objectives.densities import Density, lam_range, make_density
from sigmatune.objectives.parameterisations import Coefficients, get_parameterisation
from sigmatune.objectives.weightings import Weighting, make_weighting

if TYPE_CHECKING:
    from sigmatune.objectives.adaptive import Adaptive

__all__ = ["DiffusionObjective", "objective_from_description", "same_effective_weighting"]


class DiffusionObjective:
    """Per-example diffusion loss from a parameterisation, a density p and a weighting w.

    Args:
        parameterisation: a key of ``objectives.parameterisations.PARAMETERISATIONS``.
        density: p(σ); its ``sigma_min``/``sigma_max`` are the run's σ range.
        weighting: w(σ); a piecewise weighting must be defined on the same σ range.
        sigma_data: standard deviation of the data (> 0).
        adaptive: an ``objectives.adaptive.Adaptive`` (bound here), or ``None``.
    """

    def __init__(
        self,
        parameterisation: str,
        density: Density,
        weighting: Weighting,
        sigma_data: float,
        adaptive: Adaptive | None = None,
    ) -> None:
        self._coefficients = get_parameterisation(parameterisation)
        self.parameterisation = parameterisation
        if not isinstance(density, Density):
            raise ValueError(
                f"density must be an objectives.densities.Density, but got density={density!r}"
            )
        if not isinstance(weighting, Weighting):
            raise ValueError(
                f"weighting must be an objectives.weightings.Weighting, but got "
                f"weighting={weighting!r}"
            )
        if (
            isinstance(sigma_data, bool)
            or not isinstance(sigma_data, numbers.Real)
            or not (math.isfinite(sigma_data) and sigma_data > 0)
        ):
            raise ValueError(
                f"sigma_data must be finite and > 0, but got sigma_data={sigma_data!r}"
            )
        for key in ("sigma_min", "sigma_max"):
            if hasattr(weighting, key) and getattr(weighting, key) != getattr(density, key):
                raise ValueError(
                    f"weighting {weighting.name!r} has {key}={getattr(weighting, key)}, but the "
                    f"density has {key}={getattr(density, key)}; they must be the run's same range"
                )
        check = getattr(weighting, "check_objective", None)
        if check is not None:  # a weighting made for one density and parameterisation (wlam)
            check(parameterisation, density, float(sigma_data))
        self.density = density
        self.weighting = weighting
        self.sigma_data = float(sigma_data)
        self.sigma_min = density.sigma_min
        self.sigma_max = density.sigma_max
        self.adaptive = adaptive
        if adaptive is not None:
            adaptive.bind(self)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        """``(c_skip, c_out, c_in, c_noise)`` of this parameterisation, shaped like σ (a
        non-tensor σ becomes float64)."""
        if not isinstance(sigma, Tensor):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self._coefficients(sigma, self.sigma_data)

    def sample_sigma(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(sigma [n] float64, factor [n])``: σ ~ p, factor 1; or the adaptive's proposal
        with its factor (``p/q`` for importance sampling), which multiplies the weight."""
        if self.adaptive is not None:
            return self.adaptive.sample(n, generator)
        sigma = self.density.sample(n, generator)
        return sigma, torch.ones_like(sigma)

    def weight(self, sigma: Tensor) -> Tensor:
        """``w(σ)``, shaped and typed like σ."""
        return self.weighting(sigma)

    def loss(
        self,
        F: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        sigma: Tensor,
        noise: Tensor,
        factor: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]``: ``w·factor·mean((F(c_in·x, c_noise) − F_target)²)`` over
        the non-batch dimensions, passed through the adaptive's ``transform`` if any.

        ``F`` is the raw network ``F(x_in [B, ...], c_noise [B]) -> [B, ...]``. σ goes to x0's
        device and dtype. The coefficients are computed in float64 and ``F_target`` is formed
        as ``((1 − c_skip)·x0 − c_skip·σ·ε)/c_out``, which equals ``(x0 − c_skip·x)/c_out``
        without its cancellation (ε-prediction's target is then ε exactly).
        """
        B = x0.shape[0]
        if sigma.shape != (B,) or noise.shape != x0.shape:
            raise ValueError(
                f"sigma must have shape [B]=[{B}] and noise the shape of x0 {tuple(x0.shape)}, "
                f"but got sigma.shape={tuple(sigma.shape)}, noise.shape={tuple(noise.shape)}"
            )
        dtype, device = x0.dtype, x0.device
        work = torch.float32 if device.type == "mps" else torch.float64
        s = sigma.to(device=device, dtype=work)  # [B]
        c = self._coefficients(s, self.sigma_data)
        a = (1 - c.c_skip) / c.c_out  # F_target = a·x0 + b·ε
        b = -c.c_skip * s / c.c_out
        shape = (B,) + (1,) * (x0.ndim - 1)

        def col(t: Tensor) -> Tensor:
            return t.to(dtype).view(shape)

        x = x0 + col(s) * noise
        target = col(a) * x0 + col(b) * noise
        out = F(col(c.c_in) * x, c.c_noise.to(dtype))
        err = (out - target).square().reshape(B, -1).mean(dim=1)  # [B]
        weighted = self.weighting(s).to(err.dtype) * err
        if factor is not None:
            weighted = weighted * factor.to(device=device, dtype=err.dtype)
        if self.adaptive is not None:
            return self.adaptive.transform(s.to(dtype), weighted)
        return weighted

    def observe(self, sigma: Tensor, loss_detached: Tensor) -> None:
        """Show the adaptive mechanism the detached per-example loss of a step, as
        :meth:`loss` returned it (for σ's from :meth:`sample_sigma`); no-op without one."""
        if self.adaptive is not None:
            self.adaptive.observe(sigma, loss_detached)

    def effective_weighting(self, lam: Tensor) -> Tensor:
        """``W(λ) = p_λ(λ)·w(σ)·σ²/c_out(σ)²`` (times the adaptive's ``effective_factor``):
        the ε-space weight per unit λ (Kingma & Gao 2023, eq. 6). float64, 0 off the support."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        sigma = torch.exp(-lam / 2)
        p = self.density.log_prob(lam).exp()
        c_out = self._coefficients(sigma, self.sigma_data).c_out
        W = p * self.weighting(sigma).to(torch.float64) * (sigma / c_out) ** 2
        if self.adaptive is not None:
            W = W * torch.as_tensor(self.adaptive.effective_factor(lam)).to(W)
        return torch.where(p > 0, W, torch.zeros_like(W))

    def parameters(self) -> list[torch.nn.Parameter]:
        """The adaptive mechanism's learnable parameters (``uncertainty``), else ``[]``."""
        return list(self.adaptive.parameters()) if self.adaptive is not None else []

    def state_dict(self) -> dict[str, Any]:
        """The adaptive mechanism's state (for checkpoints), ``{}`` without one."""
        return self.adaptive.state_dict() if self.adaptive is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote."""
        if self.adaptive is not None:
            self.adaptive.load_state_dict(dict(state))
        elif state:
            raise ValueError(
                f"this objective has no adaptive mechanism, but got state with keys {sorted(state)}"
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, inverted by :func:`objective_from_description`."""
        adaptive = None
        if self.adaptive is not None:
            adaptive = {"name": self.adaptive.name, "params": self.adaptive.params()}
        return {
            "parameterisation": self.parameterisation,
            "sigma_data": self.sigma_data,
            "density": {"name": self.density.name, "params": self.density.params()},
            "weighting": {"name": self.weighting.name, "params": self.weighting.params()},
            "adaptive": adaptive,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective({self.parameterisation!r}, {self.density!r}, "
            f"{self.weighting!r}, sigma_data={self.sigma_data!r}, adaptive={self.adaptive!r})"
        )


_DESCRIPTION_KEYS = (
    "parameterisation",
    "sigma_data",
    "density",
    "weighting",
    "sigma_min",
    "sigma_max",
)


def _part(desc: Mapping[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    part = desc[key]
    if not isinstance(part, Mapping) or "name" not in part:
        raise ValueError(
            f"description[{key!r}] must be a dict with 'name' and 'params', but got {key}={part!r}"
        )
    return part["name"], dict(part.get("params") or {})


def objective_from_description(desc: Mapping[str, Any]) -> DiffusionObjective:
    """Rebuild the objective that :meth:`DiffusionObjective.describe` described."""
    missing = [key for key in _DESCRIPTION_KEYS if key not in desc]
    if missing:
        raise ValueError(
            f"description lacks {missing[0]!r}; it needs "
            f"{', '.join(_DESCRIPTION_KEYS)} and optionally 'adaptive'"
        )
    run = {"sigma_min": desc["sigma_min"], "sigma_max": desc["sigma_max"]}
    density = make_density(*_part(desc, "density"), **run)
    weighting = make_weighting(*_part(desc, "weighting"), **run)
    adaptive = None
    if desc.get("adaptive") is not None:
        from sigmatune.objectives.adaptive import (
            make_adaptive,  # lazy: adaptive imports nothing of ours
        )

        adaptive = make_adaptive(*_part(desc, "adaptive"))
    return DiffusionObjective(
        desc["parameterisation"], density, weighting, desc["sigma_data"], adaptive
    )


_NEGLIGIBLE = 1e-8  # W below this fraction of the larger peak carries no weight worth comparing


def same_effective_weighting(
    desc_a: Mapping[str, Any],
    desc_b: Mapping[str, Any],
    *,
    rtol: float = 1e-2,
    points: int = 1001,
) -> bool:
    """Whether two described objectives have the same effective weighting ``W(λ)`` up to a
    constant factor: the same objective up to gradient variance (Kingma & Gao 2023, §3: W
    alone defines the objective; how it splits into p and w changes only the variance).

    Both ``W`` are taken on ``points`` equally spaced λ's of the common part of the two runs'
    λ ranges, each divided by its integral there (trapezoid rule), and must agree to ``rtol``
    relative at every λ where either exceeds 1e-8 of the larger peak; zero in one and not in
    the other is a difference. Adaptive mechanisms are in their initial state (a description
    holds no learned state). Disjoint σ ranges are not the same objective.
    """
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a real number in (0, 1), but got rtol={rtol!r}")
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise ValueError(f"points must be an integer >= 2, but got points={points!r}")
    a, b = objective_from_description(desc_a), objective_from_description(desc_b)
    lo_a, hi_a = lam_range(a.sigma_min, a.sigma_max)
    lo_b, hi_b = lam_range(b.sigma_min, b.sigma_max)
    lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
    if not lo < hi:
        return False
    lam = torch.linspace(lo, hi, int(points), dtype=torch.float64)
    W_a, W_b = a.effective_weighting(lam), b.effective_weighting(lam)
    Z_a, Z_b = torch.trapezoid(W_a, lam), torch.trapezoid(W_b, lam)
    if not (Z_a > 0 and Z_b > 0):
        return bool(Z_a == 0 and Z_b == 0)
    W_a, W_b = W_a / Z_a, W_b / Z_b
    larger = torch.maximum(W_a, W_b)
    compared = larger > _NEGLIGIBLE * float(larger.max())
    return bool(torch.all((W_a - W_b).abs()[compared] <= rtol * larger[compared]))
