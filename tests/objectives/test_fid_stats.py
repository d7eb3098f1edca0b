"""Tests of a FID reference given as precomputed statistics (the ``.npz`` of ``mu`` and
``sigma`` that pytorch-fid and clean-fid write): the checks of the file, and the scorer's
distances against scipy's Fréchet distance of the same statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from sigmatune.objectives.fid import (
    FloorsUnavailableError,
    ReferenceStatsError,
    Scorer,
    ScorerSettings,
    load_reference_stats,
)

SHAPE = (1, 4, 4)  # raw features: D = 16


def fd_scipy(mu1, s1, mu2, s2) -> float:
    """The Fréchet distance as pytorch-fid computes it (scipy's sqrtm of S1 S2)."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Images [n, 1, 4, 4] strictly inside (-1, 1), so clamping leaves them unchanged."""
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(0.5 * torch.randn(n, *SHAPE, generator=g) + shift)


def save_stats(path, x: torch.Tensor, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """mu and sigma of flattened samples, saved as pytorch-fid does (np.savez, np.cov)."""
    f = x.reshape(x.shape[0], -1).double().numpy()
    mu, sigma = f.mean(axis=0), np.cov(f, rowvar=False)
    np.savez(path, mu=mu.astype(dtype), sigma=sigma.astype(dtype))
    return mu, sigma


def settings(**kwargs) -> ScorerSettings:
    return ScorerSettings("raw", kwargs.pop("fid_num_images", 300), **kwargs)


def test_fid_against_statistics_equals_scipys_distance(tmp_path):
    path = tmp_path / "ref.npz"
    mu_ref, s_ref = save_stats(path, images(400, seed=0))
    scorer = Scorer.from_reference_stats(path, settings(), shape=SHAPE, value_range=(-1.0, 1.0))
    generated = images(300, seed=1, shift=0.3)
    f = generated.reshape(300, -1).double().numpy()
    expected = fd_scipy(mu_ref, s_ref, f.mean(0), np.cov(f, rowvar=False))
    assert scorer.score_tensor(generated) == pytest.approx(expected, rel=1e-6)
    # prefixes: the distance after 150 images is that of the first 150
    (n1, fid1), (n2, fid2) = scorer.score([generated], (0.5, 1.0), num_images=300)
    half = f[:150]
    assert (n1, n2) == (150, 300) and fid2 == pytest.approx(expected, rel=1e-6)
    assert fid1 == pytest.approx(
        fd_scipy(mu_ref, s_ref, half.mean(0), np.cov(half, rowvar=False)), rel=1e-6
    )
    assert np.array_equal(scorer.reference_stats[0], mu_ref)


def test_statistics_and_images_of_the_same_reference_score_alike(tmp_path):
    """A scorer from the reference's statistics and one from the images themselves (all of
    them in its subset) give the same FID."""
    reference = images(300, seed=0)
    path = tmp_path / "ref.npz"
    save_stats(path, reference)
    from_stats = Scorer.from_reference_stats(path, settings(), shape=SHAPE, value_range=(-1.0, 1.0))
    from_images = Scorer(reference, None, settings(), dataset_name="ref", value_range=(-1.0, 1.0))
    generated = images(300, seed=2, shift=0.2)
    assert from_stats.score_tensor(generated) == pytest.approx(
        from_images.score_tensor(generated), rel=1e-7
    )


def test_samples_are_clamped_before_scoring_against_statistics(tmp_path):
    path = tmp_path / "ref.npz"
    mu_ref, s_ref = save_stats(path, images(400, seed=0))
    scorer = Scorer.from_reference_stats(path, settings(), shape=SHAPE, value_range=(-1.0, 1.0))
    wild = 3 * torch.randn(300, *SHAPE, generator=torch.Generator().manual_seed(3))
    f = wild.clamp(-1, 1).reshape(300, -1).double().numpy()
    expected = fd_scipy(mu_ref, s_ref, f.mean(0), np.cov(f, rowvar=False))
    assert scorer.score_tensor(wild) == pytest.approx(expected, rel=1e-6)


def test_statistics_have_no_floors_and_no_kid(tmp_path):
    path = tmp_path / "ref.npz"
    save_stats(path, images(400, seed=0))
    scorer = Scorer.from_reference_stats(path, settings(), shape=SHAPE, value_range=(-1.0, 1.0))
    assert scorer.floors_available is False and scorer.num_reference is None
    with pytest.raises(FloorsUnavailableError) as info:
        scorer.floors()
    message = str(info.value)
    assert "\n" not in message and "ref.npz" in message and "statistics" in message
    normal = Scorer(images(600, 0), None, settings(), dataset_name="x", value_range=(-1.0, 1.0))
    assert normal.floors_available is True
    with pytest.raises(ValueError, match="kid=True"):
        Scorer.from_reference_stats(path, settings(kid=True), shape=SHAPE, value_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="extractor='rff'"):
        Scorer.from_reference_stats(
            path, ScorerSettings("rff", 300), shape=SHAPE, value_range=(-1.0, 1.0)
        )
    with pytest.raises(ValueError, match="value_range"):
        Scorer.from_reference_stats(path, settings(), shape=SHAPE, value_range=None)


def test_pytorch_fid_style_float32_statistics_load_as_float64(tmp_path):
    path = tmp_path / "ref.npz"
    mu, sigma = save_stats(path, images(100, seed=0), dtype=np.float32)
    mu_loaded, sigma_loaded = load_reference_stats(path, num_features=16)
    assert mu_loaded.dtype == sigma_loaded.dtype == np.float64
    assert np.allclose(mu_loaded, mu, rtol=1e-6) and np.allclose(sigma_loaded, sigma, rtol=1e-5)
    assert np.array_equal(sigma_loaded, sigma_loaded.T)


# -- bad files: one paragraph naming the file and the key --------------------------------------


def refused(path, **kwargs) -> str:
    with pytest.raises(ReferenceStatsError) as info:
        load_reference_stats(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_bad_statistics_files_are_refused_in_one_paragraph(tmp_path):
    d = 16
    rng = np.random.default_rng(0)
    a = rng.standard_normal((d, d))
    good_mu, good_sigma = rng.standard_normal(d), a @ a.T

    def npz(name: str, **arrays) -> str:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    assert "'sigma'" in refused(npz("no-sigma", mu=good_mu))
    assert "'mu'" in refused(npz("no-mu", sigma=good_sigma, m=good_mu))
    assert "mu" in refused(npz("mu-2d", mu=good_sigma, sigma=good_sigma))
    message = refused(npz("sigma-shape", mu=good_mu, sigma=good_sigma[:8]))
    assert "sigma" in message and "(8, 16)" in message
    bad_mu = good_mu.copy()
    bad_mu[3] = math.nan
    message = refused(npz("nan", mu=bad_mu, sigma=good_sigma))
    assert "mu" in message and "NaN" in message
    bad_sigma = good_sigma.copy()
    bad_sigma[0, 1] += 1.0
    assert "symmetric" in refused(npz("asymmetric", mu=good_mu, sigma=bad_sigma))
    message = refused(npz("width", mu=good_mu, sigma=good_sigma), num_features=2048)
    assert "2048" in message and "D=16" in message
    assert "dtype" in refused(npz("ints", mu=np.arange(d), sigma=np.eye(d, dtype=int)))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    assert "could not be read" in refused(garbage)
    single = tmp_path / "single.npy"
    np.save(single, good_mu)
    assert "single array" in refused(single)
    assert "could not be read" in refused(tmp_path / "missing.npz")


def test_inception_statistics_must_be_2048_wide(tmp_path):
    """Checked before the Inception network is built (no weights needed)."""
    path = tmp_path / "small.npz"
    np.savez(path, mu=np.zeros(16), sigma=np.eye(16))
    with pytest.raises(ReferenceStatsError, match="2048"):
        Scorer.from_reference_stats(
            path, ScorerSettings("inception", 1000), shape=(3, 32, 32), value_range=(-1.0, 1.0)
        )
    with pytest.raises(ValueError, match="C = 1 or 3"):
        Scorer.from_reference_stats(
            path, ScorerSettings("inception", 1000), shape=(4, 32, 32), value_range=(-1.0, 1.0)
        )
