"""benchmarks/outer_check.py: its distance on the exact mixture, the target rule, its table."""

from __future__ import annotations

import pytest
import torch

from benchmarks import _common, independent, outer_check
from sigmatune.models.data import gmm32_mixture
from sigmatune.models.schedules import karras


@pytest.fixture(scope="module")
def mixture():
    exact = gmm32_mixture()
    return exact, independent.Mixture.of(exact)


def test_sw_of_the_exact_denoiser_reaches_the_floor_and_a_coarse_schedule_does_not(mixture):
    exact, mix = mixture
    fine = karras(64, 0.002, 80.0).tolist()
    coarse = karras(3, 0.002, 80.0).tolist()
    kw = {"samples": 1000, "sets": 2}
    floor = outer_check.floor_scores(mix, **kw)
    good = outer_check.sw_scores(exact.denoise, fine, mix, **kw)
    bad = outer_check.sw_scores(exact.denoise, coarse, mix, **kw)
    assert max(good) < 2 * max(floor)  # sampled exactly: at the floor
    assert min(bad) > 3 * max(good)
    assert outer_check.sw_scores(exact.denoise, fine, mix, **kw) == good  # seeded


def test_beats_needs_both_spreads():
    b = {"mean": 1.0, "spread": 0.1}
    assert outer_check.beats({"mean": 0.8, "spread": 0.05}, b)
    assert not outer_check.beats({"mean": 0.86, "spread": 0.05}, b)  # 0.86+0.15 > 1
    assert not outer_check.beats({"mean": 1.2, "spread": 0.0}, b)


def test_the_table_names_both_trials_and_the_verdicts():
    def row(trial, name, sw, fid):
        seeds = {"101": outer_check.stats([sw, sw + 0.01])}
        return {
            "trial": trial,
            "name": name,
            "held_out_fid": {"mean": fid, "spread": 0.02},
            "same_model": outer_check.stats([sw, sw]),
            "retrained": seeds,
            "retrained_pooled": seeds["101"],
            "retrained_fid_pooled": outer_check.stats([fid, fid]),
        }

    payload = {
        "nfe": 5,
        "source": "outer_study_gmm32_cmaes.json",
        "floor": outer_check.stats([0.02, 0.03]),
        "rows": {
            "study's best": row(16, None, 0.07, 0.17),
            "best literature": row(1, "edm2", 0.075, 0.23),
        },
        "verdict": {"same_model": False, "retrained": False, "retrained_fid": True},
        "machine": _common.machine_info("cpu"),
    }
    text = outer_check.render_readme(payload)["outer_check"]
    assert "| study's best | 16 (proposed) | 0.170 ± 0.020 |" in text
    assert "| best literature | 1 (edm2) |" in text
    assert "same models no; trained again with other seeds no (SW2), yes" in text
    assert torch.isfinite(torch.tensor(payload["floor"]["mean"]))
