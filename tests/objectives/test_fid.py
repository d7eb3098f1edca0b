"""Tests of objectives.fid: the Fréchet distance against an independent scipy implementation
and closed forms, the scorer's settings, value range, cache, floors, prefixes, determinism and
failure modes, and every extractor but ``inception`` (see test_fid_inception.py; the toy
features: test_fid_toy.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits

import sigmatune.objectives.features as features
import sigmatune.objectives.fid as fid_module
from sigmatune.objectives.fid import (
    AT_FLOOR_SPREADS,
    CACHE_SCHEMA,
    EXTRACTORS,
    Floors,
    NonFiniteSamplesError,
    Scorer,
    ScorerCacheError,
    ScorerSettings,
    fid_infinity,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
)

# -- independent references (numpy/scipy, not the module's code) -------------------------------


def fd_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance as pytorch-fid computes it: np.cov and scipy's sqrtm of S1 S2."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))
    )


def random_cov(d: int, rng: np.random.Generator, lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * rng.uniform(lo, hi, d)) @ q.T


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as [1797, 1, 8, 8] in [-1, 1] and labels [1797]."""
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return x, torch.from_numpy(bunch.target).long()


def ring(n: int, g: torch.Generator, radius: float = 0.7, std: float = 0.05) -> torch.Tensor:
    """8 Gaussians on a circle: mean 0, covariance (radius^2/2 + std^2) I."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = 2 * math.pi * k / 8
    centres = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return centres + std * torch.randn(n, 2, generator=g)


# -- the pure Fréchet distance -----------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3, 32])
def test_frechet_distance_equals_scipy_sqrtm_implementation(d):
    rng = np.random.default_rng(d)
    a = rng.multivariate_normal(rng.normal(size=d), random_cov(d, rng), size=400)
    b = rng.multivariate_normal(rng.normal(size=d), random_cov(d, rng), size=300)
    expected = fd_scipy(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == (
        pytest.approx(expected, rel=1e-5)  # float32 inputs, float64 arithmetic
    )
    mu1, s1 = a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))
    mu2, s2 = b.mean(0), np.atleast_2d(np.cov(b, rowvar=False))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_closed_form_for_commuting_covariances():
    # diagonal S1, S2: d^2 = |mu1 - mu2|^2 + sum (sqrt(s1_i) - sqrt(s2_i))^2
    s1, s2 = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 5.0 + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    value = frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2))
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_identical_singular_stats_is_zero_not_negative():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((5, 64))  # covariance of rank 4 in 64 dimensions
    mu, s = gaussian_stats(f)
    assert frechet_distance_from_stats(mu, s, mu, s) == pytest.approx(0.0, abs=1e-12)
    assert frechet_distance_from_stats(mu, s, mu, s) >= 0.0


def test_same_distribution_near_zero_and_shift_near_squared_norm():
    # Two samples of N(0, S), n each: FD ~ bias ~ 2 tr(S)/n + O(d^2 |S| / n) ~ 0.01 here;
    # shifting one by delta adds |delta|^2 = 1 with std 2 sqrt(2 delta'S delta / n) <= 0.03.
    rng = np.random.default_rng(1)
    d, n = 8, 20_000
    S = random_cov(d, rng)
    a = rng.multivariate_normal(np.zeros(d), S, size=n)
    b = rng.multivariate_normal(np.zeros(d), S, size=n)
    delta = rng.standard_normal(d)
    delta /= np.linalg.norm(delta)
    assert 0.0 <= frechet_distance(a, b) < 0.02
    assert frechet_distance(a, b + delta) == pytest.approx(1.0, abs=0.15)
    assert frechet_distance(a, b + 3 * delta) == pytest.approx(9.0, abs=0.45)


def test_frechet_distance_rejects_bad_input():
    a = np.zeros((10, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.full((10, 3), np.nan), a)


def test_fid_infinity_removes_the_finite_sample_bias():
    # Reference = exact N(0, I) stats; generated = n samples of it. FID_n has the bias
    # d/n + d(d+1)/(4n) ~ 0.021 (mean and covariance terms, to first order); FID_inf
    # (Chong & Forsyth 2020) extrapolates it away.
    d, n = 16, 4000
    bias = d / n + d * (d + 1) / (4 * n)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((n, d))
        fid_n = frechet_distance_from_stats(np.zeros(d), np.eye(d), *gaussian_stats(x))
        assert fid_n == pytest.approx(bias, rel=0.25)
        assert abs(fid_infinity(np.zeros(d), np.eye(d), x, seed=seed)) < 0.5 * bias


# -- the scorer on raw and rff features ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (1, 4, 4)])
def test_raw_scorer_equals_independent_fd(tmp_path, shape):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(300, *shape, generator=g) * 2 - 1
    gen = (torch.rand(200, *shape, generator=g) * 2 - 1) * 0.8 + 0.1
    value_range = (-1.0, 1.0) if len(shape) == 3 else None
    scorer = Scorer(
        ref,
        None,
        ScorerSettings("raw", 300),
        dataset_name="toy",
        value_range=value_range,
        cache_dir=tmp_path,
    )
    expected = fd_scipy(
        ref.reshape(300, -1).double().numpy(), gen.reshape(200, -1).double().numpy()
    )
    assert scorer.score_tensor(gen) == pytest.approx(expected, rel=1e-6)


def test_reference_uses_a_seeded_subset_of_fid_num_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1000, 3, generator=g)
    gen = torch.randn(100, 3, generator=g) + 0.5
    scorer = Scorer(
        ref,
        None,
        ScorerSettings("raw", 100, seed=7),
        dataset_name="toy",
        value_range=None,
        cache_dir=tmp_path,
    )
    assert scorer.num_reference == 100
    subset = ref[torch.randperm(1000, generator=torch.Generator().manual_seed(7))[:100]]
    expected = fd_scipy(subset.double().numpy(), gen.double().numpy())
    assert scorer.score_tensor(gen) == pytest.approx(expected, rel=1e-6)


def test_prefix_scores_at_quarter_half_all_and_stream_not_overdrawn(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 4, generator=g)
    gen = torch.randn(400, 4, generator=g) * 1.1 + 0.2
    scorer = Scorer(
        ref,
        None,
        ScorerSettings("raw", 400),
        dataset_name="toy",
        value_range=None,
        cache_dir=tmp_path,
    )
    pulled = []

    def stream():
        for i, batch in enumerate(torch.split(gen, 64)):  # batches straddle the prefixes
            pulled.append(i)
            yield batch
        yield torch.full((64, 4), math.nan)  # beyond fid_num_images: must never be read

    results = list(scorer.score(stream()))
    assert [n for n, _ in results] == [100, 200, 400]
    ref_np = ref.double().numpy()
    for n, fid in results:
        assert fid == pytest.approx(fd_scipy(ref_np, gen[:n].double().numpy()), rel=1e-6)
    assert pulled == list(range(7))  # ceil(400 / 64) batches
    custom = [n for n, _ in scorer.score(torch.split(gen, 50), checkpoints=(0.1, 0.3, 1.0))]
    assert custom == [40, 120, 400]
    interim = [n for n, _ in scorer.score(torch.split(gen, 50), (0.5, 1.0), num_images=200)]
    assert interim == [100, 200]


def test_short_stream_and_bad_checkpoints_are_errors(tmp_path):
    ref = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    scorer = Scorer(ref, None, ScorerSettings("raw", 50), dataset_name="toy", value_range=None)
    with pytest.raises(ValueError, match="ended after 40 images, but 50"):
        list(scorer.score([ref[:40]]))
    with pytest.raises(ValueError, match="checkpoints"):
        list(scorer.score([ref], checkpoints=(0.5, 0.25)))
    with pytest.raises(ValueError, match="shape"):
        list(scorer.score([torch.zeros(10, 3)]))


def test_non_finite_samples_fail_with_their_count(tmp_path):
    ref = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    kwargs = {"dataset_name": "toy", "value_range": (-1.0, 1.0), "cache_dir": tmp_path}
    scorer = Scorer(ref, None, ScorerSettings("raw", 64), **kwargs)
    good = torch.zeros(32, 1, 2, 2)
    bad = torch.zeros(32, 1, 2, 2)
    bad[3, 0, 1, 1], bad[5, 0, 0, 0], bad[9] = math.nan, math.inf, -math.inf
    with pytest.raises(NonFiniteSamplesError, match="3 of 64 generated samples are non-finite"):
        list(scorer.score([good, bad]))
    with pytest.raises(ValueError, match="3 of 32 generated samples are non-finite"):
        scorer.score_tensor(bad)
    with pytest.raises(ValueError, match="3 of 64 reference samples are non-finite"):
        Scorer(torch.cat([good, bad]), None, ScorerSettings("raw", 64), **kwargs)


def test_fewer_than_two_images_is_an_error(tmp_path):
    ref = torch.randn(10, 2)
    kwargs = {"dataset_name": "toy", "value_range": None}
    with pytest.raises(ValueError, match="fid_num_images must be an integer >= 2"):
        ScorerSettings("raw", 1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        Scorer(ref[:1], None, ScorerSettings("raw", 10), **kwargs)
    scorer = Scorer(ref, None, ScorerSettings("raw", 10), **kwargs)
    with pytest.raises(ValueError, match="at least 2 generated samples"):
        scorer.score_tensor(ref[:1])


def test_unknown_extractor_lists_the_valid_ones():
    valid = "classifier, classifier-whitened, inception"
    with pytest.raises(ValueError, match=f"unknown extractor 'foo'; valid: {valid}"):
        ScorerSettings("foo", 10)


def test_rff_tells_a_ring_of_gaussians_from_one_gaussian_where_raw_cannot(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref, other_ring = ring(2000, g), ring(2000, g)
    gauss = math.sqrt(0.7**2 / 2 + 0.05**2) * torch.randn(2000, 2, generator=g)  # same moments
    scores = {}
    for name in ("raw", "rff"):
        scorer = Scorer(
            ref,
            None,
            ScorerSettings(name, 2000),
            dataset_name="ring",
            value_range=None,
            cache_dir=tmp_path,
        )
        scores[name] = (scorer.score_tensor(other_ring), scorer.score_tensor(gauss))
    raw_ring, raw_gauss = scores["raw"]
    rff_ring, rff_gauss = scores["rff"]
    # raw: means and covariances match, both scores are sampling noise (~ d(d+3)/n ~ 5e-3)
    assert raw_ring < 5e-3 and raw_gauss < 5e-3
    assert raw_gauss < 3 * raw_ring
    # rff: the Gaussian is far worse than another sample of the ring
    assert rff_gauss > 20 * rff_ring


def test_determinism_same_images_same_fid(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref, gen = ring(1000, g), ring(1000, g) * 1.1
    a = Scorer(ref, None, ScorerSettings("rff", 1000), dataset_name="ring", value_range=None)
    b = Scorer(ref, None, ScorerSettings("rff", 1000), dataset_name="ring", value_range=None)
    first = [f for _, f in a.score(torch.split(gen, 100))]
    assert [f for _, f in a.score(torch.split(gen, 100))] == first  # same scorer, again
    assert [f for _, f in b.score(torch.split(gen, 100))] == pytest.approx(first, rel=1e-9, abs=0)
    regrouped = [f for _, f in a.score(torch.split(gen, 37))]
    assert regrouped == pytest.approx(first, rel=1e-6, abs=1e-12)  # other float summation order


# -- settings ----------------------------------------------------------------------------------


def test_settings_are_checked_where_they_enter():
    assert ScorerSettings("raw", 10, inception_weights=Path("w.pth")).inception_weights == "w.pth"
    for kwargs, message in [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"kid_subsets": 0}, "kid_subsets must be an integer >= 1"),
        ({"kid_subset_size": 1}, "kid_subset_size must be an integer >= 2"),
        ({"seed": "0"}, "seed must be an integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            ScorerSettings("raw", 10, **kwargs)
    with pytest.raises(ValueError, match="settings must be a ScorerSettings"):
        Scorer(torch.randn(10, 2), None, {"extractor": "raw"}, dataset_name="t", value_range=None)


# -- the value range: the scorer sees what a user would save -----------------------------------


def test_image_data_must_declare_a_value_range_that_holds_it():
    x, _ = digits()
    settings = ScorerSettings("raw", 100)
    with pytest.raises(
        ValueError, match=r"value_range must be \(low, high\) for image data"
    ) as info:
        Scorer(x, None, settings, dataset_name="digits", value_range=None)
    assert "None is allowed for low-dimensional points" in str(info.value)
    for bad in [(1.0, -1.0), (0.0, math.inf), (-1.0,), "ab", (True, 2.0)]:
        with pytest.raises(ValueError, match="value_range must be a pair"):
            Scorer(x, None, settings, dataset_name="digits", value_range=bad)
    with pytest.raises(ValueError, match=r"value_range=\(0.0, 1.0\) must hold the data"):
        Scorer(x, None, settings, dataset_name="digits", value_range=(0.0, 1.0))
    scorer = Scorer(x, None, settings, dataset_name="digits", value_range=(-1, 1))
    assert scorer.value_range == (-1.0, 1.0)


def test_every_path_clamps_image_samples_to_the_value_range():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(200, 1, 3, 3, generator=g) * 2 - 1
    wild = 3 * torch.randn(200, 1, 3, 3, generator=g)  # mostly outside [-1, 1]
    saved = wild.clamp(-1, 1)
    settings = ScorerSettings("raw", 200, kid=True, kid_subsets=2, kid_subset_size=50)
    scorer = Scorer(ref, None, settings, dataset_name="toy", value_range=(-1.0, 1.0))
    flat = {k: v.reshape(200, -1).double().numpy() for k, v in [("ref", ref), ("wild", wild)]}
    expected = fd_scipy(flat["ref"], saved.reshape(200, -1).double().numpy())
    assert scorer.score_tensor(wild) == pytest.approx(expected, rel=1e-6)
    assert scorer.score_tensor(wild) < 0.2 * fd_scipy(flat["ref"], flat["wild"])  # it mattered
    assert torch.equal(scorer.features(wild), scorer.features(saved))
    assert list(scorer.score_detailed(torch.split(wild, 30))) == list(
        scorer.score_detailed(torch.split(saved, 30))
    )
    assert scorer.fid_infinity(wild) == scorer.fid_infinity(saved)
    with pytest.raises(NonFiniteSamplesError, match="1 of 200"):  # checked before the clamp
        scorer.features(torch.cat([saved[:199], torch.full((1, 1, 3, 3), math.inf)]))


def test_points_are_not_clamped():
    g = torch.Generator().manual_seed(0)
    ref, far = torch.rand(300, 2, generator=g) * 2 - 1, 3 * torch.randn(300, 2, generator=g)
    scorer = Scorer(ref, None, ScorerSettings("raw", 300), dataset_name="toy", value_range=None)
    expected = fd_scipy(ref.double().numpy(), far.double().numpy())
    assert scorer.score_tensor(far) == pytest.approx(expected, rel=1e-6)


# -- floors ------------------------------------------------------------------------------------


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.reshape(x.shape[0], -1).tolist()}


def raw_scorer(ref, n, **kwargs) -> Scorer:
    seed = kwargs.pop("seed", 0)
    kwargs = {"dataset_name": "toy", "value_range": None, **kwargs}
    return Scorer(ref, None, ScorerSettings("raw", n, seed=seed), **kwargs)


def test_floors_mean_spread_and_at_floor_round_trip_through_json():
    f = Floors.from_values(
        [1.0, 2.0, 3.0], [100.0, 110.0, 120.0], floor_num_images=500, floor_source="held_out"
    )
    assert (f.floor, f.floor_spread, f.ceiling, f.ceiling_spread) == (2.0, 1.0, 110.0, 10.0)
    assert f.sets == 3 and f.floor_values == (1.0, 2.0, 3.0) and f.floor_num_images == 500
    edge = f.floor + AT_FLOOR_SPREADS * f.floor_spread  # "inside the floor's spread"
    assert f.at_floor(0.5) and f.at_floor(edge)
    assert not f.at_floor(edge + 1e-9) and not f.at_floor(math.nan)
    stored = json.loads(json.dumps(f.to_dict()))
    assert Floors.from_dict(stored) == f
    with pytest.raises(ValueError, match=r"lacks \['ceiling'\] and has unknown \['x'\]"):
        Floors.from_dict({**{k: v for k, v in stored.items() if k != "ceiling"}, "x": 1})


def test_held_out_floor_sets_never_overlap_the_reference_subset():
    ref = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scorer = raw_scorer(ref, 200, seed=3)
    index, held_out = scorer._split()
    assert len(index) == 200 and len(held_out) == 800
    assert sorted(index.tolist() + held_out.tolist()) == list(range(1000))
    np.testing.assert_allclose(scorer.reference_stats[0], ref[index].mean(0).numpy())
    method, m, picks = scorer.floor_plan(3)  # 3 x 200 <= 800: disjoint sets of fid_num_images
    assert (method, m) == ("disjoint", 800) and all(len(p) == 1 for p in picks)
    sets = [ref[p[0].sort().values] for p in picks]
    reference_rows = rows(ref[index])
    assert all(len(rows(s)) == 200 and not rows(s) & reference_rows for s in sets)
    assert not rows(sets[0]) & rows(sets[1]) and not rows(sets[1]) & rows(sets[2])
    floors = scorer.floors()
    expected = [fd_scipy(ref[index].numpy(), s.numpy()) for s in sets]
    assert floors.floor_values == pytest.approx(expected, rel=1e-6)
    assert (floors.floor_num_images, floors.sets, floors.floor_source) == (200, 3, "held_out")
    assert (floors.floor_method, floors.held_out_images) == ("disjoint", 800)
    # the ceiling: N(0, sigma_data^2 I) noise of the data's shape, fid_num_images per set
    noise = scorer._noise_set(0)
    assert noise.shape == (200, 3)
    assert float(scorer._noise_set(0).std()) == pytest.approx(float(ref.std()), rel=0.15)
    assert floors.ceiling_values[0] == pytest.approx(
        fd_scipy(ref[index].numpy(), noise.double().numpy()), rel=1e-6
    )


def test_a_small_held_out_split_is_extrapolated_to_fid_num_images_and_says_so():
    ref = torch.randn(250, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scorer = raw_scorer(ref, 200)  # 50 held out, fewer than fid_num_images
    floors = scorer.floors(sets=4)
    assert floors.floor_num_images == 200  # what it stands for: as many as a score's images
    assert (floors.floor_method, floors.held_out_images) == ("extrapolated", 50)
    assert "extrapolated from subsets of the 50 held-out images" in floors.describe()
    assert len(set(floors.floor_values)) == 4 and floors.sets == 4
    method, _, picks = scorer.floor_plan(4)
    reference_rows = rows(ref[scorer._split()[0]])
    for small, large in picks:  # nested subsets of 20 and 40 (HELD_OUT_FRACTION of 50)
        assert (len(small), len(large)) == (20, 40)
        assert set(small.tolist()) < set(large.tolist())
        assert not rows(ref[large]) & reference_rows
    # each value: the line through (1/20, FID_20) and (1/40, FID_40), read at 1/200
    f1, f2 = (scorer.score_tensor(ref[i.sort().values]) for i in picks[0])
    assert floors.floor_values[0] == pytest.approx(f2 + (f2 - f1) * (1 / 200 - 1 / 40) * -40)
    with pytest.raises(ValueError, match="sets must be an integer >= 2"):
        scorer.floors(sets=1)
    everything = raw_scorer(ref, 250)  # the reference takes every sample
    with pytest.raises(ValueError, match="leaving 0; use fewer fid_num_images.*truth="):
        everything.floors()


def test_floor_from_a_truth_sampler_uses_fresh_samples_of_fid_num_images():
    calls = []

    def truth(n, generator):
        calls.append(n)
        return 2 + torch.randn(n, 2, generator=generator, dtype=torch.float64)

    ref = 2 + torch.randn(150, 2, generator=torch.Generator().manual_seed(0))
    floors = raw_scorer(ref, 300, truth=truth).floors()  # no held-out split at all
    assert calls == [300, 300, 300]
    assert (floors.floor_num_images, floors.floor_source) == (300, "truth")
    assert (floors.floor_method, floors.held_out_images) == ("truth", 0)
    assert len(set(floors.floor_values)) == 3
    assert floors.floor < 0.1 < 7 < floors.ceiling  # noise: N(0, 1), 2 sqrt(2) away


def test_floors_are_cached_with_the_reference_stats_and_seeded(tmp_path, monkeypatch):
    ref = torch.randn(600, 2, generator=torch.Generator().manual_seed(0))
    first = raw_scorer(ref, 100, cache_dir=tmp_path).floors()
    assert raw_scorer(ref, 100).floors() == first  # the same seed, no cache: the same sets
    assert raw_scorer(ref, 100, seed=1).floors().floor_values != first.floor_values

    def fail(*args, **kwargs):
        raise AssertionError("floors measured again")

    monkeypatch.setattr(Scorer, "score_tensor", fail)
    assert raw_scorer(ref, 100, cache_dir=tmp_path).floors() == first
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(AssertionError, match="measured again"):  # another number of sets
        raw_scorer(ref, 100, cache_dir=tmp_path).floors(sets=4)


# -- a cache of another version ----------------------------------------------------------------


def test_a_cache_from_another_version_is_an_error_naming_the_file(tmp_path, monkeypatch):
    ref = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    raw_scorer(ref, 50, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    # the next version bumps CACHE_SCHEMA: the same path, another stored schema
    monkeypatch.setattr(fid_module, "CACHE_SCHEMA", CACHE_SCHEMA + 1)
    with pytest.raises(ScorerCacheError) as info:
        raw_scorer(ref, 50, cache_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "Delete the file to recompute" in message
    assert f"schema is {CACHE_SCHEMA}, this version's is {CACHE_SCHEMA + 1}" in message
    monkeypatch.undo()
    torch.save({"real_features_sum": torch.zeros(2)}, path)  # no key at all
    with pytest.raises(ScorerCacheError, match="schema is None"):
        raw_scorer(ref, 50, cache_dir=tmp_path)
    path.unlink()  # what the message says to do
    assert raw_scorer(ref, 50, cache_dir=tmp_path).score_tensor(ref) == pytest.approx(0, abs=1e-9)


# -- the cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["raw", "rff"])
def test_cache_is_reused_and_invalidated_when_the_data_change(tmp_path, monkeypatch, name):
    cls = EXTRACTORS[name]
    calls = {"forward": 0, "fit": 0}
    forward, fit = cls.forward, cls.fit.__func__

    def counting_forward(self, x):
        calls["forward"] += 1
        return forward(self, x)

    def counting_fit(klass, *args, **kwargs):
        calls["fit"] += 1
        return fit(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counting_forward)
    monkeypatch.setattr(cls, "fit", classmethod(counting_fit))
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(500, 3, generator=g) * 2 - 1
    gen = torch.rand(200, 3, generator=g) * 2 - 1
    kwargs = {"dataset_name": "toy", "value_range": None, "cache_dir": tmp_path}
    settings = ScorerSettings(name, 500)

    first = Scorer(ref, None, settings, **kwargs)
    assert calls == {"forward": 1, "fit": 1}
    fid = first.score_tensor(gen)
    calls.update(forward=0, fit=0)
    second = Scorer(ref.clone(), None, settings, **kwargs)
    assert calls == {"forward": 0, "fit": 0}  # stats and extractor state from the cache
    assert second.score_tensor(gen) == fid
    assert len(list(tmp_path.glob("*.pt"))) == 1

    changed = ref.clone()
    changed[17, 1] += 0.01
    third = Scorer(changed, None, settings, **kwargs)
    assert calls == {"forward": 2, "fit": 1}  # recomputed
    assert third.score_tensor(gen) != fid
    assert len(list(tmp_path.glob("*.pt"))) == 2
    Scorer(ref, None, ScorerSettings(name, 400), **kwargs)  # another key
    assert calls["fit"] == 2


def test_unreadable_cache_file_is_recomputed(tmp_path):
    ref = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    kwargs = {"dataset_name": "folder:/data/my images", "value_range": None, "cache_dir": tmp_path}
    fid = Scorer(ref, None, ScorerSettings("raw", 20), **kwargs).score_tensor(ref + 1)
    (path,) = tmp_path.glob("*.pt")
    assert "/" not in path.name and " " not in path.name
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable FID cache"):
        scorer = Scorer(ref, None, ScorerSettings("raw", 20), **kwargs)
    assert scorer.score_tensor(ref + 1) == pytest.approx(fid, rel=1e-12)


# -- KID ---------------------------------------------------------------------------------------


def kid_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3 (Bińkowski et al. 2018)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_equals_unbiased_polynomial_mmd_and_is_repeatable(tmp_path):
    # With subsets as large as the sets, every subset is the whole set: KID = MMD^2 exactly.
    g = torch.Generator().manual_seed(0)
    ref, gen = torch.rand(150, 6, generator=g), torch.rand(150, 6, generator=g) * 1.2
    kwargs = {"dataset_name": "toy", "value_range": None}
    scorer = Scorer(
        ref, None, ScorerSettings("raw", 150, kid=True, kid_subsets=3), cache_dir=tmp_path, **kwargs
    )
    (result,) = list(scorer.score_detailed([gen], (1.0,)))
    assert result.kid_mean == pytest.approx(
        kid_numpy(ref.double().numpy(), gen.double().numpy()), rel=1e-6
    )
    assert result.kid_std == pytest.approx(0.0, abs=1e-12)
    assert result.fid == scorer.score_tensor(gen)
    # a cached scorer made without KID gains the reference features when KID is asked for
    plain = Scorer(ref, None, ScorerSettings("raw", 150), cache_dir=tmp_path / "b", **kwargs)
    assert plain.settings.kid is False
    again = Scorer(
        ref,
        None,
        ScorerSettings("raw", 150, kid=True, kid_subsets=5, kid_subset_size=50),
        cache_dir=tmp_path / "b",
        **kwargs,
    )
    runs = [list(again.score_detailed(torch.split(gen, 40))) for _ in range(2)]
    assert [r.n_images for r in runs[0]] == [38, 75, 150]
    assert runs[0] == runs[1]  # seeded subsets
    assert all(math.isfinite(r.kid_mean) and r.kid_std > 0 for r in runs[0][1:])


# -- the classifier extractor on digits --------------------------------------------------------


@pytest.fixture(scope="module")
def digits_split():
    x, y = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1347], perm[1347:]
    return x[train], y[train], x[test], y[test]


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier-cache")


IMAGES = {"dataset_name": "digits", "value_range": (-1.0, 1.0)}  # as models.data declares


@pytest.fixture(scope="module")
def digits_scorer(digits_split, classifier_cache):
    x_train, y_train, x_test, _ = digits_split
    settings = ScorerSettings("classifier", len(x_test), seed=0)
    return Scorer(x_train, y_train, settings, cache_dir=classifier_cache, **IMAGES)


def test_classifier_reaches_95_percent_on_held_out_digits(digits_scorer, digits_split):
    *_, x_test, y_test = digits_split
    with torch.no_grad():
        accuracy = (digits_scorer.extractor.logits(x_test).argmax(1) == y_test).float().mean()
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.4f}"


def test_classifier_fd_ranks_noisy_digits_worse_than_clean_held_out(digits_scorer, digits_split):
    *_, x_test, _ = digits_split
    g = torch.Generator().manual_seed(1)
    noisy = (x_test + 0.3 * torch.randn(x_test.shape, generator=g)).clamp(-1, 1)
    noisier = (x_test + 0.6 * torch.randn(x_test.shape, generator=g)).clamp(-1, 1)
    clean_fid, noisy_fid, noisier_fid = map(digits_scorer.score_tensor, (x_test, noisy, noisier))
    assert 0 <= clean_fid < noisy_fid < noisier_fid
    assert noisy_fid > 2 * clean_fid


def test_classifier_fid_ranks_what_a_user_would_save(digits_scorer, digits_split):
    """Issue 10's digits measurements, redone: real digits x2 must score worse than real ones,
    noise and blank images worse than both x2 and x10 — which holds only because the scorer
    clamps to the pixel range (unclamped, x2 scored worse than noise)."""
    *_, x_test, _ = digits_split
    score = digits_scorer.score_tensor
    noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(2))
    real, x2, x10 = score(x_test), score(2 * x_test), score(10 * x_test)
    noise_fid, blank = score(noise), score(torch.full_like(x_test, -1.0))
    mu, cov = digits_scorer.reference_stats
    with torch.no_grad():  # what the scorer saw before: the features of unclamped samples
        x2_unclamped = frechet_distance_from_stats(
            mu, cov, *gaussian_stats(digits_scorer.extractor(2 * x_test))
        )
    floors = digits_scorer.floors()
    assert floors.at_floor(real) and not floors.at_floor(x2)
    assert x2 > 2 * real and x10 > x2
    assert noise_fid > 5 * x10 and blank > 5 * x10
    assert x2_unclamped > 20 * x2 and x2_unclamped > noise_fid
    assert floors.ceiling > 5 * x10 and floors.floor < x2


def test_classifier_cache_skips_training_and_scores_identically(
    digits_scorer, digits_split, classifier_cache, monkeypatch
):
    x_train, y_train, x_test, _ = digits_split

    def fail(*args, **kwargs):
        raise AssertionError("the classifier was trained again")

    monkeypatch.setattr(features, "train_classifier", fail)
    settings = ScorerSettings("classifier", len(x_test), seed=0)
    cached = Scorer(x_train, y_train, settings, cache_dir=classifier_cache, **IMAGES)
    shifted = (x_test + 0.2).clamp(-1, 1)
    assert cached.score_tensor(shifted) == pytest.approx(
        digits_scorer.score_tensor(shifted), rel=1e-9, abs=0
    )
    other_labels = y_train.clone()
    other_labels[:10] = (other_labels[:10] + 1) % 10
    with pytest.raises(AssertionError, match="trained again"):  # labels are part of the key
        Scorer(x_train, other_labels, settings, cache_dir=classifier_cache, **IMAGES)


def test_classifier_training_is_deterministic_for_a_seed(digits_split):
    x_train, y_train, *_ = digits_split
    a, b, c = (features.train_classifier(x_train, y_train, seed=s, steps=8) for s in (3, 3, 4))
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_classifier_needs_labels_and_images():
    x, y = digits()
    settings = ScorerSettings("classifier", 100)
    with pytest.raises(ValueError, match="no labels; use extractor='raw'.*'inception'"):
        Scorer(x, None, settings, **IMAGES)
    with pytest.raises(ValueError, match="needs images"):
        Scorer(torch.randn(10, 2), torch.arange(10) % 2, settings, **IMAGES)
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        Scorer(x, y[:5], settings, **IMAGES)


@pytest.mark.slow
def test_classifier_works_on_28x28_images(tmp_path, digits_split):
    x_train, y_train, x_test, y_test = (t[:600] for t in digits_split)
    up = [torch.nn.functional.interpolate(t, size=28, mode="bilinear") for t in (x_train, x_test)]
    scorer = Scorer(
        up[0],
        y_train,
        ScorerSettings("classifier", 200),
        dataset_name="digits28",
        value_range=(-1.0, 1.0),
        cache_dir=tmp_path,
    )
    with torch.no_grad():
        accuracy = (scorer.extractor.logits(up[1]).argmax(1) == y_test).float().mean()
    assert accuracy >= 0.9
    assert 0 <= scorer.score_tensor(up[1]) < scorer.score_tensor(up[1].flip(-1))


def _numpy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of two feature sets' Gaussians, written out with scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


@pytest.fixture(scope="module")
def whitened_scorer(digits_split, classifier_cache):
    x_train, y_train, x_test, _ = digits_split
    settings = ScorerSettings("classifier-whitened", len(x_test), seed=0)
    return Scorer(x_train, y_train, settings, cache_dir=classifier_cache, **IMAGES)


def test_whitened_classifier_features_are_white_on_their_reference(
    whitened_scorer, digits_scorer, digits_split
):
    """The reference's own features come out centred with identity covariance (numpy's
    covariance of the output), in as many directions as the plain features' covariance has
    eigenvalues above the tolerance, from the same classifier the plain extractor trains."""
    x_train, *_ = digits_split
    white, plain = whitened_scorer.extractor, digits_scorer.extractor
    state_w, state_p = white.net.state_dict(), plain.net.state_dict()
    assert all(torch.equal(state_w[k], state_p[k]) for k in state_p)
    with torch.no_grad():
        f = white(x_train).numpy()
        g = plain(x_train).numpy()
    eig = np.linalg.eigvalsh(np.cov(g, rowvar=False))
    assert f.shape == (len(x_train), int((eig > 1e-6 * eig.max()).sum()))
    assert np.abs(f.mean(0)).max() < 1e-8
    assert np.abs(np.cov(f, rowvar=False) - np.eye(f.shape[1])).max() < 1e-6


def test_whitened_fid_is_the_mahalanobis_frechet_distance(
    whitened_scorer, digits_split, classifier_cache
):
    """FID with ``classifier-whitened`` equals the Frechet distance of the plain classifier
    features after numpy whitens them by the reference features' covariance (the formula of
    ``benchmarks.scorer_resolution``'s whitened column), and its cache rebuilds it exactly."""
    x_train, y_train, x_test, _ = digits_split
    noisy = x_test + 0.2 * torch.randn(x_test.shape, generator=torch.Generator().manual_seed(3))
    noisy = noisy.clamp(-1, 1)
    ours = whitened_scorer.score_tensor(noisy)
    extractor = whitened_scorer.extractor
    with torch.no_grad():
        plain = features.ClassifierFeatures(extractor.net, extractor.config)
        fit_set = plain(x_train).numpy()  # what fit whitened by
        mu = fit_set.mean(0)
        w, v = np.linalg.eigh(np.cov(fit_set, rowvar=False))
        keep = w > 1e-6 * w.max()
        whiten = v[:, keep] / np.sqrt(w[keep])
        ref_idx = whitened_scorer._split()[0]
        ref = (plain(x_train[ref_idx]).numpy() - mu) @ whiten
        gen = (plain(noisy).numpy() - mu) @ whiten
    assert ours == pytest.approx(_numpy_fd(ref, gen), rel=1e-4)
    settings = whitened_scorer.settings
    again = Scorer(x_train, y_train, settings, cache_dir=classifier_cache, **IMAGES)
    assert again.score_tensor(noisy) == pytest.approx(ours, rel=1e-9, abs=0)


# -- every extractor of the registry -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(EXTRACTORS) - {"inception"}))
def test_every_extractor_scores_finite_and_repeatably(name, classifier_cache, digits_split):
    x_train, y_train, x_test, _ = digits_split  # the classifier comes from the module's cache
    settings = ScorerSettings(name, len(x_test))
    scorer = Scorer(x_train, y_train, settings, cache_dir=classifier_cache, **IMAGES)
    f = scorer.features(x_test[:7])
    assert f.shape == (7, scorer.extractor.num_features) and f.dtype == torch.float64
    results = [list(scorer.score(torch.split(x_test, 100))) for _ in range(2)]
    assert [n for n, _ in results[0]] == [112, 225, 450]  # round(450/4) = 112, half to even
    assert results[0] == results[1]
    assert all(math.isfinite(v) and v >= 0 for _, v in results[0])
