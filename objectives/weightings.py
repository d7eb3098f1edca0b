"""Loss weightings w(σ), applied to the loss in the parameterisation's own space.

The per-example loss is ``w(σ)·‖F − F_target‖²`` (``objectives.loss``); with the logSNR
``λ = −2·ln σ`` the families are (Kingma & Gao 2023, Table 1; Hang et al. 2023):

- ``unit``: ``w = 1``;
- ``snr(k)``: ``w = e^{k·λ} = SNR^k``;
- ``min_snr(gamma)``: ``w = min(1, γ·e^{−λ}) = min(SNR, γ)/SNR`` (Min-SNR-γ in ε-space);
- ``sigmoid(b)``: ``w = sigmoid(b − λ)`` (Kingma & Gao 2023, §5);
- ``piecewise(log_weights)``: ``w = exp(log_weights[k])`` on K equal λ-bins of the run's range,
  the end bins extended beyond it.

Each is computed in float64 and returned in σ's dtype, finite and positive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from sigmatune.objectives.densities import (
    build,
    check_real,
    check_real_list,
    check_sigma_range,
    lam_range,
)

__all__ = [
    "Weighting",
    "Unit",
    "SNR",
    "MinSNR",
    "Sigmoid",
    "PiecewiseWeighting",
    "Piecewise",
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

WEIGHTINGS: dict[str, type[Weighting]] = {
    "unit": Unit,
    "snr": SNR,
    "min_snr": MinSNR,
    "sigmoid": Sigmoid,
    "piecewise": PiecewiseWeighting,
}


def make_weighting(
    name: str, params: Mapping[str, Any] | None, *, sigma_min: float, sigma_max: float
) -> Weighting:
    """The weighting registered as ``name`` in :data:`WEIGHTINGS`; the run's σ range goes to
    the weightings that take it (``piecewise``) and is checked for all."""
    check_sigma_range(sigma_min, sigma_max)
    return build("weighting", WEIGHTINGS, name, params, sigma_min=sigma_min, sigma_max=sigma_max)
