"""An analytic Gaussian mixture: exact samples and the exact denoiser E[x0 | x0 + sigma*eps].

With this denoiser in place of a trained network, the error of a sampler is discretisation
error alone, which makes the mixture the ground truth for samplers and step schedules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sigmatune.models.schedules import per_example_sigma

__all__ = ["GaussianMixture"]


def _as_float64(value: Tensor | Sequence[float] | float, name: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite, but got {name}={tensor.tolist()}")
    return tensor


class GaussianMixture:
    """A mixture of K isotropic Gaussians in d dimensions: p(x0) = sum_k w_k N(x0; mu_k, s_k^2 I).

    Args:
        means: component means, shape [K, d].
        stds: one standard deviation per component, shape [K], or a scalar shared by all.
        weights: mixture weights, shape [K]; positive, normalised here to sum to 1.
            Defaults to equal weights.

    The noisy marginal p_sigma(x) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I) is again a
    mixture, so the posterior mean (Tweedie's formula, Efron 2011; Karras et al. 2022 eq. 3)
    has a closed form; see :meth:`denoise`. Parameters are held in float64.
    """

    def __init__(
        self,
        means: Tensor | Sequence[Sequence[float]],
        stds: Tensor | Sequence[float] | float,
        weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        means_t = _as_float64(means, "means")
        if means_t.ndim != 2 or means_t.shape[0] < 1 or means_t.shape[1] < 1:
            raise ValueError(
                f"means must have shape [K, d] with K, d >= 1, but got shape={tuple(means_t.shape)}"
            )
        K = means_t.shape[0]
        stds_t = _as_float64(stds, "stds")
        if stds_t.ndim == 0:
            stds_t = stds_t.expand(K).clone()
        if stds_t.shape != (K,):
            raise ValueError(
                f"stds must be a scalar or have shape [K]=[{K}], "
                f"but got shape={tuple(stds_t.shape)}"
            )
        if not (stds_t > 0).all():
            raise ValueError(f"stds must be > 0, but got stds={stds_t.tolist()}")
        weights_t = (
            torch.ones(K, dtype=torch.float64)
            if weights is None
            else _as_float64(weights, "weights")
        )
        if weights_t.shape != (K,):
            raise ValueError(
                f"weights must have shape [K]=[{K}], but got shape={tuple(weights_t.shape)}"
            )
        if not (weights_t > 0).all():
            raise ValueError(f"weights must be > 0, but got weights={weights_t.tolist()}")
        self.means = means_t  # [K, d], float64
        self.stds = stds_t  # [K], float64
        self.weights = weights_t / weights_t.sum()  # [K], float64
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
        """``n_modes`` equally weighted 2-D Gaussians evenly spaced on a circle of ``radius``."""
        if n_modes < 1:
            raise ValueError(f"n_modes must be >= 1, but got n_modes={n_modes}")
        if not radius > 0:
            raise ValueError(f"radius must be > 0, but got radius={radius}")
        angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(means, std)

    @classmethod
    def random(
        cls,
        d: int = 64,
        K: int = 8,
        seed: int = 0,
        std_range: tuple[float, float] = (0.05, 0.25),
    ) -> GaussianMixture:
        """A reproducible random mixture: means uniform in [-0.8, 0.8]^d, stds uniform in
        ``std_range``, weights uniform in [0.5, 1.5] before normalisation."""
        if d < 1:
            raise ValueError(f"d must be >= 1, but got d={d}")
        if K < 1:
            raise ValueError(f"K must be >= 1, but got K={K}")
        lo, hi = std_range
        if not 0 < lo <= hi:
            raise ValueError(f"std_range must satisfy 0 < lo <= hi, but got std_range={std_range}")
        g = torch.Generator().manual_seed(seed)
        means = 0.8 * (2 * torch.rand(K, d, generator=g, dtype=torch.float64) - 1)
        stds = lo + (hi - lo) * torch.rand(K, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)

    # ------------------------------------------------------------------ properties

    @property
    def K(self) -> int:
        """Number of components."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Dimension d of a sample."""
        return self.means.shape[1]

    @property
    def mean(self) -> Tensor:
        """Mixture mean sum_k w_k mu_k, shape [d]."""
        return self.weights @ self.means

    @property
    def sigma_data(self) -> float:
        """Overall standard deviation per coordinate, sqrt(E||x0 - E x0||^2 / d)."""
        centred = self.means - self.mean
        total = self.weights @ (self.dim * self.stds**2 + (centred**2).sum(dim=1))
        return math.sqrt(float(total) / self.dim)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """Draw ``n`` exact samples x0 ~ p, shape [n, d] (CPU)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, but got n={n}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * eps).to(dtype)

    # ------------------------------------------------------------------ densities

    def _params(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device[key] = (
                self.means.to(device, dtype),
                self.stds.to(device, dtype),
                self.weights.to(device, dtype),
            )
        return self._on_device[key]

    def _flatten(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """x [B, *shape] -> [B, d]; sigma scalar or [B] -> [B, 1], both in the compute dtype."""
        if x.ndim < 1:
            raise ValueError(f"x must have a batch dimension, but got shape={tuple(x.shape)}")
        means, _, _ = self._params(x.device)
        x_flat = x.reshape(x.shape[0], -1).to(means.dtype)
        if x_flat.shape[1] != self.dim:
            raise ValueError(
                f"x must hold {self.dim} values per example, but got shape={tuple(x.shape)}"
            )
        sigma_t = per_example_sigma(sigma, x, means.dtype)
        return x_flat, sigma_t[:, None]

    def _log_joint(self, x_flat: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log(w_k N(x; mu_k, v_k I)) [B, K] and v_k = s_k^2 + sigma^2 [B, K]."""
        means, stds, weights = self._params(x_flat.device)
        var = stds[None, :] ** 2 + sigma**2  # [B, K]
        # ||x - mu_k||^2 expanded, clamped against cancellation.
        sq = (
            (x_flat**2).sum(dim=1, keepdim=True)
            - 2 * x_flat @ means.T
            + (means**2).sum(dim=1)[None, :]
        ).clamp_min(0)  # [B, K]
        d = self.dim
        log_joint = weights.log()[None, :] - 0.5 * d * torch.log(2 * math.pi * var) - sq / (2 * var)
        return log_joint, var

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x) = log sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I), shape [B], float64.

        ``sigma = 0`` gives the data density; x may be [B, d] or [B, *shape].
        """
        x_flat, sigma_t = self._flatten(x, sigma)
        log_joint, _ = self._log_joint(x_flat, sigma_t)
        return torch.logsumexp(log_joint, dim=1)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact denoiser D(x, sigma) = E[x0 | x0 + sigma*eps = x] (Karras et al. 2022, eq. 3).

        With responsibilities r_k(x) = softmax_k(log w_k + log N(x; mu_k, (s_k^2+sigma^2) I))
        (computed by log-sum-exp), D(x) = sum_k r_k (mu_k + s_k^2/(s_k^2+sigma^2) (x - mu_k)).
        ``x`` is [B, d] or [B, *shape] (flattened to d values), ``sigma`` a scalar or [B], > 0.
        Computed in float64; returned in x's dtype and shape.
        """
        x_flat, sigma_t = self._flatten(x, sigma)
        log_joint, var = self._log_joint(x_flat, sigma_t)
        resp = torch.softmax(log_joint, dim=1)  # [B, K]
        means, stds, _ = self._params(x.device)
        shrink = resp * stds[None, :] ** 2 / var  # [B, K]: r_k s_k^2 / v_k
        # sum_k r_k mu_k (1 - s_k^2/v_k) + x sum_k r_k s_k^2/v_k
        out = (resp - shrink) @ means + shrink.sum(dim=1, keepdim=True) * x_flat
        return out.to(x.dtype).reshape(x.shape)

    __call__ = denoise

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.dim}, sigma_data={self.sigma_data:.4g})"
