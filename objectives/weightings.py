"""Loss weightings w(σ), applied to the loss in the parameterisation's own space.

The per-example loss is ``w(σ)·‖F − F_target‖²`` (``objectives.loss``); with the logSNR
``λ = −2·ln σ`` the families are (Kingma & Gao 2023, Table 1; Hang et al. 2023):

- ``unit``: ``w = 1``;
- ``snr(k)``: ``w = e^{k·λ} = SNR^k``;
- ``min_snr(gamma)``: ``w = min(1, γ·e^{−λ}) = min(SNR, γ)/SNR`` (Min-SNR-γ in ε-space);
- ``sigmoid(b)``: ``w = sigmoid(b − λ)`` (Kingma & Gao 2023, §5);
- ``piecewise(log_weights)``: ``w = exp(log_weights[k])`` on K equal λ-bins of the run's range,
  the end bins extended beyond it;
- ``wlam(shape, split, parameterisation, sigma_data)``: ``w = W/p_λ·c_out²/σ²`` with ``W`` a
  member of ``objectives.wfamily`` and ``p_λ`` the density ``wlam`` of the same shape and
  split, so that the objective's effective weighting is ``W`` itself (normalised so that
  ``E_p[w] = 1``); only valid with that density, that parameterisation and that σ_data.

Each is computed in float64 and returned in σ's dtype, finite and positive.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from sigmatune.objectives.densities import (
    Density,
    WLam,
    build,
    check_real,
    check_real_list,
    check_sigma_range,
    lam_range,
)
from sigmatune.objectives.parameterisations import get_parameterisation
from sigmatune.objectives.wfamily import make_shape

__all__ = [
    "Weighting",
    "Unit",
    "SNR",
    "MinSNR",
    "Sigmoid",
    "PiecewiseWeighting",
    "Piecewise",
    "WLamWeighting",
    "WEIGHTINGS",
    "make_weighting",
]

_MAX_K = 4.0  # |k| of snr(k): e^{k·λ} stays well inside float32 for any usable σ range
_MAX_LOG_WEIGHT = 50.0  # |log_weights| of piecewise: e^{50} ≈ 5e21, finite in float32


def _lam(sigma: Tensor) -> Tensor:
    """logSNR ``λ = −2·ln σ`` in float64."""
    return -2 * torch.log(sigma.to(torch.float64))


def _finish(w: Tensor, sigma: Tensor) -> Tensor:
    """Cast to σ's dtype, keeping the result positive where it would underflow."""
    dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
    return w.to(dtype).clamp_min(torch.finfo(dtype).tiny)


class Weighting(ABC):
    """A loss weighting ``w(σ) > 0``; ``__call__`` maps σ ``[...]`` to ``w`` of the same
    shape and dtype."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, sigma: Tensor) -> Tensor:
        """``w(σ)``: finite, positive, shaped and typed like ``sigma``."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments, without ``sigma_min``/``sigma_max``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Unit(Weighting):
    """``w(σ) = 1``."""

    name = "unit"

    def __call__(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def params(self) -> dict[str, Any]:
        return {}


class SNR(Weighting):
    """``w(σ) = e^{k·λ} = SNR(σ)^k`` with ``SNR = 1/σ²`` (Kingma & Gao 2023, Table 1);
    ``|k| <= 4``."""

    name = "snr"

    def __init__(self, k: float = 1.0) -> None:
        self.k = check_real("k", k)
        if not abs(self.k) <= _MAX_K:
            raise ValueError(f"k must be in [-{_MAX_K}, {_MAX_K}], but got k={self.k}")

    def __call__(self, sigma: Tensor) -> Tensor:
        return _finish(torch.exp(self.k * _lam(sigma)), sigma)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}


class MinSNR(Weighting):
    """Min-SNR-γ (Hang et al. 2023, eq. 9) in ε-space: ``w(σ) = min(1, γ·e^{−λ})``; ``γ > 0``."""

    name = "min_snr"

    def __init__(self, gamma: float = 5.0) -> None:
        self.gamma = check_real("gamma", gamma)
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, but got gamma={self.gamma}")

    def __call__(self, sigma: Tensor) -> Tensor:
        return _finish((self.gamma * torch.exp(-_lam(sigma))).clamp_max(1.0), sigma)

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


class Sigmoid(Weighting):
    """Sigmoid weighting (Kingma & Gao 2023, §5): ``w(σ) = sigmoid(b − λ)``."""

    name = "sigmoid"

    def __init__(self, b: float = 0.0) -> None:
        self.b = check_real("b", b)

    def __call__(self, sigma: Tensor) -> Tensor:
        return _finish(torch.sigmoid(self.b - _lam(sigma)), sigma)

    def params(self) -> dict[str, Any]:
        return {"b": self.b}


class PiecewiseWeighting(Weighting):
    """``w(σ) = exp(log_weights[k])`` on K equal bins of the run's λ range
    ``[−2·ln sigma_max, −2·ln sigma_min]``; λ outside the range takes the end bins' weights.
    Each log-weight must be finite with ``|log_weight| < 50``."""

    name = "piecewise"

    def __init__(self, log_weights: Sequence[float], *, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)
        self.lam_min, self.lam_max = lam_range(self.sigma_min, self.sigma_max)
        self.log_weights = check_real_list(
            "log_weights", log_weights, low=-_MAX_LOG_WEIGHT, high=_MAX_LOG_WEIGHT
        )
        self._width = (self.lam_max - self.lam_min) / len(self.log_weights)
        self._weights = torch.exp(torch.tensor(self.log_weights, dtype=torch.float64))  # [K]

    def __call__(self, sigma: Tensor) -> Tensor:
        index = torch.floor((_lam(sigma) - self.lam_min) / self._width)
        index = index.nan_to_num(0.0).clamp(0, len(self.log_weights) - 1).to(torch.long)
        return _finish(self._weights.to(sigma.device)[index], sigma)

    def params(self) -> dict[str, Any]:
        return {"log_weights": list(self.log_weights)}


Piecewise = PiecewiseWeighting  # the contract's name for it in this module


class WLamWeighting(Weighting):
    """The loss weight that makes an objective's effective weighting a chosen ``W(λ)``.

    ``W`` is a member of ``objectives.wfamily`` (the bump's five numbers or a piecewise
    ``log_values``); sampling draws λ from the density ``wlam`` with the same shape and
    ``split`` (``p_λ ∝ W^split``), or, given ``sampling`` (a ``wlam`` density's params), from
    that density, and this weighting is ``w(σ) = W(λ)/p_λ(λ)·c_out(σ)²/σ²``
    in the ``parameterisation``'s own space, so that ``p_λ·w·σ²/c_out² = W`` exactly (up to one
    constant, chosen so that ``E_p[w] = 1``). It checks, through :meth:`check_objective`, that
    the objective it joins has that density, parameterisation and ``sigma_data``.
    """

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
        parameterisation: str = "eps",
        sigma_data: float = 1.0,
        sampling: Mapping[str, Any] | None = None,
        *,
        sigma_min: float,
        sigma_max: float,
    ) -> None:
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)
        shape = {
            "center": center,
            "slope_low": slope_low,
            "slope_high": slope_high,
            "knee": knee,
            "curvature": curvature,
            "log_values": log_values,
        }
        lam_min, lam_max = lam_range(self.sigma_min, self.sigma_max)
        self.shape = make_shape(shape, lam_min=lam_min, lam_max=lam_max, owner="weighting 'wlam'")
        if sampling is None:  # p ∝ W^split
            self.density = WLam(**shape, split=split, sigma_min=sigma_min, sigma_max=sigma_max)
        else:  # p a member of its own (the wlam density with these params)
            if not isinstance(sampling, Mapping):
                raise ValueError(
                    f"sampling must be the params of a 'wlam' density (a table), but got "
                    f"sampling={sampling!r}"
                )
            if split != 1.0:
                raise ValueError(
                    f"split belongs to the sampling density's params when sampling is given, but "
                    f"got split={split!r} and sampling={dict(sampling)}"
                )
            self.density = WLam(**dict(sampling), sigma_min=sigma_min, sigma_max=sigma_max)
        self.sampling = None if sampling is None else self.density.params()
        self.split = self.density.split
        self._coefficients = get_parameterisation(parameterisation)
        self.parameterisation = parameterisation
        self.sigma_data = check_real("sigma_data", sigma_data)
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, but got sigma_data={self.sigma_data}")
        lam = torch.linspace(self.density.lam_min, self.density.lam_max, 4097, dtype=torch.float64)
        log_mass = self.shape.log_w(lam) + self._log_factor(torch.exp(-lam / 2))
        top = float(log_mass.max())
        self._log_norm = top + math.log(float(torch.trapezoid(torch.exp(log_mass - top), lam)))

    def _log_factor(self, sigma: Tensor) -> Tensor:
        """``ln(c_out²/σ²)``, float64."""
        c_out = self._coefficients(sigma, self.sigma_data).c_out
        return 2 * (torch.log(c_out.abs()) - torch.log(sigma))

    def __call__(self, sigma: Tensor) -> Tensor:
        s = sigma.to(torch.float64)
        lam = -2 * torch.log(s)
        log_w = (
            self.shape.log_w(lam)
            - self.density.table_log_prob(lam)
            + self._log_factor(s)
            - self._log_norm
        )
        return _finish(torch.exp(log_w), sigma)

    def check_objective(self, parameterisation: str, density: Density, sigma_data: float) -> None:
        """A ValueError unless the objective has this weighting's parameterisation,
        ``sigma_data`` and the ``wlam`` density of the same shape and split."""
        if parameterisation != self.parameterisation:
            raise ValueError(
                f"weighting 'wlam' was made for parameterisation={self.parameterisation!r}, but "
                f"the objective's parameterisation is {parameterisation!r}"
            )
        if not math.isclose(float(sigma_data), self.sigma_data, rel_tol=1e-9):
            raise ValueError(
                f"weighting 'wlam' was made for sigma_data={self.sigma_data}, but the "
                f"objective's sigma_data is {sigma_data}"
            )
        if not isinstance(density, WLam) or density.params() != self.density.params():
            raise ValueError(
                f"weighting 'wlam' needs the density 'wlam' with params {self.density.params()} "
                f"(the same shape and split), but got density {density!r}"
            )

    def params(self) -> dict[str, Any]:
        if self.sampling is None:
            return {
                **self.density.params(),
                "parameterisation": self.parameterisation,
                "sigma_data": self.sigma_data,
            }
        return {
            **self.shape.params(),
            "parameterisation": self.parameterisation,
            "sigma_data": self.sigma_data,
            "sampling": dict(self.sampling),
        }


WEIGHTINGS: dict[str, type[Weighting]] = {
    "unit": Unit,
    "snr": SNR,
    "min_snr": MinSNR,
    "sigmoid": Sigmoid,
    "piecewise": PiecewiseWeighting,
    "wlam": WLamWeighting,
}


def make_weighting(
    name: str, params: Mapping[str, Any] | None, *, sigma_min: float, sigma_max: float
) -> Weighting:
    """The weighting registered as ``name`` in :data:`WEIGHTINGS`; the run's σ range goes to
    the weightings that take it (``piecewise``) and is checked for all."""
    check_sigma_range(sigma_min, sigma_max)
    return build("weighting", WEIGHTINGS, name, params, sigma_min=sigma_min, sigma_max=sigma_max)
