"""benchmarks/search_images.py: the speed ratio is trials a minute over the all-images arm's
at the same NFE, and "equal or better" allows the two arms' spreads over seeds, no more."""

from __future__ import annotations

import pytest

from benchmarks import search_images as si
from benchmarks._common import machine_info


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
    summary = {(s["nfe"], s["images"]): s for s in si.summary(rows, "1000")}
    five = summary[(5, 333)]
    assert five["speed_ratio"] == pytest.approx(3.0)
    assert five["fid_ratio"] == pytest.approx(13 / 12)
    assert five["held_out_spread"] == pytest.approx(2**0.5)
    assert five["fid_equal_or_better"]  # 13 <= 12 + 1.414 + 1.414
    assert five["search_wins"] == 1 and five["studies"] == 2
    nine = summary[(9, 333)]
    assert nine["speed_ratio"] == pytest.approx(4.0) and not nine["fid_equal_or_better"]
    v = si.verdict(list(summary.values()), {}, "1000")["333"]
    assert v["speed_ratio_min"] == pytest.approx(3.0)
    assert v["fid_ratio_max"] == pytest.approx(1.1)
    assert not v["fid_equal_or_better"] and not v["met"]
    # without the NFE 9 rows it is met: 3x exactly, FID within the spreads
    only_five = [s for s in summary.values() if s["nfe"] == 5]
    assert si.verdict(only_five, {}, "1000")["333"]["met"]


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
    pairs = si.paired(rows, "1000")
    assert pairs == {"333": {"worse": 1, "better": 1, "within": 1}}
    # means within the spreads and fast enough, yet worse in more pairs than better
    arm = {"images": 333, "speed_ratio": 3.5, "fid_ratio": 1.02, "fid_equal_or_better": True}
    worse = {"333": {"worse": 2, "better": 1, "within": 0}}
    v = si.verdict([arm], worse, "1000")["333"]
    assert v["contradicted"] and not v["met"]
    assert si.verdict([arm], pairs, "1000")["333"]["met"]


def test_an_arm_with_its_own_trial_budget_is_compared_with_the_all_images_arm():
    assert si.parse_arm("333", 16) == (333, 16)
    assert si.parse_arm("333x48", 16) == (333, 48)
    for bad in ("x48", "333x", "333x0", "1", "abc"):
        with pytest.raises(ValueError, match="IMAGESxTRIALS"):
            si.parse_arm(bad, 16)
    assert si.arm_label(333, 16, 16) == "333" and si.arm_label(333, 48, 16) == "333x48"
    rows = []
    for seed, (a, b, c) in enumerate([(10.0, 11.0, 9.0), (10.0, 11.0, 9.2)]):
        for label, images, tpm, held in (("1000", 1000, 10.0, a), ("333", 333, 30.0, b)):
            rows.append({**_row(images, 5, tpm, held), "arm": label, "seed": seed})
        rows.append({**_row(333, 5, 31.0, c), "arm": "333x48", "seed": seed})
    for r in rows:
        r["held_out_spread"] = 0.1
    summary = {s["arm"]: s for s in si.summary(rows, "1000")}
    assert set(summary) == {"1000", "333", "333x48"}  # two arms of 333 images kept apart
    assert summary["333x48"]["held_out"] == pytest.approx(9.1)
    assert summary["333x48"]["speed_ratio"] == pytest.approx(3.1)
    pairs = si.paired(rows, "1000")
    assert pairs["333"] == {"worse": 2, "better": 0, "within": 0}
    assert pairs["333x48"] == {"worse": 0, "better": 2, "within": 0}
    v = si.verdict(list(summary.values()), pairs, "1000")
    assert v["333"]["contradicted"] and not v["333"]["met"]
    assert v["333x48"]["met"]
    payload = {
        "settings": {"fid_images": 1000, "seeds": [0, 1]},
        "summary": list(summary.values()),
        "verdict": v,
        "model": "m",
        "trials": 16,
        "machine": machine_info(),
    }
    text = si.render_readme(payload)["search_images"]
    assert "| 5 | 333, 48 trials |" in text and "| 5 | all |" in text
    assert "- 333 search images, 48 trials: at least 3.10× " in text


@pytest.mark.parametrize(
    "arms, message",
    [
        (["333", "1000"], "the first arm is the all-images arm, the largest"),
        (["1000x48", "333"], "the first arm runs the base 16 trials"),
        (["500", "333"], "the all-images arm: 1000"),
        (["1000", "333x"], "IMAGESxTRIALS"),
    ],
)
def test_bad_arms_are_refused_naming_the_option(arms, message, capsys):
    with pytest.raises(SystemExit):
        si.parse_args(["--arms", *arms])
    err = capsys.readouterr().err
    assert "--arms" in err and message in err
