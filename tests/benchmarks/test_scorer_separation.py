"""``benchmarks.scorer_separation``: how far apart a scorer puts a trained model's reference
and a few-step schedule, in spreads."""

from __future__ import annotations

import math

import pytest

from benchmarks.quality import Figure
from benchmarks.scorer_separation import NFES, schedules, separation
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.study.config import load_config


def test_separation_is_the_difference_over_the_larger_spread():
    ref = Figure.of([0.9, 1.0, 1.1])  # mean 1.0, spread 0.1
    other = Figure.of([1.75, 2.0, 2.25])  # mean 2.0, spread 0.25
    assert separation(ref, other) == pytest.approx(4.0)
    assert separation(other, ref) == pytest.approx(-4.0)
    assert math.isinf(separation(Figure.of([1.0, 1.0]), Figure.of([2.0, 2.0])))


def test_the_reference_comes_first_and_every_schedule_spans_the_runs_range():
    config = load_config("digits")
    drawn = schedules(config, 256)
    names = list(drawn)
    assert names[0] == "reference (256 steps)" and len(drawn[names[0]]) == 257
    for nfe, name in zip(NFES, names[1:]):
        assert name == f"karras ρ=7, NFE {nfe}"
        assert len(drawn[name]) == steps_for_nfe("heun", nfe) + 1
    for sigmas in drawn.values():
        assert sigmas[0] == pytest.approx(config.sigma_max) and sigmas[-1] == 0.0
        assert sigmas[-2] == pytest.approx(config.sigma_min)
