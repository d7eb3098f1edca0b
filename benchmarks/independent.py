"""An independent check of sampling quality on a Gaussian mixture, in numpy alone: the exact
denoiser, Heun's sampler, true samples and the sliced 2-Wasserstein distance, written here from
the papers and sharing no code with sigmatune's (``models.analytic``, ``models.samplers``,
``objectives.fid``, ``objectives.distances``). Only the mixture's parameters (means, stds,
weights) are read from the product's object.

- denoiser: D(x; sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)), r_k the
  posterior responsibilities under N(mu_k, (s_k^2 + sigma^2) I) (Karras et al. 2022, eq. 3);
- sampler: Heun (Karras et al. 2022, Algorithm 1), with an Euler step into sigma = 0;
- distance: SW_2 over random unit directions, sorted 1-D projections (Bonneel et al. 2015).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture:
    """sum_k w_k N(mu_k, s_k^2 I) in numpy float64."""

    means: np.ndarray  # [K, d]
    stds: np.ndarray  # [K]
    weights: np.ndarray  # [K], sums to 1

    @classmethod
    def of(cls, mixture: object) -> Mixture:
        """The parameters of a ``models.analytic.GaussianMixture``."""
        return cls(
            np.asarray(mixture.means, dtype=np.float64),  # type: ignore[attr-defined]
            np.asarray(mixture.stds, dtype=np.float64),  # type: ignore[attr-defined]
            np.asarray(mixture.weights, dtype=np.float64),  # type: ignore[attr-defined]
        )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.means.shape[1]))

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The posterior mean E[x0 | x0 + sigma eps = x], x [N, d]."""
        var = self.stds**2 + sigma**2  # [K]
        sq = ((x[:, None, :] - self.means[None, :, :]) ** 2).sum(axis=2)  # [N, K]
        d = x.shape[1]
        log_r = np.log(self.weights) - 0.5 * d * np.log(var) - sq / (2 * var)
        log_r -= log_r.max(axis=1, keepdims=True)
        r = np.exp(log_r)
        r /= r.sum(axis=1, keepdims=True)
        shrink = self.stds**2 / var  # [K]
        # sum_k r_k (mu_k (1 - shrink_k) + shrink_k x)
        return r @ (self.means * (1 - shrink)[:, None]) + (r @ shrink)[:, None] * x


def heun(mixture: Mixture, x: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Karras et al. 2022, Algorithm 1 (deterministic), from x at sigmas[0] to sigmas[-1] = 0."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - mixture.denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - mixture.denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x


def directions(dim: int, count: int, seed: int) -> np.ndarray:
    """``count`` unit vectors uniform on the sphere, [dim, count]."""
    theta = np.random.default_rng(seed).standard_normal((dim, count))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


def sliced_w2(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> float:
    """sqrt(mean over directions of W_2^2 between the 1-D projections): in 1-D the optimal
    coupling pairs sorted values."""
    pa = np.sort(a @ theta, axis=0)
    pb = np.sort(b @ theta, axis=0)
    return float(np.sqrt(((pa - pb) ** 2).mean()))


def sw_of_schedules(
    mixture: Mixture,
    schedules: dict[str, Sequence[float]],
    *,
    num_samples: int,
    sets: int,
    seed: int,
    projections: int = 256,
) -> dict[str, list[float]]:
    """SW_2 to true samples of each schedule's Heun samples, and of fresh true samples
    (``"true_vs_true"``, the floor), on ``sets`` seed sets: per set one noise draw shared by
    every schedule (common random numbers) and one set of true samples."""
    out: dict[str, list[float]] = {name: [] for name in [*schedules, "true_vs_true"]}
    dim = mixture.means.shape[1]
    theta = directions(dim, projections, seed)
    for k in range(sets):
        rng = np.random.default_rng([seed, k])
        truth = mixture.sample(num_samples, rng)
        other = mixture.sample(num_samples, rng)
        eps = rng.standard_normal((num_samples, dim))
        out["true_vs_true"].append(sliced_w2(other, truth, theta))
        for name, sigmas in schedules.items():
            x = heun(mixture, float(sigmas[0]) * eps, [float(s) for s in sigmas])
            out[name].append(sliced_w2(x, truth, theta))
    return out
