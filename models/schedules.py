"""Step schedules: 1-D float64 tensors of noise levels, strictly decreasing, ending in exact 0.

``n`` steps have ``n + 1`` values: ``n`` positive sigmas ``sigma_max = s_0 > ... > s_{n-1} =
sigma_min`` followed by 0 (k-diffusion's convention). Positions are described in logSNR
``lam = -2 ln sigma``; the free parameterisation used by the inner study is the ``n - 1`` gaps in
``lam`` between consecutive positive sigmas, as fractions of ``lam_max - lam_min``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "from_density",
    "from_gaps",
    "interpolate",
    "karras",
    "loglinear",
    "to_gaps",
    "validate",
]


def _float64(values: Tensor | Sequence[float]) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to(torch.float64)
    return torch.as_tensor(values, dtype=torch.float64)


def validate(sigmas: Tensor | Sequence[float]) -> Tensor:
    """Check the schedule contract and return the schedule as a 1-D float64 tensor.

    Raises ``ValueError`` naming the fault: not 1-D, fewer than 2 values, non-finite values,
    a last value other than exactly 0, a non-positive value before the last, or values that
    are not strictly decreasing.
    """
    s = _float64(sigmas)
    if s.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, but got shape={tuple(s.shape)}, sigmas={s.tolist()}")
    values = s.tolist()
    if s.numel() < 2:
        raise ValueError(f"sigmas must have at least 2 values (one step), but got sigmas={values}")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigmas must be finite, but got sigmas={values}")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end with exactly 0, but got sigmas={values}")
    if not (s[:-1] > 0).all():
        raise ValueError(f"sigmas must be > 0 before the last, but got sigmas={values}")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, but got sigmas={values}")
    return s


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, but got n={n}")
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigma_min must be > 0 and finite, but got sigma_min={sigma_min}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(
            f"sigma_max must be finite and > sigma_min={sigma_min}, but got sigma_max={sigma_max}"
        )


def _append_zero(positive: Tensor) -> Tensor:
    return validate(torch.cat([positive, positive.new_zeros(1)]))


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: ``s_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho`` for i < n, then 0. ``n = 1`` gives ``[sigma_max, 0]``."""
    _check_range(n, sigma_min, sigma_max)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be > 0 and finite, but got rho={rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    positive = (hi + ramp * (lo - hi)) ** rho
    positive[0] = sigma_max
    if n > 1:
        positive[-1] = sigma_min
    return _append_zero(positive)


def from_density(density: object, n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Steps at equal probability under a density over logSNR ``lam = -2 ln sigma`` (an
    ``objectives.densities.Density``: its ``cdf`` and ``icdf``): ``lam_i = icdf(F(lam_max_s) +
    i/(n-1) (F(lam_min_s) - F(lam_max_s)))`` from ``sigma_max`` to ``sigma_min``, then 0 --
    the steps fall where the density puts its mass (e.g. a model's training noise levels,
    "sample where you trained"). A uniform density gives :func:`loglinear`."""
    _check_range(n, sigma_min, sigma_max)
    ends = torch.tensor([-2 * math.log(sigma_max), -2 * math.log(sigma_min)], dtype=torch.float64)
    if n == 1:
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    u_ends = density.cdf(ends).to(torch.float64)  # type: ignore[attr-defined]
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lam = density.icdf(u_ends[0] + ramp * (u_ends[1] - u_ends[0]))  # type: ignore[attr-defined]
    positive = torch.exp(-0.5 * lam.to(torch.float64))
    positive[0], positive[-1] = sigma_max, sigma_min
    return _append_zero(positive)


def loglinear(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Steps uniform in logSNR ``lam = -2 ln sigma`` (equivalently in ln sigma) from
    ``sigma_max`` to ``sigma_min``, then 0 (Lu et al. 2022's "logSNR" spacing)."""
    _check_range(n, sigma_min, sigma_max)
    positive = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    positive = positive.exp()
    positive[0] = sigma_max
    if n > 1:
        positive[-1] = sigma_min
    return _append_zero(positive)


def from_gaps(gaps: Sequence[float] | Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """A schedule from ``n - 1`` positive gaps in logSNR between ``sigma_max`` and ``sigma_min``.

    The gaps are weights, normalised to fractions ``f_j`` of ``lam_max - lam_min`` (``lam_max =
    -2 ln sigma_min``, ``lam_min = -2 ln sigma_max``): ``lam_i = lam_min + (lam_max - lam_min)
    sum_{j<i} f_j``, ``s_i = exp(-lam_i / 2)``, then 0. No gaps give ``[sigma_max, 0]`` (then
    ``sigma_min == sigma_max`` is allowed, so that ``from_gaps(to_gaps(s), s[-2], s[0])``
    holds for one-step schedules too).
    """
    g = _float64(gaps).reshape(-1)
    if g.numel() == 0:
        if not (math.isfinite(sigma_min) and sigma_min > 0):
            raise ValueError(f"sigma_min must be > 0 and finite, but got sigma_min={sigma_min}")
        if not (math.isfinite(sigma_max) and sigma_max >= sigma_min):
            raise ValueError(
                f"sigma_max must be finite and >= sigma_min={sigma_min}, "
                f"but got sigma_max={sigma_max}"
            )
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    if not (torch.isfinite(g).all() and (g > 0).all()):
        raise ValueError(f"gaps must be > 0 and finite, but got gaps={g.tolist()}")
    _check_range(g.numel() + 1, sigma_min, sigma_max)
    fractions = torch.cumsum(g, 0) / g.sum()
    lam_min, lam_max = -2 * math.log(sigma_max), -2 * math.log(sigma_min)
    lam = lam_min + (lam_max - lam_min) * torch.cat([fractions.new_zeros(1), fractions])
    positive = torch.exp(-lam / 2)
    positive[0], positive[-1] = sigma_max, sigma_min
    return _append_zero(positive)


def to_gaps(sigmas: Tensor | Sequence[float]) -> Tensor:
    """The inverse of :func:`from_gaps`: the ``n - 1`` gaps in logSNR between consecutive
    positive sigmas, as fractions summing to 1 (float64; empty for a one-step schedule)."""
    s = validate(sigmas)
    lam = -2 * torch.log(s[:-1])
    gaps = lam[1:] - lam[:-1]
    return gaps / gaps.sum() if gaps.numel() else gaps


def interpolate(sigmas: Tensor | Sequence[float], n: int) -> Tensor:
    """Resample a schedule to ``n`` steps by piecewise-linear interpolation of ln sigma over
    the normalised step index, keeping the final 0 (Sabour et al. 2024, Align Your Steps,
    ``loglinear_interp``). The first and last positive sigmas are kept exactly."""
    s = validate(sigmas)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, but got n={n}")
    positive = s[:-1]
    m = positive.numel()
    if n == 1:
        return _append_zero(positive[:1].clone())
    if m == 1:
        raise ValueError(
            f"sigmas must have at least 2 positive values to interpolate to n={n} steps, "
            f"but got sigmas={s.tolist()}"
        )
    log_s = positive.log()
    position = torch.linspace(0, m - 1, n, dtype=torch.float64)  # in units of the old index
    left = position.floor().long().clamp(max=m - 2)
    frac = position - left
    out = (log_s[left] * (1 - frac) + log_s[left + 1] * frac).exp()
    out[0], out[-1] = positive[0], positive[-1]
    return _append_zero(out)


SCHEDULES: dict[str, Callable[..., Tensor]] = {"karras": karras, "loglinear": loglinear}


def per_example_sigma(sigma: Tensor | float, x: Tensor, dtype: torch.dtype) -> Tensor:
    """sigma given as a scalar or [B] -> [B] in ``dtype`` on x's device (B = x.shape[0])."""
    if isinstance(sigma, Tensor):
        sigma_t = sigma.to(device=x.device, dtype=dtype)
    else:  # straight to dtype: a Python float must not pass through float32
        sigma_t = torch.as_tensor(sigma, dtype=dtype, device=x.device)
    if sigma_t.ndim == 0:
        sigma_t = sigma_t.expand(x.shape[0])
    sigma_t = sigma_t.reshape(-1)
    if sigma_t.shape[0] != x.shape[0]:
        raise ValueError(
            f"sigma must be a scalar or have shape [B]=[{x.shape[0]}], "
            f"but got shape={tuple(torch.as_tensor(sigma).shape)}"
        )
    return sigma_t
