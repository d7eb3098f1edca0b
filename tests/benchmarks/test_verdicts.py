"""Verdicts follow the rules (issue 19, DESIGN "verdicts follow the rules"): no ratio and no
"met" between two scores at the floor ("at the floor: undecidable"), and a target the
independent check judges otherwise is "contradicted by the independent check", not "met".
Small made-up figures: the logic alone."""

from __future__ import annotations

import pytest

from benchmarks import outer_study, peers, quality_trained
from benchmarks._common import (
    CONTRADICTED,
    MET,
    MISSED,
    NOT_MEASURED,
    UNDECIDABLE,
    at_floor,
    floor_ratio,
    verdict,
)
from benchmarks.quality import Figure
from sigmatune.objectives.fid import AT_FLOOR_SPREADS, Floors


def test_at_floor_and_ratio_follow_the_scorers_rule():
    floors = Floors.from_values([1.9, 2.0, 2.1], [9.0, 10.0], floor_num_images=10, floor_source="x")
    edge = floors.floor + AT_FLOOR_SPREADS * floors.floor_spread  # 2.2
    for value in (1.0, edge, edge + 1e-9, 5.0):
        assert at_floor(value, floors.floor, floors.floor_spread) == floors.at_floor(value)
    assert floor_ratio(2.1, 1.9, 2.0, 0.1) is None  # both at the floor
    assert floor_ratio(4.0, 2.0, 2.0, 0.1) == pytest.approx(2.0)  # one above it: a ratio
    assert floor_ratio(1.0, None, 2.0, 0.1) is None and floor_ratio(1.0, 0.0, None, None) is None
    assert not at_floor(1.0, None, None)  # no floor known: nothing is at it


def test_verdict_order():
    assert verdict(True) == MET and verdict(False) == MISSED and verdict(None) == NOT_MEASURED
    assert verdict(True, undecidable=True) == UNDECIDABLE == "at the floor: undecidable"
    assert verdict(True, independent_met=False) == CONTRADICTED
    assert verdict(False, independent_met=True) == CONTRADICTED
    assert verdict(True, independent_met=True) == MET
    assert verdict(None, undecidable=True) == UNDECIDABLE  # no ratio: still undecidable


def _outer(best_fid, lit_fid, edm_fid, floor=2.0, spread=0.8, independent=None):
    rows = {
        "best_study": {"fid": best_fid, "fid_spread": 0.4, "name": "edm2", "trial": 1},
        "best_literature": {"fid": lit_fid, "fid_spread": 0.4, "name": "edm2", "trial": 1},
        "edm": {"fid": edm_fid, "fid_spread": 0.5, "name": "edm", "trial": 0},
    }
    lit = [{**rows["edm"], "images": 100}, {**rows["best_literature"], "images": 100}]
    stu = [{**rows["best_study"], "images": 50}]
    comparison = outer_study.compare(lit, stu, {"floor": floor, "floor_spread": spread})
    return {"comparison": comparison, "independent": independent}


def test_outer_study_two_scores_at_the_floor_are_undecidable_not_met():
    payload = _outer(2.51, 2.46, 4.42)  # floor + 2 spreads = 3.6: the two best are at it
    c = payload["comparison"]
    assert c["study_vs_literature"] is None and c["targets"][outer_study.BEST] is None
    assert c["study_vs_edm"] == pytest.approx(2.51 / 4.42)
    verdicts = outer_study.target_verdicts(payload)
    assert verdicts[outer_study.BEST] == UNDECIDABLE
    assert verdicts[outer_study.EDM] == MET and verdicts[outer_study.IMAGES] == MET
    above = outer_study.target_verdicts(_outer(5.0, 4.9, 9.0))  # none at the floor
    # the best is EDM2, an enqueued literature configuration: met by construction, not search
    assert above[outer_study.BEST] == outer_study.BY_CONSTRUCTION


def test_outer_study_edm_target_contradicted_by_the_raw_pixel_check():
    check = {
        "real_vs_real": [0.26, 0.24, 0.30],
        "trials": {
            "0": {"name": "edm", "values": [0.94, 0.97, 0.94]},
            "1": {"name": "edm2", "values": [0.81, 0.85, 0.84]},  # 0.88x EDM: above 0.85
        },
    }
    payload = _outer(2.51, 2.46, 4.42, independent=check)
    assert outer_study.independent_targets(payload["comparison"], check)[outer_study.EDM] is False
    verdicts = outer_study.target_verdicts(payload)
    assert verdicts[outer_study.EDM] == CONTRADICTED
    assert verdicts[outer_study.BEST] == UNDECIDABLE  # the floor first
    agree = {**check, "trials": {**check["trials"], "1": {"name": "edm2", "values": [0.5] * 3}}}
    assert (
        outer_study.target_verdicts(_outer(2.51, 2.46, 4.42, independent=agree))[outer_study.EDM]
        == MET
    )


def test_an_older_outer_json_is_judged_from_its_figures():
    payload = _outer(2.51, 2.46, 4.42)
    c = payload["comparison"]
    c["targets"][outer_study.BEST] = True  # what an older run stored: "met"
    del c["undecidable"]
    c["study_vs_literature"] = 2.51 / 2.46
    assert outer_study.target_verdicts(payload)[outer_study.BEST] == UNDECIDABLE


def _qt_target(value, met=None, measured=True):
    return {"nfe": 9, "placement_ratio": 0.8, "measured": measured, "value": value, "met": met}


def _qt_check(tuned, karras, rr=(0.25, 0.02)):
    def fig(m):
        return {"mean": m, "spread": 0.01, "values": [m] * 3}

    return {
        "real_vs_real": {"mean": rr[0], "spread": rr[1], "values": [rr[0]] * 3},
        "raw_frechet": {"9": {"tuned": fig(tuned), "karras_rho7_same_range": fig(karras)}},
    }


def test_quality_trained_target_verdicts():
    tv = quality_trained.target_verdict
    assert tv(_qt_target(None, measured=False), None) == NOT_MEASURED
    assert tv(_qt_target(None), None) == UNDECIDABLE  # both at the floor: no ratio
    assert tv(_qt_target(0.5, True), None) == MET
    assert tv(_qt_target(0.5, True), _qt_check(0.9, 2.8)) == MET  # 0.32x: the check agrees
    assert tv(_qt_target(0.5, True), _qt_check(2.7, 2.8)) == CONTRADICTED  # 0.96x
    assert tv(_qt_target(0.9, False), _qt_check(0.9, 2.8)) == CONTRADICTED
    # the check's two figures both at its own floor: it cannot judge, the verdict stands
    assert tv(_qt_target(0.5, True), _qt_check(0.26, 0.27)) == MET


def test_peers_no_ratio_and_no_met_when_every_row_is_at_the_floor():
    fid = {
        k: Figure.of([v * 0.98, v, v * 1.02])
        for k, v in {
            "karras_rho7": 1.02,
            "karras_tuned": 1.01,
            "loglinear": 1.03,
            "gits": 1.02,
            "ld3": 1.02,
            "tuned": 1.0,
            "density": 1.02,
        }.items()
    }
    r = peers.row("ring", "heun", 5, fid, floor=1.0, floor_spread=0.05)
    assert r["tuned_over_best_peer"] is None and r["density_over_tuned"] is None
    t = peers.targets([r])
    text = peers.targets_text(t)
    assert "least half; at the floor: undecidable)" in text
    assert "of 0 rows (at the floor: undecidable)" in text  # the density target
    assert peers.half_verdict(True, 3, 4) == MET and peers.half_verdict(False, 3, 4) == MISSED
    assert peers.half_verdict(False, 0, 0) == MISSED  # no rows at all: nothing measured there
