"""benchmarks/quality_analytic.py and its independent check: the numpy denoiser, sampler and
distance agree with closed forms and with the product; a tiny run writes held-out figures whose
ratios follow the floor rule, and the README block re-renders from the JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import independent
from benchmarks import quality_analytic as qa
from benchmarks._common import README_KEY
from benchmarks.quality import SCHEDULES
from sigmatune.models.analytic import GaussianMixture


def test_numpy_denoiser_is_the_posterior_mean_of_one_gaussian() -> None:
    """One component N(mu, s^2 I): E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    mix = independent.Mixture(np.array([[0.3, -0.2]]), np.array([0.5]), np.array([1.0]))
    x = np.array([[1.0, 2.0], [-0.5, 0.1]])
    expected = np.array([0.3, -0.2]) + 0.25 / (0.25 + 4.0) * (x - np.array([0.3, -0.2]))
    np.testing.assert_allclose(mix.denoise(x, 2.0), expected, rtol=1e-12)


def test_numpy_denoiser_agrees_with_the_product_on_a_64d_mixture() -> None:
    gm = GaussianMixture.random(d=64, K=8, seed=0)
    x = 0.7 * torch.randn(32, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigma in (0.01, 0.3, 5.0):
        ours = independent.Mixture.of(gm).denoise(x.numpy(), sigma)
        np.testing.assert_allclose(ours, gm.denoise(x, sigma).numpy(), atol=1e-10)


def test_numpy_heun_is_exact_for_one_gaussian() -> None:
    """For N(0, s^2) the probability-flow ODE is linear: x(sigma) = x(sigma_max) *
    sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2); many Heun steps reach it."""
    mix = independent.Mixture(np.zeros((1, 1)), np.array([0.5]), np.array([1.0]))
    sigmas = list(np.geomspace(10.0, 1e-3, 400)) + [0.0]
    x = independent.heun(mix, np.array([[10.0]]), sigmas)
    assert float(x[0, 0]) == pytest.approx(10.0 * 0.5 / math.sqrt(0.25 + 100.0), rel=1e-4)


def test_sliced_w2_of_a_shift() -> None:
    """Shifting a cloud by c moves every projection by c.theta: SW2^2 = mean (c.theta)^2."""
    x = np.random.default_rng(0).standard_normal((300, 3))
    c = np.array([0.3, -0.2, 0.5])
    theta = independent.directions(3, 64, seed=1)
    expected = float(np.sqrt(((c @ theta) ** 2).mean()))
    assert independent.sliced_w2(x + c, x, theta) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_quick_run_writes_held_out_rows(tmp_path, capsys) -> None:
    out = tmp_path / "qa.json"
    threads = torch.get_num_threads()
    returned = qa.main(["--quick", "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "quality_analytic"
    assert {"torch", "device", "cpu"} <= set(payload["machine"])
    assert set(payload["mixtures"]) == {"ring", "gmm64"}
    for m in payload["mixtures"].values():
        assert m["numpy_vs_product_max_abs_difference"] < 1e-9
        assert m["seeds"]["held_out_sets"] == 3 and m["floors"]["ceiling"] > m["floors"]["floor"]
        (row,) = m["rows"]
        assert row["nfe"] == 5 and row["sampler"] == "heun" and row["tuned_sigmas"][-1] == 0.0
        fid = row["fid"]
        for name in (*SCHEDULES, "reference"):
            assert len(fid[name]["values"]) == 3
        tuned, same = fid["tuned"]["mean"], fid["karras_rho7_same_range"]["mean"]
        at_floor = row["floor"] + 2 * row["floor_spread"]
        if tuned <= at_floor and same <= at_floor:
            assert row["placement_ratio"] is None  # no ratio between two scores at the floor
        else:
            assert row["placement_ratio"] == pytest.approx(tuned / same)
        sw = row["sliced_wasserstein"]
        assert set(sw) >= {"tuned", "karras_rho7", "reference", "true_vs_true"}
        assert sw["karras_rho7"]["mean"] > sw["true_vs_true"]["mean"]
    assert qa.render_readme(payload) == payload[README_KEY] == returned[README_KEY]
    assert "<!-- results: benchmarks/results/quality_analytic.json#ring -->" in (
        capsys.readouterr().out
    )
