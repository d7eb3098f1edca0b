"""Scoring one inner trial's images against generating them: the preset's scorer
(``study.context.make_scorer``: its extractor, images clamped to the data's range) on
``fid_num_images`` images with the prefixes a trial reports
(``study.scoring.REPORT_FRACTIONS``), against ``models.samplers.generate`` of the same images at
the preset's primary NFE. Target for digits (classifier features): under 10% of the generation.
The one-off set-up (the classifier's training, the reference statistics) is reported apart."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks._common import interleaved, paired_ratio
from benchmarks.overhead.setup import Setup, Sizes
from sigmatune.models.samplers import generate
from sigmatune.objectives.fid import Scorer
from sigmatune.study.context import make_scorer
from sigmatune.study.scoring import REPORT_FRACTIONS

TARGETS = {"digits": 0.10}  # toy's MLP generates in milliseconds: no target


@dataclass(frozen=True)
class ScoringRow:
    preset: str
    extractor: str
    sampler: str
    nfe: int
    num_images: int
    generate_seconds: float
    score_seconds: float
    ratio: float  # score / generate, median over rounds
    scorer_setup_seconds: float  # building the scorer (a cache hit when it was built before)
    generate_seconds_all: list[float]
    score_seconds_all: list[float]
    target: float | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    @property
    def trial_seconds(self) -> float:
        """A full-size inner trial's compute: generation plus scoring."""
        return self.generate_seconds + self.score_seconds


_SCORERS: dict[tuple[str, str], tuple[Scorer, float]] = {}


def preset_scorer(setup: Setup, cache_dir: Path) -> tuple[Scorer, float]:
    """The preset's scorer, built once per process, and the seconds building it took."""
    key = (setup.preset, str(cache_dir))
    if key not in _SCORERS:
        t0 = time.perf_counter()
        scorer = make_scorer(setup.config, setup.data, cache_dir, torch.device("cpu"))
        _SCORERS[key] = scorer, time.perf_counter() - t0
    return _SCORERS[key]


def measure(setup: Setup, sizes: Sizes, cache_dir: Path, log: Callable[[str], None]) -> ScoringRow:
    sampler, n_fe, sigmas = setup.schedule()
    n_images = sizes.score_images[setup.preset]
    scorer, setup_seconds = preset_scorer(setup, cache_dir)
    D = setup.denoiser()
    batch_size = setup.config.inner.batch_size
    log(f"scoring: {setup.preset}, {n_images} images, {setup.config.inner.fid_extractor}")
    images: list[Tensor] = []

    def generation() -> None:
        images[:] = list(generate(D, sigmas, sampler, range(n_images), setup.shape, batch_size))

    def scoring() -> None:
        if not images:
            generation()
        for _ in scorer.score(images, REPORT_FRACTIONS, num_images=n_images):
            pass

    times = interleaved({"generate": generation, "score": scoring}, sizes.repeats)
    return ScoringRow(
        preset=setup.preset,
        extractor=setup.config.inner.fid_extractor,
        sampler=sampler,
        nfe=n_fe,
        num_images=n_images,
        generate_seconds=statistics.median(times["generate"]),
        score_seconds=statistics.median(times["score"]),
        ratio=paired_ratio(times["score"], times["generate"]),
        scorer_setup_seconds=setup_seconds,
        generate_seconds_all=times["generate"],
        score_seconds_all=times["score"],
        target=TARGETS.get(setup.preset),
    )
