"""benchmarks/peers.py: its verdicts follow the issue's rules (the best peer, "beyond the
spread", no ratio at the floor), its untuned-NFE schedules are the density's and AYS's, and the
committed JSON's README blocks and targets are what its figures give."""

from __future__ import annotations

import json
import re

import pytest
import torch

from benchmarks import peers
from benchmarks._common import README_KEY, RESULTS_DIR
from benchmarks.quality import Figure
from sigmatune.models.placement import StepDensity
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import interpolate, karras, validate
from sigmatune.study.records import InnerRecord, Schedule

RESULT = RESULTS_DIR / "peers.json"


def _fid(**means: float) -> dict[str, Figure]:
    return {k: Figure.of([v * 0.98, v, v * 1.02]) for k, v in means.items()}


PEER_MEANS = {"karras_rho7": 3.0, "karras_tuned": 2.0, "loglinear": 4.0, "gits": 2.5, "ld3": 2.2}


def test_the_best_peer_and_the_ratio_to_it():
    r = peers.row("ring", "heun", 5, _fid(**PEER_MEANS, tuned=1.5), floor=0.1, floor_spread=0.01)
    assert r["best_peer"] == "karras_tuned"
    assert r["tuned_over_best_peer"] == pytest.approx(0.75)
    assert r["tuned_worse_beyond_spread"] is False
    assert r["steps"] == 3


def test_worse_beyond_the_spread_means_beyond_both_spreads():
    fid = _fid(**PEER_MEANS)
    best = fid["karras_tuned"]  # 2.0 ± 0.04
    inside = Figure(best.mean + best.spread, 0.01, (0.0,))
    outside = Figure(best.mean + best.spread + 0.02, 0.01, (0.0,))
    inside_row = peers.row("ring", "heun", 5, {**fid, "tuned": inside}, floor=0.1, floor_spread=0)
    outside_row = peers.row("ring", "heun", 5, {**fid, "tuned": outside}, floor=0.1, floor_spread=0)
    assert not inside_row["tuned_worse_beyond_spread"]
    assert outside_row["tuned_worse_beyond_spread"]


def test_no_ratio_between_two_scores_at_the_floor():
    fid = _fid(**{**PEER_MEANS, "karras_tuned": 1.01}, tuned=1.0, density=1.02)
    r = peers.row("ring", "heun", 5, fid, floor=1.0, floor_spread=0.05)
    assert r["tuned_over_best_peer"] is None and r["density_over_tuned"] is None
    t = peers.targets([r])
    assert t["rows_nfe_le_9"] == 0 and t["peer_wins"] == []


def test_targets_count_the_rows():
    good = peers.row("m", "heun", 5, _fid(**PEER_MEANS, tuned=1.0, density=1.05, ays=1.3),
                     floor=0.1, floor_spread=0.0)  # fmt: skip
    lost = peers.row("m", "heun", 7, _fid(**PEER_MEANS, tuned=2.4, density=3.0, ays=2.4),
                     floor=0.1, floor_spread=0.0)  # fmt: skip
    high = peers.row("m", "heun", 15, _fid(**PEER_MEANS, tuned=1.9), floor=0.1, floor_spread=0.0)
    t = peers.targets([good, lost, high])
    assert t["rows_nfe_le_9"] == 2 and t["tuned_le_0.9_best_peer_nfe_le_9"] == 1
    assert t["tuned_worse_than_best_peer_beyond_spread"] == 1
    assert t["density_rows"] == 2 and t["density_within_1.1_of_tuned"] == 1
    assert [w["nfe"] for w in t["peer_wins"]] == [7]
    assert t["met"] == {
        "never_worse_beyond_spread": False,
        "half_at_0.9": True,
        "density_within_1.1": False,
    }


def test_untuned_schedules_are_the_other_budgets_density_and_the_nearest_interpolated():
    tuned = {k: karras(steps_for_nfe("heun", k), 0.01, 30.0, 5.0) for k in (5, 7, 9, 15)}
    records = {
        k: InnerRecord(
            k, f"x/nfe-{k}", 1.0, 0, {}, {"tuned": Schedule("heun", tuple(s.tolist()))}, {}, None
        )  # fmt: skip
        for k, s in tuned.items()
    }
    got = peers.untuned_schedules(records, 9, "heun")
    others = {k: s for k, s in tuned.items() if k != 9}
    expected = StepDensity.fit(others).schedule(5)
    assert torch.allclose(torch.tensor(got["density"].sigmas, dtype=torch.float64), expected)
    # nearest of 7 and 15 to 9 is 7 (ties go to the larger budget)
    assert got["ays"].sigmas == tuple(interpolate(tuned[7], 5).tolist())
    assert peers.nearest(6, [5, 7, 9]) == 7 and peers.nearest(5, [5, 7, 9]) == 7
    for s in got.values():
        validate(s.sigmas)


# ------------------------------------------------------------------------------ the JSON


@pytest.fixture(scope="module")
def payload():
    if not RESULT.exists():
        pytest.fail(f"{RESULT} is missing: run `python -m benchmarks.peers`")
    return json.loads(RESULT.read_text(encoding="utf-8"))


def test_committed_json_covers_the_grid(payload):
    assert not payload["quick"]
    rows = payload["rows"]
    grid = {(r["model"], r["sampler"], r["nfe"]) for r in rows}
    assert grid == {(m, s, k) for m in peers.MODELS for s in peers.SAMPLERS for k in (5, 7, 9, 15)}
    for r in rows:
        assert set(r["fid"]) == set(peers.COLUMNS)
        for fig in r["fid"].values():
            assert len(fig["values"]) == payload["held_out_sets"] >= 3
        for name in ("karras_tuned", "gits", "ld3", "tuned"):
            assert r["costs"][name]["denoiser_evaluations"] > 0
        for sigmas in r["sigmas"].values():
            assert len(validate(sigmas)) == r["steps"] + 1


def test_committed_targets_and_readme_are_its_figures(payload):
    assert peers.targets(payload["rows"]) == payload["targets"]
    assert peers.render_readme(payload) == payload[README_KEY]


NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def test_every_number_of_the_fid_table_is_a_figure_of_its_row(payload):
    """Each table row's FIDs are its JSON row's means and spreads, as printed."""
    table = [line for line in payload[README_KEY]["fid"].splitlines() if line.startswith("| ")]
    body = table[1:]
    assert len(body) == len(payload["rows"])
    for line, r in zip(body, payload["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [r["model"], peers.SAMPLER_LABELS[r["sampler"]], str(r["nfe"])]
        for cell, name in zip(cells[3 : 3 + len(peers.COLUMNS)], peers.COLUMNS, strict=True):
            mean, spread = (float(t.replace(",", "")) for t in NUMBER.findall(cell))
            fig = r["fid"][name]
            assert mean == pytest.approx(fig["mean"], rel=5e-3)
            assert spread == pytest.approx(fig["spread"], rel=5e-2, abs=1e-12)
