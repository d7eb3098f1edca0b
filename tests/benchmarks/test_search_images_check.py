"""benchmarks/search_images_check.py: its distance on an exact Gaussian denoiser, and the
paired comparison it draws from it beside the benchmark's own."""

from __future__ import annotations

import torch

from benchmarks import search_images_check as check
from sigmatune.models.schedules import karras


def test_the_exact_gaussian_denoiser_reaches_the_floor_and_one_step_does_not():
    # data N(mu, C) in 16 pixels, small enough that clamping to [-1, 1] never matters; its
    # exact denoiser mu + C (C + s^2 I)^-1 (x - mu) (the probability flow of a Gaussian is
    # exact, so a fine schedule samples the data distribution itself)
    g = torch.Generator().manual_seed(0)
    A = 0.1 * torch.randn(16, 16, generator=g, dtype=torch.float64)
    C = A @ A.T + 0.01 * torch.eye(16, dtype=torch.float64)
    mu = 0.2 * torch.randn(16, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(C)
    x_real = (mu + torch.randn(2000, 16, generator=g, dtype=torch.float64) @ L.T).reshape(
        2000, 1, 4, 4
    )

    def D(x, sigma):
        flat = x.reshape(len(x), -1)
        out = torch.empty_like(flat)
        for s in sigma.unique():
            rows = sigma == s
            gain = C @ torch.linalg.inv(C + float(s) ** 2 * torch.eye(16, dtype=C.dtype))
            out[rows] = mu + (flat[rows] - mu) @ gain.T
        return out.reshape(x.shape)

    schedules = {"fine": karras(64, 0.002, 80.0).tolist(), "one step": [80.0, 0.0]}
    scores = check.raw_scores(D, schedules, x_real, sets=2)
    floor = max(scores["real_vs_real"])
    fine, coarse = scores["schedules"]["fine"], scores["schedules"]["one step"]
    assert max(fine) < 1.5 * floor  # sampled exactly: within the real-vs-real spread
    assert min(coarse) > float(torch.trace(C)) * 0.8  # collapsed onto the mean
    assert check.raw_scores(D, schedules, x_real, sets=2) == scores  # seeded


def _row(arm, seed, held, raw, spread=0.1):
    return {
        "nfe": 5,
        "seed": seed,
        "images": int(arm.split("x")[0]),
        "arm": arm,
        "held_out": held,
        "held_out_spread": spread,
        "raw": raw,
        "raw_spread": spread,
    }


def test_the_comparison_pairs_seeds_and_says_when_the_two_sides_disagree():
    rows = [
        _row("1000", 0, 10.0, 1.0),
        _row("333", 0, 11.0, 1.0),  # FID worse, raw within
        _row("1000", 1, 10.0, 1.0),
        _row("333", 1, 11.0, 1.5),  # both worse
        _row("333x48", 0, 9.0, 0.5),  # both better
        _row("333x48", 2, 1.0, 0.1),  # no all-images row of seed 2: not paired
    ]
    c = check.compare(rows, "1000")
    assert c["333"]["product"] == {"worse": 2, "better": 0, "within": 0}
    assert c["333"]["independent"] == {"worse": 1, "better": 0, "within": 1}
    assert c["333"]["same_call"] == 1 and c["333"]["pairs"] == 2 and c["333"]["agrees"]
    assert c["333x48"]["pairs"] == 1 and c["333x48"]["agrees"]
    flipped = [*rows[:2], {**rows[3], "raw": 0.5}, rows[2]]  # seed 1: the check says better
    c = check.compare(flipped, "1000")
    assert c["333"]["independent"] == {"worse": 0, "better": 1, "within": 1}
    assert not c["333"]["agrees"]
    # the benchmark's FID calls a gain the check does not see: not confirmed
    unseen = [rows[0], {**rows[4], "raw": 1.05}]
    c = check.compare(unseen, "1000")["333x48"]
    assert c["product"]["better"] == 1 and c["independent"]["within"] == 1
    assert not c["agrees"]
