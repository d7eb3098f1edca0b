"""The preconditioned denoiser D(x, sigma) around a raw network F (Karras et al. 2022, eq. 7).

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

with the coefficients of one of ``objectives.parameterisations.PARAMETERISATIONS``. A
``Denoiser`` is a k-diffusion-style callable ``D(x, sigma) -> x0_hat``, so the samplers of
``models.samplers`` take it directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sigmatune.models.schedules import per_example_sigma
from sigmatune.objectives.parameterisations import Coefficients, get_parameterisation

__all__ = ["Denoiser"]


class Denoiser(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7).

    Args:
        net: the raw network, ``net(x_in [B, ...], c_noise [B]) -> [B, ...]``.
        parameterisation: a key of ``PARAMETERISATIONS`` (``edm``, ``v``, ``eps``, ``x0``,
            ``flow``).
        sigma_data: standard deviation of the data, measured on the data set.

    ``sigma`` is a scalar or a tensor of shape [B]; it is broadcast over the non-batch
    dimensions of ``x``. The network runs in the dtype of its parameters; the coefficients and
    the skip connection in the wider of that and ``x``'s dtype; D is returned in ``x``'s dtype,
    so a sampler may keep its state in float64.
    """

    def __init__(self, net: nn.Module, parameterisation: str, sigma_data: float) -> None:
        super().__init__()
        if not float(sigma_data) > 0:
            raise ValueError(f"sigma_data must be > 0, but got sigma_data={sigma_data!r}")
        self.net = net
        self.parameterisation = parameterisation
        self.sigma_data = float(sigma_data)
        self._coefficients = get_parameterisation(parameterisation)

    def _dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the network runs in: that of its parameters (x's when it has none)."""
        param = next(self.net.parameters(), None)
        return param.dtype if param is not None else x.dtype

    def _coefficient_dtype(self, x: Tensor) -> torch.dtype:
        """Coefficients in the wider of x's and the network's dtype."""
        if not x.is_floating_point():
            return self._dtype(x)
        return torch.promote_types(x.dtype, self._dtype(x))

    def _sigma(self, x: Tensor, sigma: Tensor | float, dtype: torch.dtype) -> Tensor:
        """sigma scalar or [B] -> [B] in ``dtype`` on x's device."""
        return per_example_sigma(sigma, x, dtype)

    def coefficients(self, x: Tensor, sigma: Tensor | float) -> Coefficients:
        """(c_skip, c_out, c_in) shaped [B, 1, ..., 1] to broadcast against x, and c_noise [B]."""
        sigma_t = self._sigma(x, sigma, self._coefficient_dtype(x))
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma_t, self.sigma_data)
        view = (-1,) + (1,) * (x.ndim - 1)
        return Coefficients(
            c_skip.reshape(view), c_out.reshape(view), c_in.reshape(view), c_noise.reshape(-1)
        )

    def _F(self, x: Tensor, c: Coefficients) -> Tensor:
        net_dtype = self._dtype(x)
        x_in = (c.c_in * x.to(c.c_in.dtype)).to(net_dtype)
        return self.net(x_in, c.c_noise.to(net_dtype))

    def F(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """The raw network output F(c_in x, c_noise), in the network's dtype."""
        return self._F(x, self.coefficients(x, sigma))

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), in x's dtype and shape."""
        c = self.coefficients(x, sigma)
        F_x = self._F(x, c).to(c.c_out.dtype)
        return (c.c_skip * x.to(c.c_skip.dtype) + c.c_out * F_x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"parameterisation={self.parameterisation!r}, sigma_data={self.sigma_data:.4g}"
