"""Noise-level distributions p(σ), described over the logSNR λ = −2·ln σ.

Every density is truncated to the run's ``[sigma_min, sigma_max]``, i.e. to
``[lam_min, lam_max] = [−2·ln sigma_max, −2·ln sigma_min]``, and renormalised there.
``log_prob`` is the density over λ (``p_λ(λ) = p_σ(σ)·σ/2``), ``cdf`` its distribution
function, ``icdf`` the inverse, and ``sample`` draws σ's exactly by inverse transform from one
uniform variate each, so a ``torch.Generator`` makes the draw reproducible.

The families (Dieleman 2024 §3; Kingma & Gao 2023):

- ``lognormal(P_mean, P_std)``: EDM's ``ln σ ~ N(P_mean, P_std²)`` (Karras et al. 2022,
  Table 1), i.e. ``λ ~ N(−2·P_mean, (2·P_std)²)``. SD3's logit-normal in ``t`` is this family.
- ``cosine(shift)``: uniform ``t`` under the (shifted) cosine schedule (Nichol & Dhariwal 2021;
  Hoogeboom et al. 2023), ``p(λ) = sech((λ − shift)/2)/(2π)``.
- ``laplace(mu, b)``: Laplace in λ, ``p(λ) = exp(−|λ − mu|/b)/(2b)`` (Hang et al. 2024,
  "Improved Noise Schedule for Diffusion Training", §2), which concentrates training near
  ``λ = mu`` with exponential tails.
- ``uniform(lam_min, lam_max)``: uniform in λ on a sub-range of the run's (by default all of it).
- ``piecewise(heights)``: piecewise constant in λ on K equal bins of the run's range, with a
  piecewise-linear CDF (CDCD's time warping, Dieleman et al. 2022).
- ``wlam(shape, split)``: ``p(λ) ∝ W(λ)^split`` for a member ``W`` of the effective-weighting
  family of ``objectives.wfamily`` (the sampling share of the outer "weighting" space; the
  weighting ``wlam`` carries the rest), exactly piecewise exponential on a fine grid.

All arithmetic is float64.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from sigmatune.objectives.wfamily import ExpTable, make_shape

__all__ = [
    "Density",
    "LogNormal",
    "Cosine",
    "Laplace",
    "Uniform",
    "Piecewise",
    "WLam",
    "DENSITIES",
    "make_density",
    "check_real",
    "check_sigma_range",
    "lam_range",
    "build",
    "check_real_list",
]

_MIN_MASS = 1e-12  # least probability mass a family may keep on the run's range


# -- checks shared with weightings.py ---------------------------------------------------------


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number, but got {name}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, but got {name}={value}")
    return value


def check_sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """Check ``0 < sigma_min < sigma_max < inf`` and return both as floats."""
    sigma_min = check_real("sigma_min", sigma_min)
    sigma_max = check_real("sigma_max", sigma_max)
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be > 0, but got sigma_min={sigma_min}")
    if not sigma_max > sigma_min:
        raise ValueError(
            f"sigma_max must be > sigma_min={sigma_min}, but got sigma_max={sigma_max}"
        )
    return sigma_min, sigma_max


def lam_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """``(lam_min, lam_max) = (−2·ln sigma_max, −2·ln sigma_min)``."""
    return -2.0 * math.log(sigma_max), -2.0 * math.log(sigma_min)


def build(
    kind: str, registry: Mapping[str, type], name: str, params: Mapping[str, Any] | None, **run: Any
) -> Any:
    """Instantiate ``registry[name](**params)``, passing those of ``run`` (the run's
    ``sigma_min``/``sigma_max``) that the class accepts; ValueErrors name what is wrong."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
    cls = registry[name]
    params = dict(params or {})
    signature = inspect.signature(cls)
    accepted = [p for p in signature.parameters if p not in run]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for {kind} {name!r}; "
            f"valid: {', '.join(accepted) or '(none)'}"
        )
    for p in accepted:
        if signature.parameters[p].default is inspect.Parameter.empty and p not in params:
            raise ValueError(f"{kind} {name!r} needs the parameter {p!r}")
    context = {k: v for k, v in run.items() if k in signature.parameters}
    return cls(**params, **context)


def _as_float64(x: Tensor | float | Sequence[float]) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _tolerance(*bounds: float) -> float:
    """Slack for membership tests, so that ``−2·ln(exp(−λ/2))`` of a sampled λ stays inside."""
    return 1e-10 * (1.0 + max(abs(b) for b in bounds))


# -- the densities ----------------------------------------------------------------------------


class Density(ABC):
    """A density over λ, truncated to ``[lam_min, lam_max]`` within the run's σ range.

    ``sigma_min``/``sigma_max`` are the run's; ``lam_min``/``lam_max`` bound the support (the
    run's λ range except for :class:`Uniform` on a sub-range).
    """

    name: ClassVar[str]

    def __init__(self, *, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)
        self.lam_min, self.lam_max = lam_range(self.sigma_min, self.sigma_max)

    def _inside(self, lam: Tensor) -> Tensor:
        tol = _tolerance(self.lam_min, self.lam_max)
        return (lam >= self.lam_min - tol) & (lam <= self.lam_max + tol)

    @abstractmethod
    def log_prob(self, lam: Tensor) -> Tensor:
        """Log density over λ, normalised on ``[lam_min, lam_max]``; ``-inf`` outside. float64."""

    @abstractmethod
    def cdf(self, lam: Tensor) -> Tensor:
        """Distribution function over λ (0 below ``lam_min``, 1 above ``lam_max``). float64."""

    @abstractmethod
    def icdf(self, u: Tensor) -> Tensor:
        """Inverse of :meth:`cdf`: the λ with ``cdf(λ) = u`` for ``u`` in [0, 1]. float64."""

    @abstractmethod
    def params(self) -> dict[str, float | list[float]]:
        """JSON-able constructor keyword arguments, without ``sigma_min``/``sigma_max``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` σ's (``[n]`` float64, within the support), by inverse transform of uniforms.

        On the generator's device; the same generator state gives the same σ's.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an integer >= 0, but got n={n!r}")
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(int(n), generator=generator, dtype=torch.float64, device=device)
        lam = self.icdf(u).clamp(self.lam_min, self.lam_max)
        sigma_lo = max(self.sigma_min, math.exp(-self.lam_max / 2))
        sigma_hi = min(self.sigma_max, math.exp(-self.lam_min / 2))
        return torch.exp(-lam / 2).clamp(sigma_lo, sigma_hi)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return (
            f"{type(self).__name__}({args}, sigma_min={self.sigma_min!r}, "
            f"sigma_max={self.sigma_max!r})"
        )


class _SymmetricTruncated(Density):
    """A location-scale law symmetric about ``centre``, truncated to the run's λ range.

    Subclasses give the standard law (``_std_cdf``, ``_std_icdf``, ``_std_log_pdf``). Below the
    centre the computation uses the CDF ``F``, above it the survival function ``S(z) = F(−z)``,
    so that both tails keep full relative precision (a range far out in a tail included).
    """

    @staticmethod
    @abstractmethod
    def _std_cdf(z: Tensor) -> Tensor: ...

    @staticmethod
    @abstractmethod
    def _std_icdf(u: Tensor) -> Tensor: ...

    @staticmethod
    @abstractmethod
    def _std_log_pdf(z: Tensor) -> Tensor: ...

    def _truncate(self, centre: float, scale: float) -> None:
        self._centre, self._scale = centre, scale
        a = _as_float64((self.lam_min - centre) / scale)
        b = _as_float64((self.lam_max - centre) / scale)
        self._F_a, self._F_b = float(self._std_cdf(a)), float(self._std_cdf(b))
        self._S_a, self._S_b = float(self._std_cdf(-a)), float(self._std_cdf(-b))
        if a + b > 0:  # mostly above the centre: difference of survival values
            self._mass = self._S_a - self._S_b
        else:
            self._mass = self._F_b - self._F_a
        if not self._mass >= _MIN_MASS:
            args = ", ".join(f"{k}={v}" for k, v in self.params().items())
            raise ValueError(
                f"{self.name}({args}) puts mass {self._mass:.3g} on [sigma_min, sigma_max]="
                f"[{self.sigma_min}, {self.sigma_max}]; it must be at least {_MIN_MASS}"
            )
        self._log_norm = math.log(self._mass) + math.log(scale)

    def log_prob(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        z = (lam - self._centre) / self._scale
        log_p = self._std_log_pdf(z) - self._log_norm
        return torch.where(self._inside(lam), log_p, -math.inf)

    def cdf(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        z = (lam - self._centre) / self._scale
        lower = (self._std_cdf(z) - self._F_a) / self._mass
        upper = 1 - (self._std_cdf(-z) - self._S_b) / self._mass
        value = torch.where(z < 0, lower, upper).clamp(0, 1)
        value = torch.where(lam < self.lam_min, 0.0, value)
        return torch.where(lam > self.lam_max, 1.0, value)

    def icdf(self, u: Tensor) -> Tensor:
        u = _as_float64(u).clamp(0, 1)
        # F(z) = (1 − u)·F(a) + u·F(b) and S(z) = (1 − u)·S(a) + u·S(b): convex mixtures, no
        # cancellation; invert whichever is below 1/2.
        P = (1 - u) * self._F_a + u * self._F_b
        Q = (1 - u) * self._S_a + u * self._S_b
        z = torch.where(P < 0.5, self._std_icdf(P), -self._std_icdf(Q))
        return (self._centre + self._scale * z).clamp(self.lam_min, self.lam_max)


class LogNormal(_SymmetricTruncated):
    """EDM's log-normal noise levels, ``ln σ ~ N(P_mean, P_std²)`` (Karras et al. 2022, Table 1).

    Over λ: ``λ ~ N(−2·P_mean, (2·P_std)²)``, truncated to the run's range.
    """

    name = "lognormal"

    def __init__(
        self, P_mean: float = -1.2, P_std: float = 1.2, *, sigma_min: float, sigma_max: float
    ) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.P_mean = check_real("P_mean", P_mean)
        self.P_std = check_real("P_std", P_std)
        if not self.P_std > 0:
            raise ValueError(f"P_std must be > 0, but got P_std={self.P_std}")
        self._truncate(-2.0 * self.P_mean, 2.0 * self.P_std)

    @staticmethod
    def _std_cdf(z: Tensor) -> Tensor:
        # Φ(z) = erfc(−z/√2)/2; torch.special.ndtr loses relative precision below z ≈ −5 and
        # underflows to 0 at z = −10, erfc keeps it down to z ≈ −37.
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    @staticmethod
    def _std_icdf(u: Tensor) -> Tensor:
        return torch.special.ndtri(u)

    @staticmethod
    def _std_log_pdf(z: Tensor) -> Tensor:
        return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)

    def params(self) -> dict[str, float | list[float]]:
        return {"P_mean": self.P_mean, "P_std": self.P_std}


def _log_cosh(y: Tensor) -> Tensor:
    y = y.abs()
    return y + torch.log1p(torch.exp(-2 * y)) - math.log(2)


class Cosine(_SymmetricTruncated):
    """Uniform ``t`` under the shifted cosine schedule (Nichol & Dhariwal 2021; Hoogeboom et al.
    2023): ``λ = −2·ln tan(πt/2) + shift``, so ``p(λ) = sech((λ − shift)/2)/(2π)`` with CDF
    ``(2/π)·atan(exp((λ − shift)/2))`` (Kingma & Gao 2023, App. D.1); truncated."""

    name = "cosine"

    def __init__(self, shift: float = 0.0, *, sigma_min: float, sigma_max: float) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.shift = check_real("shift", shift)
        self._truncate(self.shift, 1.0)

    @staticmethod
    def _std_cdf(z: Tensor) -> Tensor:
        return (2 / math.pi) * torch.atan(torch.exp(z / 2))

    @staticmethod
    def _std_icdf(u: Tensor) -> Tensor:
        return 2 * torch.log(torch.tan(math.pi * u / 2))

    @staticmethod
    def _std_log_pdf(z: Tensor) -> Tensor:
        return -_log_cosh(z / 2) - math.log(2 * math.pi)

    def params(self) -> dict[str, float | list[float]]:
        return {"shift": self.shift}


class Laplace(_SymmetricTruncated):
    """Laplace noise levels in λ (Hang et al. 2024, "Improved Noise Schedule for Diffusion
    Training", §2): ``p(λ) = exp(−|λ − mu|/b)/(2b)``, CDF ``exp((λ − mu)/b)/2`` below ``mu``;
    truncated to the run's range. Their schedule ``λ(t) = mu − b·sgn(0.5 − t)·ln(1 − 2|t − 0.5|)``
    with uniform ``t`` draws exactly this law; they use ``mu = 0``, ``b = 0.5`` (0.75 at 512²)."""

    name = "laplace"

    def __init__(
        self, mu: float = 0.0, b: float = 0.5, *, sigma_min: float, sigma_max: float
    ) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.mu = check_real("mu", mu)
        self.b = check_real("b", b)
        if not self.b > 0:
            raise ValueError(f"b must be > 0, but got b={self.b}")
        self._truncate(self.mu, self.b)

    @staticmethod
    def _std_cdf(z: Tensor) -> Tensor:
        half_tail = 0.5 * torch.exp(-z.abs())  # exact in both tails: F(z) = e^{z}/2 for z < 0
        return torch.where(z < 0, half_tail, 1 - half_tail)

    @staticmethod
    def _std_icdf(u: Tensor) -> Tensor:
        return torch.where(u < 0.5, torch.log(2 * u), -torch.log(2 * (1 - u)))

    @staticmethod
    def _std_log_pdf(z: Tensor) -> Tensor:
        return -z.abs() - math.log(2)

    def params(self) -> dict[str, float | list[float]]:
        return {"mu": self.mu, "b": self.b}


class Uniform(Density):
    """Uniform in λ on ``[lam_min, lam_max]`` (by default the run's whole range), which must lie
    within the run's range. ``params()`` gives the resolved bounds."""

    name = "uniform"

    def __init__(
        self,
        lam_min: float | None = None,
        lam_max: float | None = None,
        *,
        sigma_min: float,
        sigma_max: float,
    ) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        run_min, run_max = self.lam_min, self.lam_max
        tol = _tolerance(run_min, run_max)
        lo = run_min if lam_min is None else check_real("lam_min", lam_min)
        hi = run_max if lam_max is None else check_real("lam_max", lam_max)
        if not run_min - tol <= lo < run_max:
            raise ValueError(
                f"lam_min must be in [{run_min}, {run_max}) (the run's lam range, from "
                f"sigma_max={self.sigma_max} and sigma_min={self.sigma_min}), "
                f"but got lam_min={lo}"
            )
        if not lo < hi <= run_max + tol:
            raise ValueError(
                f"lam_max must be in (lam_min={lo}, {run_max}] (the run's lam range ends at "
                f"-2 ln sigma_min={run_max}), but got lam_max={hi}"
            )
        self.lam_min, self.lam_max = max(lo, run_min), min(hi, run_max)
        self._log_norm = math.log(self.lam_max - self.lam_min)

    def log_prob(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        inside = torch.full_like(lam, -self._log_norm)
        return torch.where(self._inside(lam), inside, -math.inf)

    def cdf(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        return ((lam - self.lam_min) / (self.lam_max - self.lam_min)).clamp(0, 1)

    def icdf(self, u: Tensor) -> Tensor:
        u = _as_float64(u).clamp(0, 1)
        return (self.lam_min + u * (self.lam_max - self.lam_min)).clamp(self.lam_min, self.lam_max)

    def params(self) -> dict[str, float | list[float]]:
        return {"lam_min": self.lam_min, "lam_max": self.lam_max}


def check_real_list(
    name: str, values: Any, *, low: float = -math.inf, high: float = math.inf
) -> list[float]:
    """``values`` as a list of K >= 1 floats in ``(low, high)``, or a ValueError naming
    ``name``; the bounds are exclusive and every entry must be finite."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, but got {name}={values!r}")
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a sequence of numbers, but got {name}={values!r}"
        ) from None
    if len(values) < 1:
        raise ValueError(f"{name} must have K >= 1 entries, but got {name}={values}")
    for k, value in enumerate(values):
        if not (math.isfinite(value) and low < value < high):
            raise ValueError(
                f"{name} must be finite and in ({low}, {high}), but got {name}[{k}]={value} "
                f"in {name}={values}"
            )
    return values


class Piecewise(Density):
    """Piecewise constant in λ on K equal bins of the run's λ range, proportional to
    ``heights`` (any positive scale). Its CDF is piecewise linear and is inverted exactly, as
    in CDCD's time warping (Dieleman et al. 2022, §3)."""

    name = "piecewise"

    def __init__(self, heights: Sequence[float], *, sigma_min: float, sigma_max: float) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.heights = check_real_list("heights", heights, low=0.0)
        K = len(self.heights)
        h = _as_float64(self.heights)
        self._masses = h / h.sum()  # [K]
        self._cum = torch.cat([torch.zeros(1, dtype=torch.float64), self._masses.cumsum(0)])
        self._cum[-1] = 1.0  # [K+1]
        self._width = (self.lam_max - self.lam_min) / K
        self._log_density = torch.log(self._masses / self._width)  # [K]

    def _bin(self, lam: Tensor) -> Tensor:
        index = torch.floor((lam - self.lam_min) / self._width)
        return index.clamp(0, len(self.heights) - 1).to(torch.long)

    def log_prob(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        log_p = self._log_density.to(lam.device)[self._bin(lam)]
        return torch.where(self._inside(lam), log_p, -math.inf)

    def cdf(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        k = self._bin(lam)
        cum, masses = self._cum.to(lam.device), self._masses.to(lam.device)
        frac = ((lam - self.lam_min) / self._width - k.to(lam.dtype)).clamp(0, 1)
        return (cum[k] + masses[k] * frac).clamp(0, 1)

    def icdf(self, u: Tensor) -> Tensor:
        u = _as_float64(u).clamp(0, 1)
        cum, masses = self._cum.to(u.device), self._masses.to(u.device)
        k = (torch.searchsorted(cum, u, right=True) - 1).clamp(0, len(self.heights) - 1)
        frac = ((u - cum[k]) / masses[k]).clamp(0, 1)
        return (self.lam_min + (k + frac) * self._width).clamp(self.lam_min, self.lam_max)

    def params(self) -> dict[str, float | list[float]]:
        return {"heights": list(self.heights)}


class WLam(Density):
    """``p(λ) ∝ W(λ)^split`` on the run's range, ``W`` a member of the family of
    ``objectives.wfamily`` (the bump's ``center``, ``slope_low``, ``slope_high``, ``knee``,
    ``curvature``, or a piecewise ``log_values``). ``split`` in [0, 1] is the share of ``W``
    that sampling carries (0: uniform in λ; 1: ``p ∝ W``); the ``wlam`` weighting carries the
    rest. The log density is interpolated linearly between 4097 grid points, which makes the
    law exactly piecewise exponential (CDF and inverse in closed form)."""

    name = "wlam"

    def __init__(
        self,
        center: float | None = None,
        slope_low: float | None = None,
        slope_high: float | None = None,
        knee: float | None = None,
        curvature: float | None = None,
        log_values: Sequence[float] | None = None,
        split: float = 1.0,
        *,
        sigma_min: float,
        sigma_max: float,
    ) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.shape = make_shape(
            {
                "center": center,
                "slope_low": slope_low,
                "slope_high": slope_high,
                "knee": knee,
                "curvature": curvature,
                "log_values": log_values,
            },
            lam_min=self.lam_min,
            lam_max=self.lam_max,
            owner="density 'wlam'",
        )
        self.split = check_real("split", split)
        if not 0 <= self.split <= 1:
            raise ValueError(f"split must be in [0, 1], but got split={self.split}")
        self._table = ExpTable(self.shape, self.split)

    def log_prob(self, lam: Tensor) -> Tensor:
        lam = _as_float64(lam)
        return torch.where(self._inside(lam), self._table.log_prob(lam), -math.inf)

    def cdf(self, lam: Tensor) -> Tensor:
        return self._table.cdf(_as_float64(lam))

    def icdf(self, u: Tensor) -> Tensor:
        return self._table.icdf(_as_float64(u))

    def table_log_prob(self, lam: Tensor) -> Tensor:
        """:meth:`log_prob` with the end bins' exponentials extended beyond the range."""
        return self._table.log_prob(_as_float64(lam))

    def params(self) -> dict[str, float | list[float]]:
        return {**self.shape.params(), "split": self.split}


DENSITIES: dict[str, type[Density]] = {
    "lognormal": LogNormal,
    "cosine": Cosine,
    "laplace": Laplace,
    "uniform": Uniform,
    "piecewise": Piecewise,
    "wlam": WLam,
}


def make_density(
    name: str, params: Mapping[str, Any] | None, *, sigma_min: float, sigma_max: float
) -> Density:
    """The density registered as ``name`` in :data:`DENSITIES`, truncated to the run's range."""
    return build("density", DENSITIES, name, params, sigma_min=sigma_min, sigma_max=sigma_max)
