"""benchmarks/search_images.py: the speed ratio is trials a minute over the all-images arm's
at the same NFE, and "equal or better" allows the two arms' spreads over seeds, no more."""

from __future__ import annotations

import pytest

from benchmarks import search_images as si


def _row(images, nfe, tpm, held, origin="search"):
    return {
        "images": images,
        "nfe": nfe,
        "trials_per_minute": tpm,
        "seconds": 60.0,
        "denoiser_evaluations": 1000.0,
        "held_out": held,
        "origin": origin,
        "floor": 4.0,
        "floor_spread": 0.2,
    }


def test_ratios_spreads_and_the_verdict():
    rows = [
        _row(1000, 5, 10.0, 11.0),
        _row(1000, 5, 12.0, 13.0),  # all images: 11 trials/min, FID 12 ± 1.414
        _row(333, 5, 33.0, 12.0),
        _row(333, 5, 33.0, 14.0, origin="ld3"),  # 33 trials/min, FID 13 ± 1.414
        _row(1000, 9, 10.0, 5.0),
        _row(1000, 9, 10.0, 5.0),  # FID 5 ± 0
        _row(333, 9, 40.0, 5.5),
        _row(333, 9, 40.0, 5.5),  # FID 5.5 ± 0: worse beyond both spreads
    ]
    summary = {(s["nfe"], s["images"]): s for s in si.summary(rows, 1000)}
    five = summary[(5, 333)]
    assert five["speed_ratio"] == pytest.approx(3.0)
    assert five["fid_ratio"] == pytest.approx(13 / 12)
    assert five["held_out_spread"] == pytest.approx(2**0.5)
    assert five["fid_equal_or_better"]  # 13 <= 12 + 1.414 + 1.414
    assert five["search_wins"] == 1 and five["studies"] == 2
    nine = summary[(9, 333)]
    assert nine["speed_ratio"] == pytest.approx(4.0) and not nine["fid_equal_or_better"]
    v = si.verdict(list(summary.values()), {}, 1000)["333"]
    assert v["speed_ratio_min"] == pytest.approx(3.0)
    assert v["fid_ratio_max"] == pytest.approx(1.1)
    assert not v["fid_equal_or_better"] and not v["met"]
    # without the NFE 9 rows it is met: 3x exactly, FID within the spreads
    only_five = [s for s in summary.values() if s["nfe"] == 5]
    assert si.verdict(only_five, {}, 1000)["333"]["met"]


def _study(images, nfe, seed, held, spread):
    return {"images": images, "nfe": nfe, "seed": seed, "held_out": held, "held_out_spread": spread}


def test_the_paired_comparison_counts_studies_of_the_same_seed_beyond_both_spreads():
    rows = [
        _study(1000, 5, 0, 10.0, 0.2),
        _study(333, 5, 0, 10.5, 0.2),  # worse by 0.5 > 0.4
        _study(1000, 5, 1, 10.0, 0.2),
        _study(333, 5, 1, 10.3, 0.2),  # within
        _study(1000, 9, 0, 5.0, 0.1),
        _study(333, 9, 0, 4.7, 0.1),  # better by 0.3 > 0.2
        _study(333, 9, 1, 1.0, 0.1),  # no all-images study of seed 1 at NFE 9: not counted
    ]
    pairs = si.paired(rows, 1000)
    assert pairs == {"333": {"worse": 1, "better": 1, "within": 1}}
    # means within the spreads and fast enough, yet worse in more pairs than better
    arm = {"images": 333, "speed_ratio": 3.5, "fid_ratio": 1.02, "fid_equal_or_better": True}
    worse = {"333": {"worse": 2, "better": 1, "within": 0}}
    v = si.verdict([arm], worse, 1000)["333"]
    assert v["contradicted"] and not v["met"]
    assert si.verdict([arm], pairs, 1000)["333"]["met"]
