"""The Fréchet distance of generated samples to a reference set, on torchmetrics.

The Fréchet distance between the Gaussians fitted to two sets of features
(Dowson & Landau 1982; FID: Heusel et al. 2017, eq. 6),

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

is computed in float64 by one pure function, :func:`frechet_distance_from_stats`, whatever the
features: every number this module returns goes through it.

:class:`Scorer` holds the reference side. It extracts features with an extractor of
:data:`~objectives.features.EXTRACTORS` (``inception``, ``classifier``, ``raw``, ``rff``),
accumulates them in torchmetrics' ``FrechetInceptionDistance`` (built with
``reset_real_features=False`` and fed with ``update()``, streaming) and caches the reference
sums, with what the extractor learnt, on disk — keyed by the data set's name, the extractor,
``fid_num_images``, the seed, the value range and the sha256 of the reference data — so a study
computes them once. Generated batches are then streamed through the same extractor into the
metric's fake side; ``score`` reports the distance after fixed prefixes of the stream (the same
seeds in every trial), so Optuna's pruners compare trials at equal image counts. KID (Bińkowski
et al. 2018, torchmetrics' ``KernelInceptionDistance`` on the same features, seeded subsets) is
an optional second number; :func:`fid_infinity` (Chong & Forsyth 2020) an optional third. A
reference may also be given as precomputed statistics, the ``.npz`` of ``mu`` and ``sigma``
that pytorch-fid and clean-fid write (:meth:`Scorer.from_reference_stats`,
:func:`load_reference_stats`); such a scorer has no floors and no KID.

Two measurement rules live here (DESIGN, "Measurement rules"):

- **The scorer sees what a user would save.** Every sample, reference or generated, reaches the
  extractor through :meth:`Scorer.prepare` (:func:`as_saved`): image samples are clamped to the
  data set's declared ``value_range`` and, for extractors that read saved images (``inception``),
  quantised to uint8 as EDM's ``fid.py`` reads PNGs. Points (``value_range=None``) are not
  clamped.
- **Every score stands next to its floor.** :meth:`Scorer.floors` measures, once and cached with
  the reference statistics, the real-vs-real floor (held-out data, or fresh samples of the true
  distribution, against the reference) and the noise-vs-real ceiling, as :class:`Floors`.
- **Floors of the same size.** Every floor value stands for as many real images as a score's
  generated ones (``fid_num_images``): disjoint or overlapping held-out sets of that size, or,
  where the held-out split is smaller, a line in 1/N through two smaller subsets read at
  ``fid_num_images`` (``Floors.floor_method`` says which). Each :class:`Floors` carries its
  :func:`resolution`, the smallest ratio of two scores told apart at two floor spreads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from sigmatune.objectives.features import (
    EXTRACTORS,
    FeatureExtractor,
    get_extractor,
    quantize_uint8,
    tensor_sha256,
)
from sigmatune.objectives.files import torch_save

__all__ = [
    "AT_FLOOR_SPREADS",
    "CACHE_SCHEMA",
    "EXTRACTORS",
    "Floors",
    "FloorsUnavailableError",
    "NonFiniteSamplesError",
    "ReferenceStatsError",
    "STATS_EXTRACTORS",
    "Score",
    "Scorer",
    "ScorerCacheError",
    "ScorerCacheWriteError",
    "ScorerSettings",
    "as_saved",
    "check_value_range",
    "fid_infinity",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "load_reference_stats",
]

CACHE_SCHEMA = 2  # 2: value range in the key, multi-scale rff, floors stored beside the stats
_REL_TOL = 1e-9  # negative distances within this fraction of tr(S_1) + tr(S_2) are rounding


class NonFiniteSamplesError(ValueError):
    """Generated samples contain NaN or inf: the trial fails with this reason."""


class ScorerCacheWriteError(OSError):
    """The FID cache file could not be written (a full disk, no permission): the message names
    it; nothing of it was left behind, and a previous cache file is unchanged. ``errno`` is
    the failed write's."""


# -- the Fréchet distance ----------------------------------------------------------------------


def _as_float64(a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _psd_eigvals(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at rounding level (below d * eps * max, numpy's
    ``matrix_rank`` tolerance; negative ones included) set to 0: their square roots would be
    noise of order sqrt(eps)."""
    cutoff = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(w > cutoff, w, 0.0)


def _sqrt_psd(S: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (eigenvalues via
    :func:`_psd_eigvals`)."""
    with _blas_threads(S.shape[0]):
        w, V = np.linalg.eigh((S + S.T) / 2)
        return (V * np.sqrt(_psd_eigvals(w))) @ V.T


def frechet_distance_from_stats(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)
    (Dowson & Landau 1982; Heusel et al. 2017, eq. 6), in float64.

    ``tr (S_1 S_2)^{1/2}`` is the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix ``S_1^{1/2} S_2 S_1^{1/2}`` (it is similar to ``S_1 S_2``), found by two
    symmetric eigendecompositions: no complex parts, no ``sqrtm`` offsets, singular
    covariances allowed. A result below 0 by rounding (within 1e-9 of tr S_1 + tr S_2) is
    returned as 0.
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            "mu1, mu2 must have shape [d] and sigma1, sigma2 shape [d, d], but got "
            f"{mu1.shape}, {mu2.shape}, {s1.shape}, {s2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite, but it has non-finite entries")
    return _frechet_with_root(mu1, s1, _sqrt_psd(s1), mu2, s2)


# Below this many features a BLAS thread pool costs more than it saves: a 256 x 256 eigvalsh
# took ~0.6 s with two OpenBLAS threads on a loaded 2-core machine and 6 ms with one.
_SINGLE_THREAD_MAX_DIM = 512


def _blas_threads(d: int) -> contextlib.AbstractContextManager[Any]:
    if d > _SINGLE_THREAD_MAX_DIM:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _frechet_with_root(
    mu1: np.ndarray, s1: np.ndarray, root1: np.ndarray, mu2: np.ndarray, s2: np.ndarray
) -> float:
    """:func:`frechet_distance_from_stats` given ``root1 = S_1^{1/2}`` (the scorer keeps the
    reference's)."""
    with _blas_threads(s1.shape[0]):
        middle = root1 @ s2 @ root1
        eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(_psd_eigvals(eig)).sum())
    traces = float(np.trace(s1) + np.trace(s2))
    value = float(np.sum((mu1 - mu2) ** 2)) + traces - 2.0 * tr_covmean
    if value < 0:
        if value < -_REL_TOL * max(traces, np.finfo(np.float64).tiny):
            raise ArithmeticError(
                f"the Fréchet distance came out negative ({value}); are sigma1 and sigma2 "
                "positive semi-definite?"
            )
        value = 0.0
    return value


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] (divisor N - 1) of features [N, d], float64."""
    f = _as_float64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(
            f"features must have shape [N, d] with N >= 2, but got shape={tuple(f.shape)}"
        )
    if not np.isfinite(f).all():
        raise ValueError("features must be finite, but they have non-finite entries")
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N_a, d], [N_b, d]
    (Heusel et al. 2017, eq. 6): :func:`frechet_distance_from_stats` of their
    :func:`gaussian_stats`."""
    mu_a, s_a = gaussian_stats(features_a)
    mu_b, s_b = gaussian_stats(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"features_a and features_b must have the same width, but got {mu_a.shape[0]} and "
            f"{mu_b.shape[0]}"
        )
    return frechet_distance_from_stats(mu_a, s_a, mu_b, s_b)


def fid_infinity(
    mu_ref: Tensor | np.ndarray,
    sigma_ref: Tensor | np.ndarray,
    features: Tensor | np.ndarray,
    *,
    num_points: int = 15,
    min_fraction: float = 0.1,
    seed: int = 0,
) -> float:
    """FID_inf (Chong & Forsyth 2020, section 3.2): the Fréchet distance of random subsets
    of ``features`` of ``num_points`` sizes N evenly spaced from ``min_fraction`` of them to
    all, fitted linearly in 1/N (FID_N = FID_inf + b/N) and extrapolated to 1/N = 0. Removes
    the 1/N bias of FID on the generated side; the reference statistics are taken as exact.
    The extrapolation may come out slightly below 0. Subsets are drawn with ``seed``."""
    f = _as_float64(features)
    n = f.shape[0]
    if not 0 < min_fraction < 1:
        raise ValueError(f"min_fraction must be in (0, 1), but got min_fraction={min_fraction}")
    sizes = np.unique(np.round(np.linspace(max(2, min_fraction * n), n, num_points)).astype(int))
    if len(sizes) < 2:
        raise ValueError(
            f"fid_infinity needs at least 2 distinct subset sizes, but {n} samples with "
            f"num_points={num_points} give {sizes.tolist()}"
        )
    rng = np.random.default_rng(seed)
    values = []
    for size in sizes:
        subset = f[rng.permutation(n)[:size]]
        mu, s = gaussian_stats(subset)
        values.append(frechet_distance_from_stats(mu_ref, sigma_ref, mu, s))
    slope, intercept = np.polyfit(1.0 / sizes, np.asarray(values), 1)
    return float(intercept)


# -- what the scorer sees ----------------------------------------------------------------------


def check_value_range(
    value_range: tuple[float, float] | None, x: Tensor, *, key: str = "value_range"
) -> tuple[float, float] | None:
    """The declared range of saved samples, checked against data ``x`` [N, *shape]: a
    ``(low, high)`` pair of finite numbers with low < high that holds every value of ``x``, or
    None for low-dimensional points. Image data [N, C, H, W] must declare a range (a saved image
    has one). Returns the range as floats; ValueError naming ``key`` otherwise."""
    if value_range is None:
        if x.ndim == 4:
            raise ValueError(
                f"{key} must be (low, high) for image data [N, C, H, W] (e.g. (-1.0, 1.0), the "
                f"pixel range that saved images are clamped to), but got {key}=None with "
                f"shape={tuple(x.shape)}; None is allowed for low-dimensional points [N, d] only"
            )
        return None
    ok = (
        isinstance(value_range, (tuple, list))
        and len(value_range) == 2
        and all(
            isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            for v in value_range
        )
    )
    lo, hi = (float(v) for v in value_range) if ok else (math.nan, math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"{key} must be a pair (low, high) of finite numbers with low < high, or None for "
            f"low-dimensional points, but got {key}={value_range!r}"
        )
    tol = 1e-6 * (hi - lo)
    if x.numel() and (float(x.min()) < lo - tol or float(x.max()) > hi + tol):
        raise ValueError(
            f"{key}=({lo}, {hi}) must hold the data, but its values span "
            f"[{float(x.min())}, {float(x.max())}]"
        )
    return lo, hi


def as_saved(x: Tensor, value_range: tuple[float, float] | None, *, uint8: bool) -> Tensor:
    """Samples as a user would save them (DESIGN, "the scorer sees what a user would save"):
    clamped to ``value_range`` (None: points, returned unchanged) and, with ``uint8``,
    quantised to uint8 as image files are (:func:`~objectives.features.quantize_uint8`)."""
    if value_range is None:
        return x
    x = x.clamp(*value_range)
    return quantize_uint8(x, value_range) if uint8 else x


# -- settings, scores and floors ---------------------------------------------------------------


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, but got {name}={value!r}")
    return int(value)


@dataclass(frozen=True)
class ScorerSettings:
    """How a :class:`Scorer` measures (the ``inner.fid_*`` / ``inner.kid`` config keys).

    Args:
        extractor: a key of :data:`EXTRACTORS` — ``classifier`` (digits, MNIST), ``inception``
            (natural RGB images; the standard protocol), ``raw`` or ``rff`` (toy data).
        fid_num_images: generated images per score. The reference statistics use as many
            reference samples (a seeded subset when there are more, all when fewer), so the
            standard protocol is ``fid_num_images=50000`` on CIFAR-10's training set.
        seed: fixes the reference subset, the classifier's training, the random Fourier
            features, KID's subsets and the floors' sets.
        kid: also compute KID (keeps the reference features in the cache and in memory).
        inception_weights: the ``inception`` weights file (config key
            ``fid_inception_weights``); default ``$TORCH_HOME/hub/checkpoints``.
        batch_size: samples per forward of the extractor (default: the extractor's).
        kid_subsets, kid_subset_size: KID's subsets (capped at the number of samples).
    """

    extractor: str
    fid_num_images: int
    seed: int = 0
    kid: bool = False
    inception_weights: str | None = None
    batch_size: int | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self) -> None:
        get_extractor(self.extractor)  # an unknown name lists the valid ones
        _check_positive_int("fid_num_images", self.fid_num_images, 2)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, but got seed={self.seed!r}")
        if self.batch_size is not None:
            _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("kid_subsets", self.kid_subsets)
        _check_positive_int("kid_subset_size", self.kid_subset_size, 2)
        if self.inception_weights is not None:  # a path-like is kept as its string
            object.__setattr__(self, "inception_weights", str(self.inception_weights) or None)
        object.__setattr__(self, "kid", bool(self.kid))


class Score(NamedTuple):
    """The scores after ``n_images`` generated images (KID fields None when not asked for)."""

    n_images: int
    fid: float
    kid_mean: float | None = None
    kid_std: float | None = None


# A score is "at the floor" when it lies within this many floor spreads (sample standard
# deviations over the floor's seed sets) above the floor's mean: real data scores there too.
AT_FLOOR_SPREADS = 2.0

# How a floor's real sets are drawn (Floors.floor_method); every one stands for
# ``fid_num_images`` real images against the reference subset, as many as a score uses:
FLOOR_METHODS = {
    "truth": "fresh samples of the true distribution",
    "disjoint": "disjoint sets of the held-out split",
    "overlapping": "overlapping random sets of the held-out split",
    "extrapolated": "extrapolated from smaller subsets of the held-out split",
}


def resolution(floor: float, floor_spread: float) -> float:
    """The smallest ratio between two scores that a scorer can tell apart at
    :data:`AT_FLOOR_SPREADS` (two) spreads: ``(floor + 2 * floor_spread) / floor``.

    Why: a ratio is printed only between two scores not both at the floor, and a score is at
    the floor when ``score <= floor + 2 * floor_spread`` (:meth:`Floors.at_floor`). The
    smallest score that is not at the floor, over the best score the data allow (the floor),
    is that ratio; two scores closer than it may both be real data. The relative spread of FID
    is largest at the floor (the spread grows like sqrt(FID) above it, the mean like FID), so
    this is the worst case over the scorer's range. A floor spread of 10% of the floor gives
    1.2. ``inf`` when the floor is not positive or a figure is not finite (nothing resolves).
    """
    floor, floor_spread = float(floor), float(floor_spread)
    if not (math.isfinite(floor) and math.isfinite(floor_spread)) or floor <= 0:
        return math.inf
    return (floor + AT_FLOOR_SPREADS * floor_spread) / floor


@dataclass(frozen=True)
class Floors:
    """What a score means on this data: the real-vs-real floor and the noise-vs-real ceiling,
    each the mean and spread of ``sets`` scores on differently seeded sets (DESIGN, "every
    score stands next to its floor", "floors of the same size").

    Attributes:
        floor, floor_spread, floor_values: real samples against the reference — a held-out
            split of the data that never overlaps the reference subset (``floor_source``
            ``"held_out"``) or fresh samples of the true distribution (``"truth"``). The spread
            is the sample standard deviation (ddof 1) of the values, divided by
            ``sqrt(1 - n/m)`` for overlapping sets (see ``floor_method``).
        floor_num_images: the real images each floor value stands for: ``fid_num_images``,
            the generated images of a score (a floor from fewer images is higher: FID's bias
            grows as 1/N).
        floor_method: how the real sets were drawn (:data:`FLOOR_METHODS`): ``"truth"``;
            ``"disjoint"`` sets of ``fid_num_images`` when the held-out split holds ``sets``
            of them; ``"overlapping"`` seeded random sets of ``fid_num_images`` when it holds
            :data:`OVERLAP_MIN_RATIO` (1.5) times that (two such sets share a fraction n/m of
            their images, so the spread of the values is divided by ``sqrt(1 - n/m)``, as for
            a mean of shared and own parts); ``"extrapolated"`` when it holds fewer: per set,
            the FIDs of nested seeded random subsets of k2 = min(n, 0.8 m) and k1 = k2 // 2
            held-out images, extended linearly in 1/k (FID_k = a + b/k, Chong & Forsyth 2020)
            to k = n = ``fid_num_images``. Against fresh true sets of n (Gaussians of 4, 32
            and 128 dimensions and a 4-component mixture), the overlapping and extrapolated
            floors' means and spreads agree within their standard errors, where a floor of
            the 0.8 m subsets themselves (the floor before issue 19) is about 1.3x too high
            and a bootstrap of n with replacement from the m held-out images about 1.6x
            (``tests/objectives/test_floors.py`` checks the first two against fresh sets).
        held_out_images: the held-out split's size m (0 for ``"truth"``).
        ceiling, ceiling_spread, ceiling_values: N(0, sigma_data^2 I) noise of the data's shape
            (clamped to the value range for images), ``fid_num_images`` per set.
        sets: seed sets per figure (>= 2).
        floor_source: ``"held_out"`` or ``"truth"``.
        resolution: :func:`resolution` of the floor and its spread (derived, not an
            argument; stored by :meth:`to_dict`).
    """

    floor: float
    floor_spread: float
    floor_values: tuple[float, ...]
    floor_num_images: int
    ceiling: float
    ceiling_spread: float
    ceiling_values: tuple[float, ...]
    sets: int
    floor_source: str = "held_out"
    floor_method: str = "disjoint"
    held_out_images: int = 0
    resolution: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.floor_method not in FLOOR_METHODS:
            raise ValueError(
                f"floor_method must be one of {sorted(FLOOR_METHODS)}, but got "
                f"floor_method={self.floor_method!r}"
            )
        object.__setattr__(self, "resolution", resolution(self.floor, self.floor_spread))

    @classmethod
    def from_values(
        cls,
        floor_values: Sequence[float],
        ceiling_values: Sequence[float],
        *,
        floor_num_images: int,
        floor_source: str,
        floor_method: str | None = None,
        held_out_images: int = 0,
    ) -> Floors:
        """Mean and spread of the per-set scores (the floor's spread corrected for overlapping
        sets: see ``floor_method``)."""
        f, c = np.asarray(floor_values, float), np.asarray(ceiling_values, float)
        method = floor_method or ("truth" if floor_source == "truth" else "disjoint")
        spread = float(f.std(ddof=1))
        if method == "overlapping":
            shared = floor_num_images / held_out_images
            spread /= math.sqrt(1.0 - shared) if shared < 1 else math.nan
        return cls(
            floor=float(f.mean()),
            floor_spread=spread,
            floor_values=tuple(map(float, f)),
            floor_num_images=int(floor_num_images),
            ceiling=float(c.mean()),
            ceiling_spread=float(c.std(ddof=1)),
            ceiling_values=tuple(map(float, c)),
            sets=len(f),
            floor_source=floor_source,
            floor_method=method,
            held_out_images=int(held_out_images),
        )

    def at_floor(self, fid: float) -> bool:
        """Whether ``fid`` is inside the floor's spread, ``fid <= floor + AT_FLOOR_SPREADS *
        floor_spread``: as good as real data can be told apart here, so no ratio between two
        such scores means anything."""
        return bool(fid <= self.floor + AT_FLOOR_SPREADS * self.floor_spread)

    def describe(self) -> str:
        """How the floor was measured, in words (printed beside it): e.g. ``1,000 images,
        extrapolated from subsets of the 797 held-out images``."""
        return floor_method_text(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists; an infinite resolution as None), e.g. for an
        Optuna user attr."""
        out = {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }
        out["resolution"] = self.resolution if math.isfinite(self.resolution) else None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Floors:
        """The inverse of :meth:`to_dict`; ValueError naming missing or unknown keys, or a
        stored resolution that does not follow from the stored floor and spread."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = set(names) - set(d), set(d) - set(names)
        if missing or unknown:
            raise ValueError(
                f"a Floors dict must have the keys {names}, but it lacks {sorted(missing)} and "
                f"has unknown {sorted(unknown)}"
            )
        values = {k: tuple(map(float, v)) if k.endswith("_values") else v for k, v in d.items()}
        stored = values.pop("resolution")
        floors = cls(**values)
        stored = math.inf if stored is None else float(stored)
        if not math.isclose(stored, floors.resolution, rel_tol=1e-9):
            raise ValueError(
                f"a Floors dict's resolution must be (floor + {AT_FLOOR_SPREADS:g} * "
                f"floor_spread) / floor = {floors.resolution!r}, but got resolution={stored!r}"
            )
        return floors


def floor_method_text(floors: Mapping[str, Any]) -> str:
    """How a stored floor (``Floors.to_dict()``) was measured, in words; ``""`` for a dict
    from before floors recorded it."""
    n, m = floors.get("floor_num_images"), floors.get("held_out_images")
    method = floors.get("floor_method")
    if n is None or method not in FLOOR_METHODS:
        return ""
    if method == "truth":
        return f"{n:,} images, fresh samples of the true distribution"
    if method == "extrapolated":
        return (
            f"{n:,} images, extrapolated from subsets of the {m:,} held-out images (fewer than "
            "a score uses)"
        )
    return f"{n:,} images, {FLOOR_METHODS[method].split(' of ')[0]} of {m:,} held out"


# -- a reference given as statistics ----------------------------------------------------------


class ReferenceStatsError(ValueError):
    """A reference-statistics file that cannot be used: the message names the file and key."""


class FloorsUnavailableError(ValueError):
    """A scorer whose reference is statistics alone has no floors: they need reference
    samples (or the true distribution)."""


# Extractors that learn nothing from the reference images, so their features of generated
# samples can be compared with statistics computed elsewhere; the feature width for a
# sample shape.
STATS_EXTRACTORS: dict[str, Callable[[tuple[int, ...]], int]] = {
    "inception": lambda shape: 2048,
    "raw": lambda shape: math.prod(shape),
}
_SYMMETRY_RTOL = 1e-6  # |S - S^T| within this fraction of max |S| (float32 files)


def load_reference_stats(
    path: str | os.PathLike, *, num_features: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The mean ``mu`` [D] and covariance ``sigma`` [D, D] (float64) of reference features
    from an ``.npz`` with the keys ``mu`` and ``sigma``, as pytorch-fid (``--save-stats``) and
    clean-fid write them (Inception pool3 features: D = 2048).

    Checked: the file reads as an ``.npz`` (no pickles), both keys are there, ``mu`` is 1-D
    and ``sigma`` is [D, D] with D = ``num_features`` when given, every entry is finite and
    ``sigma`` is symmetric (to 1e-6 of its largest entry). ReferenceStatsError (a
    ValueError), one paragraph naming the file and the key, otherwise."""
    name = str(path)
    what = (
        f"the reference statistics {name!r} must be an .npz file with the arrays mu [D] and "
        "sigma [D, D] (as pytorch-fid and clean-fid save them)"
    )
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a .npy: one array
            raise ReferenceStatsError(f"{what}, but it holds a single array")
        with data:
            arrays = {key: np.asarray(data[key]) for key in ("mu", "sigma") if key in data.files}
            keys = list(data.files)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReferenceStatsError(
            f"{what}, but it could not be read ({type(exc).__name__}: {exc})"
        ) from exc
    except ValueError as exc:
        if isinstance(exc, ReferenceStatsError):
            raise
        raise ReferenceStatsError(
            f"{what}, but it could not be read ({type(exc).__name__}: {exc})"
        ) from exc
    for key in ("mu", "sigma"):
        if key not in arrays:
            raise ReferenceStatsError(
                f"the reference statistics {name!r} must hold the key {key!r} (mu: the mean "
                f"[D], sigma: the covariance [D, D] of the reference features), but it holds "
                f"{sorted(keys)}"
            )
    mu, sigma = arrays["mu"], arrays["sigma"]
    for key, a in (("mu", mu), ("sigma", sigma)):
        if not np.issubdtype(a.dtype, np.floating):
            raise ReferenceStatsError(
                f"{key} in the reference statistics {name!r} must be floating-point, but it has "
                f"dtype {a.dtype}"
            )
    if mu.ndim != 1:
        raise ReferenceStatsError(
            f"mu in the reference statistics {name!r} must be 1-D [D], but it has shape {mu.shape}"
        )
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ReferenceStatsError(
            f"sigma in the reference statistics {name!r} must have shape [D, D] = [{d}, {d}] "
            f"(D from mu), but it has shape {sigma.shape}"
        )
    if num_features is not None and d != num_features:
        raise ReferenceStatsError(
            f"mu and sigma in the reference statistics {name!r} must describe {num_features} "
            f"features (the extractor's width; 2048 for Inception pool3), but they have D={d}"
        )
    for key, a in (("mu", mu), ("sigma", sigma)):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise ReferenceStatsError(
                f"{key} in the reference statistics {name!r} must be finite, but {bad} of its "
                f"{a.size} entries are NaN or inf"
            )
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    asymmetry = float(np.abs(sigma - sigma.T).max(initial=0.0))
    scale = float(np.abs(sigma).max(initial=0.0))
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ReferenceStatsError(
            f"sigma in the reference statistics {name!r} must be a symmetric covariance matrix, "
            f"but max |sigma - sigma^T| = {asymmetry:.3g} against max |sigma| = {scale:.3g}"
        )
    return mu, (sigma + sigma.T) / 2


# -- the scorer --------------------------------------------------------------------------------


class ScorerCacheError(ValueError):
    """A reference-statistics cache file holds another key: another version or other data."""


class _Precomputed(nn.Module):
    """The torchmetrics metrics' "feature network": the scorer extracts the features itself
    (once, shared by FID and KID) and hands them on unchanged."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        return features


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


def _count_non_finite(x: Tensor) -> int:
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())


def _check_reference(reference: Any, labels: Any) -> tuple[Tensor, Tensor | None]:
    if not isinstance(reference, Tensor) or reference.ndim < 2:
        raise ValueError(
            "reference must be a tensor [N, C, H, W] or [N, d], but got "
            f"{type(reference).__name__} of shape {tuple(getattr(reference, 'shape', ()))}"
        )
    if reference.shape[0] < 2:
        raise ValueError(f"reference must have at least 2 samples, but got {reference.shape[0]}")
    bad = _count_non_finite(reference)
    if bad:
        raise ValueError(f"{bad} of {reference.shape[0]} reference samples are non-finite")
    return reference, None if labels is None else torch.as_tensor(labels)


# Floors (Floors.floor_method): overlapping random sets of fid_num_images while the held-out
# split holds at least this many times fid_num_images (two sets then share at most 2/3 of their
# images, and the spread's correction stays below sqrt(3)); extrapolated from subsets of
# HELD_OUT_FRACTION of it (and of half that) when it holds fewer.
OVERLAP_MIN_RATIO = 1.5
HELD_OUT_FRACTION = 0.8
# The floors' entry in the cache: a new version when what a cached floor means changes (2: floors
# of fid_num_images, issue 19). An entry of another version is measured again; the reference
# statistics and the extractor beside it stay valid.
FLOORS_VERSION = 2

Truth = Callable[..., Tensor]  # truth(n, generator=g) -> [n, *shape], e.g. GaussianMixture.sample


class Scorer:
    """FID (and optionally KID) of generated samples against a reference set.

    Args:
        reference: reference samples: images [N, C, H, W] or points [N, d].
        labels: class labels [N] (needed by the ``classifier`` extractor only), or None.
        settings: how to measure (:class:`ScorerSettings`).
        dataset_name: the data set's name, part of the cache key.
        value_range: the data set's declared range of saved samples (``Dataset.value_range``):
            ``(low, high)`` for images, which every sample is clamped to before its features
            are taken; None for low-dimensional points (not clamped). See
            :func:`check_value_range`.
        truth: a sampler of the true distribution, ``truth(n, generator=g)`` (e.g.
            ``Dataset.analytic.sample``); when given, the real-vs-real floor uses fresh true
            samples instead of the held-out split. It must be the data set's own distribution
            (floors are cached under the data set's key).
        cache_dir: where reference statistics and floors are cached (None: not cached).
        device: where features are computed (default CPU).
    """

    def __init__(
        self,
        reference: Tensor,
        labels: Tensor | None,
        settings: ScorerSettings,
        *,
        dataset_name: str,
        value_range: tuple[float, float] | None,
        truth: Truth | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(settings, ScorerSettings):
            raise ValueError(
                f"settings must be a ScorerSettings, but got {type(settings).__name__}"
            )
        self.settings = settings
        self._cls = get_extractor(settings.extractor)
        reference, labels = _check_reference(reference, labels)
        self._cls.check(reference, labels)
        self.value_range = check_value_range(value_range, reference)
        self.dataset_name = str(dataset_name)
        self.device = torch.device("cpu" if device is None else device)
        self.shape = tuple(reference.shape[1:])
        self.batch_size = settings.batch_size or self._cls.batch_size
        self._reference, self._truth = reference, truth
        self._given_stats: tuple[np.ndarray, np.ndarray] | None = None
        self.reference_stats_path: str | None = None

        self._key = self._cache_key(reference, labels)
        self.cache_path = self._cache_path(cache_dir)
        cached = self._load_cache()
        self.extractor = self._make_extractor(cached, reference, labels)
        if cached is None or (settings.kid and "reference_features" not in cached):
            # (a cache made without KID keeps its extractor and floors but lacks the features)
            cached = {
                **(cached or {}),
                **self._reference_state(reference),
                "extractor": self.extractor.cache_state(),
            }
            self._save_cache(cached)
        self._state = cached
        self._build_metrics(cached)

    @classmethod
    def from_reference_stats(
        cls,
        path: str | os.PathLike,
        settings: ScorerSettings,
        *,
        shape: Sequence[int],
        value_range: tuple[float, float] | None,
        dataset_name: str | None = None,
        device: str | torch.device | None = None,
    ) -> Scorer:
        """A scorer whose reference is given as statistics: the ``.npz`` of ``mu`` and
        ``sigma`` that pytorch-fid and clean-fid write (:func:`load_reference_stats`).

        Generated samples of ``shape`` (e.g. (3, 32, 32)) are prepared as usual (clamped to
        ``value_range``, quantised for Inception), their features taken with
        ``settings.extractor`` -- one that learns nothing from reference images
        (:data:`STATS_EXTRACTORS`: ``inception``, or ``raw`` for tests) -- and their Fréchet
        distance to N(mu, sigma) reported. The statistics must come from the same features:
        for ``inception``, torchmetrics' FID Inception network, which has the 2015-12-05
        weights that pytorch-fid and the original TF FID use (clean-fid's default "clean"
        statistics were made with another resize, so distances to them differ a little
        from clean-fid's own).

        Nothing is cached. There are no floors (:meth:`floors` raises
        :class:`FloorsUnavailableError`; ``floors_available`` is False) and no KID: both need
        reference samples, which statistics do not hold."""
        if not isinstance(settings, ScorerSettings):
            raise ValueError(
                f"settings must be a ScorerSettings, but got {type(settings).__name__}"
            )
        if settings.extractor not in STATS_EXTRACTORS:
            raise ValueError(
                f"a reference given as statistics ({str(path)!r}) needs an extractor that "
                "learns nothing from the reference images, one of "
                f"{', '.join(STATS_EXTRACTORS)}, but got extractor={settings.extractor!r} "
                "(it is fitted on reference images, which the statistics do not hold)"
            )
        if settings.kid:
            raise ValueError(
                f"kid=True needs the reference features themselves, but the reference "
                f"{str(path)!r} is statistics (mu, sigma) only; set kid=False"
            )
        shape = tuple(int(v) for v in shape)
        empty = torch.zeros(0, *shape)
        self = cls.__new__(cls)
        self.settings = settings
        self._cls = get_extractor(settings.extractor)
        self._cls.check(torch.zeros(2, *shape), None)
        mu, sigma = load_reference_stats(
            path, num_features=STATS_EXTRACTORS[settings.extractor](shape)
        )
        self.value_range = check_value_range(value_range, empty)
        self.dataset_name = str(dataset_name or Path(path).stem)
        self.device = torch.device("cpu" if device is None else device)
        self.shape = shape
        self.batch_size = settings.batch_size or self._cls.batch_size
        self._reference, self._truth = None, None
        self._given_stats = (mu, sigma)
        self.reference_stats_path = str(path)
        self._key, self.cache_path, self._state = None, None, {}
        self.extractor = self._cls.fit(
            torch.zeros(2, *shape),
            None,
            seed=settings.seed,
            device=self.device,
            weights=settings.inception_weights,
        ).eval()
        self._fid = self._new_fid()  # the generated side only
        self._kid = None
        self.num_reference = None
        self._reference_root = None
        return self

    @property
    def floors_available(self) -> bool:
        """Whether :meth:`floors` can be measured: not for a reference given as statistics."""
        return self._given_stats is None

    # -- the cache -------------------------------------------------------------------------

    def _cache_key(self, reference: Tensor, labels: Tensor | None) -> dict[str, Any]:
        s = self.settings
        return {
            "schema": CACHE_SCHEMA,
            "dataset": self.dataset_name,
            "extractor": s.extractor,
            "fid_num_images": s.fid_num_images,
            "seed": s.seed,
            "value_range": None if self.value_range is None else list(self.value_range),
            "reference_sha256": tensor_sha256(reference),
            **self._cls.key_items(labels, seed=s.seed, weights=s.inception_weights),
        }

    def _cache_path(self, cache_dir: str | os.PathLike | None) -> Path | None:
        """The file for this key. The schema is left out of the name, so that a cache of
        another version sits at the same path and is reported, not silently kept beside."""
        if cache_dir is None:
            return None
        named = {k: v for k, v in self._key.items() if k != "schema"}
        digest = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]
        name = (
            f"{_safe(self.dataset_name)}-{self.settings.extractor}-n{self.settings.fid_num_images}"
        )
        return Path(cache_dir) / f"{name}-{digest}.pt"

    def _load_cache(self) -> dict | None:
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        try:
            state = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute and overwrite it
            # (only the exception's type: torch's message advises loading it unsafely)
            warnings.warn(
                f"ignoring unreadable FID cache {self.cache_path} ({type(exc).__name__}); "
                "recomputing it",
                stacklevel=3,
            )
            return None
        stored = state.get("key") if isinstance(state, dict) else None
        if stored != self._key:
            schema = stored.get("schema") if isinstance(stored, dict) else None
            raise ScorerCacheError(
                f"the FID cache file {self.cache_path} was written for other settings or by "
                f"another version of sigmatune (its cache schema is {schema!r}, this version's "
                f"is {CACHE_SCHEMA}), so its reference statistics may not match this scorer. "
                "Delete the file to recompute them."
            )
        return state

    def _save_cache(self, state: dict[str, Any]) -> None:
        """Write atomically: a temporary file in the same folder, then ``os.replace``. A write
        that fails (a full disk, no permission) removes the temporary file and raises
        :class:`ScorerCacheWriteError`, which names the file and the cause: the cache is only
        a speed-up, but a disk too full for it is too full for the checkpoints that follow."""
        if self.cache_path is None:
            return
        path, tmp = self.cache_path, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch_save({**state, "key": self._key}, f)
            os.replace(tmp, path)
        except OSError as exc:
            left = (
                "the previous cache file is unchanged"
                if os.path.isfile(path)
                else "nothing of it was left behind"
            )
            err = ScorerCacheWriteError(
                f"cannot write the FID cache {str(path)!r} ({exc.strerror or exc}); {left}"
            )
            err.errno = exc.errno
            raise err from exc
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    # -- reference side --------------------------------------------------------------------

    def _make_extractor(
        self, cached: dict | None, reference: Tensor, labels: Tensor | None
    ) -> FeatureExtractor:
        s = self.settings
        if cached is None:
            extractor = self._cls.fit(
                reference, labels, seed=s.seed, device=self.device, weights=s.inception_weights
            )
        else:
            extractor = self._cls.from_cache_state(
                cached["extractor"], device=self.device, weights=s.inception_weights
            )
        return extractor.eval()

    def _split(self) -> tuple[Tensor, Tensor]:
        """Indices of the reference subset (``fid_num_images`` of the samples, seeded; all of
        them when fewer) and of the rest, the held-out split; both sorted."""
        n, k = self._reference.shape[0], self.settings.fid_num_images
        g = torch.Generator().manual_seed(self.settings.seed)
        perm = torch.randperm(n, generator=g) if n > k else torch.arange(n)
        return perm[:k].sort().values, perm[k:].sort().values

    def _reference_state(self, reference: Tensor) -> dict[str, Any]:
        """Stream the reference subset through the extractor: torchmetrics' real-side sums
        (and the features themselves for KID)."""
        reference = reference[self._split()[0]]
        fid = self._new_fid()
        kept = []
        for start in range(0, reference.shape[0], self.batch_size):
            f = self.features(reference[start : start + self.batch_size])
            fid.update(f.to(self.device), real=True)
            if self.settings.kid:
                kept.append(f.float())
        state: dict[str, Any] = {
            "real_features_sum": fid.real_features_sum.cpu(),
            "real_features_cov_sum": fid.real_features_cov_sum.cpu(),
            "real_features_num_samples": fid.real_features_num_samples.cpu(),
        }
        if self.settings.kid:
            state["reference_features"] = torch.cat(kept)
        return state

    def _new_fid(self) -> Any:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(
            feature=_Precomputed(self.extractor.num_features), reset_real_features=False
        ).to(self.device)

    def _build_metrics(self, cached: dict[str, Any]) -> None:
        self._fid = self._new_fid()
        for name in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
            setattr(self._fid, name, cached[name].to(self.device))
        self.num_reference = int(cached["real_features_num_samples"])
        self._reference_root: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._kid = None
        if self.settings.kid:
            from torchmetrics.image.kid import KernelInceptionDistance

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "will save all features"
                self._kid = KernelInceptionDistance(
                    feature=_Precomputed(self.extractor.num_features),
                    subsets=self.settings.kid_subsets,
                    subset_size=self.settings.kid_subset_size,
                    reset_real_features=False,
                ).to(self.device)
            self._kid.real_features = [cached["reference_features"].double().to(self.device)]

    @property
    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [F] and covariance [F, F] of the reference features, float64."""
        if self._given_stats is not None:
            return self._given_stats
        return self._stats(
            self._fid.real_features_sum,
            self._fid.real_features_cov_sum,
            self._fid.real_features_num_samples,
        )

    @staticmethod
    def _stats(total: Tensor, cov_sum: Tensor, count: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance from torchmetrics' sums: (sum f f^T - n mu mu^T)/(n-1)."""
        n = int(count)
        mu = total.detach().cpu().double().numpy() / n
        cov = (cov_sum.detach().cpu().double().numpy() - n * np.outer(mu, mu)) / (n - 1)
        return mu, cov

    # -- floors ----------------------------------------------------------------------------

    def floors(self, sets: int = 3) -> Floors:
        """The real-vs-real floor and noise-vs-real ceiling over ``sets`` (>= 2) seed sets
        (:class:`Floors`), measured once and cached with the reference statistics.

        Every floor value stands for ``fid_num_images`` real images against the reference
        subset, as many as a score's generated images (DESIGN, "floors of the same size"):
        with ``truth``, ``fid_num_images`` fresh true samples; otherwise from the held-out
        split (the m samples outside the reference subset): disjoint sets when it holds
        ``sets`` of them, overlapping seeded random sets when it holds
        :data:`OVERLAP_MIN_RATIO` times ``fid_num_images``, else extrapolated from smaller
        subsets (``Floors.floor_method`` says which, ``held_out_images`` how many there were).
        Noise sets: ``fid_num_images`` samples of N(0, sigma_data^2 I), sigma_data the
        reference's overall standard deviation. Every set has its own deterministic seed."""
        if not self.floors_available:
            raise FloorsUnavailableError(
                f"the real-vs-real floor and the noise ceiling need reference samples (a "
                f"held-out split of them) or the true distribution, but this scorer's reference "
                f"is statistics only ({self.reference_stats_path!r}): it reports FID without "
                "floors. Give the reference images (e.g. --dataset folder:PATH) to measure them"
            )
        sets = _check_positive_int("sets", sets, 2)
        source = "held_out" if self._truth is None else "truth"
        name = f"v{FLOORS_VERSION}/{source}/{sets}"
        stored = {
            k: v
            for k, v in self._state.get("floors", {}).items()
            if k.startswith(f"v{FLOORS_VERSION}/")  # older floors are measured again
        }
        if name not in stored:
            values, method, m = self._floor_values(sets)
            floors = Floors.from_values(
                values,
                [self.score_tensor(self._noise_set(k)) for k in range(sets)],
                floor_num_images=self.settings.fid_num_images,
                floor_source=source,
                floor_method=method,
                held_out_images=m,
            )
            stored[name] = floors.to_dict()
            self._state = {**self._state, "floors": stored}
            self._save_cache(self._state)
        return Floors.from_dict(stored[name])

    def _generator(self, kind: str, k: int) -> torch.Generator:
        """A generator for set ``k`` of a kind of floor set, fixed by the scorer's seed."""
        text = f"sigmatune-floors/{self.settings.seed}/{kind}/{k}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text).digest()[:8]))

    def floor_plan(self, sets: int) -> tuple[str, int, list[list[Tensor]]]:
        """How the floor's real sets are drawn (see :meth:`floors`): ``(method, m, picks)``,
        ``picks[k]`` the index tensors (into the reference data) of set ``k``: one set of
        ``fid_num_images``, or for ``"extrapolated"`` two nested subsets of sizes k1 < k2.
        Empty for ``"truth"`` (fresh samples)."""
        n = self.settings.fid_num_images
        if self._truth is not None:
            return "truth", 0, []
        held_out = self._split()[1]
        m = held_out.shape[0]
        k2 = min(n, int(HELD_OUT_FRACTION * m))
        if k2 // 2 < 2:
            raise ValueError(
                f"the real-vs-real floor needs a held-out split, but the reference subset takes "
                f"{self.num_reference} of the {self._reference.shape[0]} samples "
                f"(fid_num_images={n}), leaving {m}; use fewer fid_num_images than the data set "
                "holds, or pass truth= (a sampler of the true distribution)"
            )

        def perm(k: int) -> Tensor:
            return held_out[torch.randperm(m, generator=self._generator("held_out", k))]

        if sets * n <= m:  # disjoint sets
            whole = perm(0)
            return "disjoint", m, [[whole[k * n : (k + 1) * n]] for k in range(sets)]
        if m >= OVERLAP_MIN_RATIO * n:
            return "overlapping", m, [[perm(k)[:n]] for k in range(sets)]
        return "extrapolated", m, [[perm(k)[: k2 // 2], perm(k)[:k2]] for k in range(sets)]

    def _floor_values(self, sets: int) -> tuple[list[float], str, int]:
        """The floor's value per set, its method and the held-out split's size."""
        n = self.settings.fid_num_images
        method, m, picks = self.floor_plan(sets)
        if method == "truth":
            values = [
                self.score_tensor(self._truth(n, generator=self._generator("truth", k)))
                for k in range(sets)
            ]
            return values, method, m
        values = []
        for idx in picks:
            fids = [self.score_tensor(self._reference[i.sort().values]) for i in idx]
            if method == "extrapolated":  # FID_k = a + b/k through (k1, F1), (k2, F2), at n
                (k1, f1), (k2, f2) = ((len(i), f) for i, f in zip(idx, fids, strict=True))
                fids = [f2 + (f2 - f1) * (1 / n - 1 / k2) / (1 / k2 - 1 / k1)]
            values.append(fids[0])
        return values, method, m

    def _noise_set(self, k: int) -> Tensor:
        sigma_data = float(self._reference.double().std())
        g = self._generator("noise", k)
        return sigma_data * torch.randn(self.settings.fid_num_images, *self.shape, generator=g)

    # -- generated side --------------------------------------------------------------------

    def prepare(self, x: Tensor) -> Tensor:
        """Samples as the extractor reads them: :func:`as_saved` with this data set's value
        range (uint8 for extractors that read saved images). Every feature goes through here."""
        return as_saved(x, self.value_range, uint8=self._cls.reads_uint8)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Features [N, F] (float64, on CPU) of samples ``x`` [N, *shape], taken of
        :meth:`prepare` ``(x)``. Non-finite samples are a :class:`NonFiniteSamplesError`
        (clamping would hide them)."""
        bad = _count_non_finite(x) if x.shape[0] else 0
        if bad:
            raise NonFiniteSamplesError(f"{bad} of {x.shape[0]} samples are non-finite")
        out = [
            self.extractor(self.prepare(x[start : start + self.batch_size].to(self.device))).cpu()
            for start in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.extractor.num_features)

    def _counts(self, checkpoints: Sequence[float], num_images: int) -> list[int]:
        fractions = [float(q) for q in checkpoints]
        if (
            not fractions
            or any(not 0 < q <= 1 for q in fractions)
            or fractions != sorted(fractions)
        ):
            raise ValueError(
                "checkpoints must be increasing fractions in (0, 1], but got "
                f"checkpoints={tuple(checkpoints)!r}"
            )
        counts = sorted({round(q * num_images) for q in fractions} - {0, 1})
        if not counts:
            raise ValueError(
                f"FID needs at least 2 images, but checkpoints={tuple(checkpoints)!r} of "
                f"num_images={num_images} give fewer"
            )
        return counts

    def _check_batch(self, batch: Tensor, seen: int, limit: int) -> Tensor:
        """The first ``limit - seen`` samples of a batch, checked for shape and finiteness."""
        if not isinstance(batch, Tensor) or tuple(batch.shape[1:]) != self.shape:
            raise ValueError(
                f"generated batches must have shape [B, {', '.join(map(str, self.shape))}], "
                f"but got shape={tuple(getattr(batch, 'shape', ()))}"
            )
        batch = batch[: limit - seen]
        bad = _count_non_finite(batch)
        if bad:
            raise NonFiniteSamplesError(
                f"{bad} of {seen + batch.shape[0]} generated samples are non-finite (NaN or "
                f"inf; counted over the first {seen + batch.shape[0]} images)"
            )
        return batch

    def _result(self, n_images: int) -> Score:
        mu, s = self._stats(
            self._fid.fake_features_sum,
            self._fid.fake_features_cov_sum,
            self._fid.fake_features_num_samples,
        )
        if not np.isfinite(mu).all() or not np.isfinite(s).all():
            raise NonFiniteSamplesError("the features of the generated samples are non-finite")
        if self._reference_root is None:  # S^{1/2} of the reference once, not per score
            mu_ref, s_ref = self.reference_stats
            self._reference_root = (mu_ref, s_ref, _sqrt_psd(s_ref))
        fid = _frechet_with_root(*self._reference_root, mu, s)
        if self._kid is None:
            return Score(n_images, fid)
        self._kid.subset_size = min(self.settings.kid_subset_size, self.num_reference, n_images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            kid_mean, kid_std = self._kid.compute()
        return Score(n_images, fid, float(kid_mean), float(kid_std))

    def score_detailed(
        self,
        batches: Iterable[Tensor],
        checkpoints: Sequence[float] = (0.25, 0.5, 1.0),
        *,
        num_images: int | None = None,
    ) -> Iterator[Score]:
        """Stream generated batches [B, *shape] and yield a :class:`Score` after each prefix
        ``round(q * num_images)`` for ``q`` in ``checkpoints`` (prefixes under 2 images are
        skipped). Consumes the stream up to ``num_images`` (default ``fid_num_images``) and
        no further; a shorter stream is a ValueError, a non-finite sample a
        :class:`NonFiniteSamplesError` (a ValueError)."""
        n_total = _check_positive_int(
            "num_images", self.settings.fid_num_images if num_images is None else num_images, 2
        )
        counts = self._counts(checkpoints, n_total)
        self._fid.reset()  # the real side stays (reset_real_features=False)
        if self._kid is not None:
            self._kid.reset()
        seen, k = 0, 0
        for batch in batches:
            batch = self._check_batch(batch, seen, counts[-1])
            while batch.shape[0] and k < len(counts):
                part, batch = batch[: counts[k] - seen], batch[counts[k] - seen :]
                f = self.features(part).to(self.device)
                self._fid.update(f, real=False)
                if self._kid is not None:
                    self._kid.update(f, real=False)
                seen += part.shape[0]
                if seen == counts[k]:
                    yield self._result(seen)
                    k += 1
            if k == len(counts):
                return
        raise ValueError(
            f"the generated stream ended after {seen} images, but {counts[-1]} were to be scored"
        )

    def score(
        self,
        batches: Iterable[Tensor],
        checkpoints: Sequence[float] = (0.25, 0.5, 1.0),
        *,
        num_images: int | None = None,
    ) -> Iterator[tuple[int, float]]:
        """Yield ``(n_images, fid)`` after each prefix of the stream; see
        :meth:`score_detailed`."""
        for result in self.score_detailed(batches, checkpoints, num_images=num_images):
            yield result.n_images, result.fid

    def score_features(self, features: Tensor) -> Score:
        """The :class:`Score` of generated samples given by their features [N, F] (N >= 2), as
        :meth:`features` computes them: for a caller that needs the features themselves too
        (a paired distance), so they are taken once."""
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                "a score needs the features of at least 2 samples, shape [N, F], but got "
                f"shape={tuple(getattr(features, 'shape', ()))}"
            )
        if features.shape[1] != self.extractor.num_features:
            raise ValueError(
                f"features must have {self.extractor.num_features} columns (this scorer's "
                f"extractor), but got shape={tuple(features.shape)}"
            )
        if _count_non_finite(features):
            raise NonFiniteSamplesError("the features of the generated samples are non-finite")
        self._fid.reset()
        if self._kid is not None:
            self._kid.reset()
        f = features.to(self.device)
        self._fid.update(f, real=False)
        if self._kid is not None:
            self._kid.update(f, real=False)
        return self._result(int(features.shape[0]))

    def score_tensor(self, x: Tensor) -> float:
        """FID of all samples ``x`` [N, *shape] (N >= 2; N need not be ``fid_num_images``)."""
        if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 2:
            raise ValueError(
                "FID needs at least 2 generated samples, but got "
                f"shape={tuple(getattr(x, 'shape', ()))}"
            )
        *_, last = self.score([x], (1.0,), num_images=x.shape[0])
        return last[1]

    def fid_infinity(self, x: Tensor, *, num_points: int = 15, seed: int | None = None) -> float:
        """FID_inf (Chong & Forsyth 2020) of samples ``x`` against the reference: see
        :func:`fid_infinity`."""
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"FID needs at least 2 generated samples, but got {n}")
        bad = _count_non_finite(x)
        if bad:
            raise NonFiniteSamplesError(f"{bad} of {n} generated samples are non-finite")
        mu_ref, s_ref = self.reference_stats
        return fid_infinity(
            mu_ref,
            s_ref,
            self.features(x),
            num_points=num_points,
            seed=self.settings.seed if seed is None else seed,
        )

    def __repr__(self) -> str:
        return (
            f"Scorer(dataset_name={self.dataset_name!r}, extractor={self.settings.extractor!r}, "
            f"fid_num_images={self.settings.fid_num_images}, num_reference={self.num_reference}, "
            f"value_range={self.value_range}, kid={self.settings.kid}, device={str(self.device)!r})"
        )
