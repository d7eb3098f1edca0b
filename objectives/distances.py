"""Sample-based distances between point clouds, independent of any feature extractor.

Used where the true distribution is known (the analytic Gaussian mixtures), to check what a
feature-based FID says with a distance that shares nothing with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein"]


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two clouds of the same size.

    Both are flattened to [N, d] and projected on ``num_projections`` directions drawn
    uniformly on the sphere (seeded, so two calls compare like with like); in 1-D the optimal
    coupling pairs sorted values, so SW_2^2 is the mean over directions of the mean squared
    difference of the sorted projections. Computed in float64.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must hold the same number of points, but got {a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] == 0:
        raise ValueError("a and b must hold at least one point each")
    fa = a.reshape(a.shape[0], -1).double().cpu()
    fb = b.reshape(b.shape[0], -1).double().cpu()
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(
            f"a and b must have the same dimension, but got {fa.shape[1]} and {fb.shape[1]}"
        )
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(fa.shape[1], int(num_projections), generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # [d, P], unit columns
    pa = (fa @ theta).sort(dim=0).values  # [N, P]
    pb = (fb @ theta).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())
