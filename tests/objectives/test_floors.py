"""Floors of the same size as the scores (issue 19): every floor value stands for
``fid_num_images`` real images against the reference, whatever the held-out split holds; the
number of images and how they were drawn are recorded; the resolution follows from the floor
and its spread; floors cached by an older version are measured again."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sigmatune.objectives.fid as fid_module
from sigmatune.objectives.fid import AT_FLOOR_SPREADS, Floors, Scorer, ScorerSettings, resolution

SCALE = torch.tensor([1.0, 0.7, 0.5, 0.3], dtype=torch.float64)  # N(0, diag(SCALE^2))


def draw(k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(k, SCALE.numel(), generator=g, dtype=torch.float64) * SCALE


def gaussian_scorer(n: int, m: int, seed: int) -> tuple[Scorer, torch.Generator]:
    """A raw-feature scorer of n + m Gaussian samples: a reference subset of n, m held out."""
    g = torch.Generator().manual_seed(seed)
    data = draw(n + m, g)
    settings = ScorerSettings("raw", n, seed=seed)
    return Scorer(data, None, settings, dataset_name="gauss", value_range=None), g


# -- the floor's expectation against fresh samples ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("m", "method"), [(150, "extrapolated"), (320, "overlapping")])
def test_equal_size_floor_matches_fresh_true_samples_of_as_many_images(m, method):
    """The target is what a perfect generator scores: n fresh true samples against the same
    reference subset (10 draws per data set). Over 60 data sets the floor's mean must match it
    within 3 standard errors, and its spread the fresh draws' spread within a factor 1.4; the
    old floor (the subsets of 0.8 m themselves) is far above it."""
    n, datasets = 200, 60
    diff, old_diff, targets, spreads, true_spreads = [], [], [], [], []
    for t in range(datasets):
        scorer, g = gaussian_scorer(n, m, 7919 * m + t)
        floors = scorer.floors(sets=3)
        assert (floors.floor_method, floors.floor_num_images, floors.held_out_images) == (
            method,
            n,
            m,
        )
        fresh = [scorer.score_tensor(draw(n, g)) for _ in range(10)]
        diff.append(floors.floor - np.mean(fresh))
        targets.append(np.mean(fresh))
        spreads.append(floors.floor_spread)
        true_spreads.append(np.std(fresh, ddof=1))
        if method == "extrapolated":  # the old floor: subsets of 0.8 m = 120 images
            _, _, picks = scorer.floor_plan(3)
            old = [scorer.score_tensor(scorer._reference[p[1].sort().values]) for p in picks]
            assert len(picks[0][1]) == 120
            old_diff.append(np.mean(old) - np.mean(fresh))
    diff = np.asarray(diff)
    se = diff.std(ddof=1) / math.sqrt(datasets)
    assert abs(diff.mean()) < 3 * se, (diff.mean(), se)
    assert 1 / 1.4 < np.mean(spreads) / np.mean(true_spreads) < 1.4
    if old_diff:  # FID's bias ~ 1/120 + 1/200 against 2/200: about 1.33x the target
        old_diff = np.asarray(old_diff)
        assert old_diff.mean() > 3 * old_diff.std(ddof=1) / math.sqrt(datasets)
        assert 1 + old_diff.mean() / np.mean(targets) > 1.2


def test_floor_methods_by_the_size_of_the_held_out_split():
    n = 100
    for m, method in [(300, "disjoint"), (160, "overlapping"), (120, "extrapolated")]:
        scorer, _ = gaussian_scorer(n, m, 1)
        got, held, picks = scorer.floor_plan(3)
        assert (got, held) == (method, m)
        sizes = [[len(i) for i in p] for p in picks]
        assert sizes == ([[100]] * 3 if method != "extrapolated" else [[48, 96]] * 3)
        floors = scorer.floors(3)
        assert floors.floor_num_images == n and floors.held_out_images == m
        assert str(f"{n:,} images") in floors.describe() and f"{m:,}" in floors.describe()


def test_overlapping_sets_correct_the_spread_for_the_images_they_share():
    values = [1.0, 2.0, 3.0]  # sample spread 1
    f = Floors.from_values(
        values,
        [9.0, 10.0],
        floor_num_images=100,
        floor_source="held_out",
        floor_method="overlapping",
        held_out_images=400,
    )
    # two sets share n/m = 1/4 of their images: var(a - b) = 2 var (1 - 1/4)
    assert f.floor_spread == pytest.approx(1 / math.sqrt(0.75))
    disjoint = Floors.from_values(values, [9.0, 10.0], floor_num_images=100, floor_source="x")
    assert disjoint.floor_spread == 1.0 and disjoint.floor_method == "disjoint"


# -- resolution ------------------------------------------------------------------------------


def test_resolution_is_the_smallest_ratio_not_at_the_floor():
    f = Floors.from_values(
        [1.8, 2.0, 2.2], [50.0, 60.0], floor_num_images=1000, floor_source="held_out"
    )
    assert f.floor_spread == pytest.approx(0.2)
    assert f.resolution == pytest.approx((2.0 + 2 * 0.2) / 2.0) == pytest.approx(1.2)
    # the smallest score that is not at the floor, over the floor
    assert f.at_floor(f.floor * f.resolution * (1 - 1e-12))
    assert not f.at_floor(f.floor * f.resolution * (1 + 1e-9))
    # a spread of 10% of the floor (the DESIGN's limit) resolves ratios of 1.2
    assert resolution(5.0, 0.5) == pytest.approx(1 + AT_FLOOR_SPREADS * 0.1)
    assert resolution(0.0, 0.1) == math.inf and resolution(1.0, math.nan) == math.inf


def test_floors_round_trip_with_resolution_and_refuse_a_wrong_one():
    f = Floors.from_values(
        [1.0, 2.0, 3.0],
        [100.0, 110.0, 120.0],
        floor_num_images=1000,
        floor_source="held_out",
        floor_method="extrapolated",
        held_out_images=797,
    )
    stored = json.loads(json.dumps(f.to_dict()))
    assert stored["resolution"] == pytest.approx(2.0) and stored["held_out_images"] == 797
    assert Floors.from_dict(stored) == f
    with pytest.raises(ValueError, match=r"resolution must be .* but got resolution=3.0"):
        Floors.from_dict({**stored, "resolution": 3.0})
    zero = Floors.from_values([0.0, 0.0], [1.0, 2.0], floor_num_images=5, floor_source="truth")
    assert zero.to_dict()["resolution"] is None and Floors.from_dict(zero.to_dict()) == zero
    with pytest.raises(ValueError, match="floor_method must be one of"):
        Floors.from_values(
            [1.0, 2.0], [1.0, 2.0], floor_num_images=5, floor_source="x", floor_method="bootstrap"
        )


# -- floors cached by an older version -------------------------------------------------------


def test_floors_of_an_older_version_in_the_cache_are_measured_again(tmp_path, monkeypatch):
    data = draw(500, torch.Generator().manual_seed(0))
    settings = ScorerSettings("raw", 100, seed=0)
    kwargs = {"dataset_name": "gauss", "value_range": None, "cache_dir": tmp_path}
    Scorer(data, None, settings, **kwargs)
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, weights_only=True)
    # what version 1 stored: floors of fewer images under an unversioned name
    state["floors"] = {"held_out/3": {"floor": 123.0, "floor_num_images": 40}}
    torch.save(state, path)
    calls = []
    score_tensor = Scorer.score_tensor
    monkeypatch.setattr(Scorer, "score_tensor", lambda s, x: calls.append(1) or score_tensor(s, x))
    floors = Scorer(data, None, settings, **kwargs).floors(3)
    assert calls and floors.floor != 123.0 and floors.floor_num_images == 100
    stored = torch.load(path, weights_only=True)["floors"]
    assert list(stored) == [f"v{fid_module.FLOORS_VERSION}/held_out/3"]  # the old one dropped
