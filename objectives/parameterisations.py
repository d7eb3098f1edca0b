"""Output parameterisations of the denoiser, as preconditioning coefficients of σ.

Every parameterisation is the same denoiser written four ways (Karras et al. 2022, eq. 7):

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)),

with the variance-exploding input ``x = x0 + σ·ε``. The network ``F`` is trained towards
``F_target = (x0 − c_skip·x)/c_out`` (eq. 8), so the choice of coefficients decides what ``F``
predicts: ε (``eps``), x0 (``x0``), EDM's mix (``edm``), the v-prediction of Salimans & Ho
(``v``) or the rectified-flow velocity ``ε − x0`` (``flow``).

``c_noise`` is EDM's ``ln(σ)/4`` for every parameterisation, so the network's noise embedding
sees the same input whatever it predicts; only ``c_skip``, ``c_out`` and ``c_in`` differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Coefficients",
    "edm",
    "v",
    "eps",
    "x0",
    "flow",
    "PARAMETERISATIONS",
    "get_parameterisation",
]


class Coefficients(NamedTuple):
    """Preconditioning coefficients ``(c_skip, c_out, c_in, c_noise)``, each shaped like σ."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def _c_noise(sigma: Tensor) -> Tensor:
    """EDM's noise conditioning ``c_noise = ln(σ)/4`` (Karras et al. 2022, Table 1)."""
    return torch.log(sigma) / 4


def edm(sigma: Tensor, sigma_data: float) -> Coefficients:
    """EDM preconditioning (Karras et al. 2022, Table 1 / eq. 7).

    ``c_skip = σd²/(σ²+σd²)``, ``c_out = σ·σd/sqrt(σ²+σd²)``, ``c_in = 1/sqrt(σ²+σd²)``,
    ``c_noise = ln(σ)/4``.
    """
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    return Coefficients(c_skip, c_out, c_in, _c_noise(sigma))


def v(sigma: Tensor, sigma_data: float) -> Coefficients:
    """v-prediction (Salimans & Ho 2022): EDM's coefficients with ``σd = 1``.

    ``sigma_data`` is accepted for a uniform signature and ignored. ``F`` then predicts
    ``(σ·x0 − ε)/sqrt(1+σ²)``, the negative of Salimans & Ho's ``v = α·ε − σ_VP·x0``.
    """
    return edm(sigma, 1.0)


def eps(sigma: Tensor, sigma_data: float) -> Coefficients:
    """ε-prediction (Ho et al. 2020; Karras et al. 2022, Table 1 with the EDM input scaling).

    ``c_skip = 1``, ``c_out = −σ``, ``c_in = 1/sqrt(σ²+σd²)``, ``c_noise = ln(σ)/4``.
    """
    c_skip = torch.ones_like(sigma)
    c_out = -sigma
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    return Coefficients(c_skip, c_out, c_in, _c_noise(sigma))


def x0(sigma: Tensor, sigma_data: float) -> Coefficients:
    """x0-prediction, scaled to unit variance: ``c_skip = 0``, ``c_out = σd``,
    ``c_in = 1/sqrt(σ²+σd²)``, ``c_noise = ln(σ)/4`` (F predicts ``x0/σd``)."""
    c_skip = torch.zeros_like(sigma)
    c_out = torch.full_like(sigma, sigma_data)
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    return Coefficients(c_skip, c_out, c_in, _c_noise(sigma))


def flow(sigma: Tensor, sigma_data: float) -> Coefficients:
    """Rectified flow (Liu et al. 2022; Esser et al. 2024) in the VE view.

    With ``t = σ/(1+σ)`` the flow input is ``x_t = (1−t)·x0 + t·ε = x/(1+σ)`` and ``F``
    predicts the velocity ``ε − x0``: ``c_skip = 1/(1+σ)``, ``c_out = −σ/(1+σ)``,
    ``c_in = 1/(1+σ)``, ``c_noise = ln(σ)/4``. ``sigma_data`` is ignored.
    """
    c_skip = 1 / (1 + sigma)
    c_out = -sigma / (1 + sigma)
    c_in = 1 / (1 + sigma)
    return Coefficients(c_skip, c_out, c_in, _c_noise(sigma))


PARAMETERISATIONS: dict[str, Callable[[Tensor, float], Coefficients]] = {
    "edm": edm,
    "v": v,
    "eps": eps,
    "x0": x0,
    "flow": flow,
}


def get_parameterisation(name: str) -> Callable[[Tensor, float], Coefficients]:
    """The coefficient function registered as ``name`` in :data:`PARAMETERISATIONS`."""
    if name not in PARAMETERISATIONS:
        valid = ", ".join(sorted(PARAMETERISATIONS))
        raise ValueError(f"unknown parameterisation {name!r}; valid: {valid}")
    return PARAMETERISATIONS[name]
