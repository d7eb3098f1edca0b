"""Where a trained model spends its capacity: its denoising error per logSNR bin.

For each bin ``[λ_j, λ_{j+1})`` of the run's range, ``per_bin`` examples ``x0`` are noised at
a λ drawn uniformly within the bin (``σ = e^{−λ/2}``, ``x = x0 + σ·ε``) and the model's
``D(x, σ)`` is compared per coordinate with a target:

- ``reference = "exact"`` (a data set with an exact distribution, e.g. a Gaussian mixture):
  the target is the exact denoiser ``E[x0 | x]`` (``models.analytic.GaussianMixture.denoise``),
  so the figure is the model's *excess* error, ``‖D − D*‖²/d``: 0 for a perfect model;
- ``reference = "data"``: the target is ``x0`` itself, the denoising loss ``‖D − x0‖²/d`` on
  the examples given (pass held-out ones), which includes the irreducible part
  ``E‖D* − x0‖²/d``.

The draws come from one seeded generator, so two models see the same ``x0``, λ and ε (common
random numbers) and their per-bin errors compare directly. No Optuna here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["LamErrors", "denoising_error_by_lam", "lam_edges"]

REFERENCES = ("exact", "data")


@dataclass(frozen=True)
class LamErrors:
    """Per-bin denoising errors: ``edges`` [B+1] (λ, increasing), ``error`` [B] (mean squared
    error per coordinate), ``stderr`` [B] (its standard error over the bin's examples),
    ``per_bin`` examples each, and what they are measured against (``reference``)."""

    edges: list[float]
    error: list[float]
    stderr: list[float]
    per_bin: int
    reference: str

    @property
    def centres(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "error": list(self.error),
            "stderr": list(self.stderr),
            "per_bin": self.per_bin,
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LamErrors:
        return cls(
            edges=[float(v) for v in d["edges"]],
            error=[float(v) for v in d["error"]],
            stderr=[float(v) for v in d["stderr"]],
            per_bin=int(d["per_bin"]),
            reference=str(d["reference"]),
        )


def lam_edges(sigma_min: float, sigma_max: float, bins: int = 16) -> Tensor:
    """``bins`` equal λ-bins over ``[−2 ln sigma_max, −2 ln sigma_min]`` (float64 [bins+1])."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, but got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, but got bins={bins!r}")
    return torch.linspace(
        -2 * math.log(sigma_max), -2 * math.log(sigma_min), bins + 1, dtype=torch.float64
    )


def denoising_error_by_lam(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    edges: Tensor | Sequence[float],
    *,
    exact: Callable[[Tensor, Tensor], Tensor] | None = None,
    per_bin: int = 256,
    seed: int = 0,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> LamErrors:
    """The denoising error of ``denoiser`` in each λ bin of ``edges`` (see the module).

    Args:
        denoiser: ``D(x, sigma)`` with ``sigma`` of shape [batch] (k-diffusion's convention).
        x0: the examples [N, *shape] to noise (drawn with replacement, seeded): held-out data,
            or exact samples of the distribution that ``exact`` denoises.
        edges: increasing λ bin edges [B+1].
        exact: the exact denoiser ``E[x0 | x]`` (then ``reference = "exact"``), or None
            (``reference = "data"``).
        per_bin: examples per bin; seed: the draws' seed; batch_size: examples per call.
        device: where ``denoiser`` runs (default: x0's device).
    """
    edges_t = torch.as_tensor(edges, dtype=torch.float64).detach().cpu()
    if edges_t.ndim != 1 or edges_t.numel() < 2 or not torch.isfinite(edges_t).all():
        raise ValueError(f"edges must be at least 2 finite λ's, but got edges={edges_t.tolist()}")
    if not bool((edges_t[1:] > edges_t[:-1]).all()):
        raise ValueError(f"edges must be strictly increasing, but got edges={edges_t.tolist()}")
    if isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 2:
        raise ValueError(f"per_bin must be an integer >= 2, but got per_bin={per_bin!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, but got batch_size={batch_size!r}")
    if x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be [N, *shape] with N >= 1, but got shape={tuple(x0.shape)}")
    device = torch.device(device) if device is not None else x0.device
    bins = edges_t.numel() - 1
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.randint(0, x0.shape[0], (bins * per_bin,), generator=generator)
    u = torch.rand(bins * per_bin, generator=generator, dtype=torch.float64)
    lo = edges_t[:-1].repeat_interleave(per_bin)
    hi = edges_t[1:].repeat_interleave(per_bin)
    lam = lo + u * (hi - lo)  # [bins·per_bin], bin j's examples together
    noise = torch.randn((bins * per_bin, *x0.shape[1:]), generator=generator, dtype=torch.float64)
    errors = torch.empty(bins * per_bin, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, bins * per_bin, batch_size):
            sl = slice(start, start + batch_size)
            clean = x0[index[sl]].to(torch.float64)
            sigma = torch.exp(-lam[sl] / 2)
            shape = (-1,) + (1,) * (clean.ndim - 1)
            x = clean + sigma.view(shape) * noise[sl]
            dtype = x0.dtype if x0.dtype.is_floating_point else torch.float32
            out = denoiser(x.to(device, dtype), sigma.to(device, dtype)).to("cpu", torch.float64)
            target = clean if exact is None else exact(x, sigma).to("cpu", torch.float64)
            errors[sl] = (out - target).reshape(out.shape[0], -1).square().mean(dim=1)
    per = errors.view(bins, per_bin)
    return LamErrors(
        edges=edges_t.tolist(),
        error=per.mean(dim=1).tolist(),
        stderr=(per.std(dim=1) / math.sqrt(per_bin)).tolist(),
        per_bin=per_bin,
        reference="data" if exact is None else "exact",
    )
