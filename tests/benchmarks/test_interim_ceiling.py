"""benchmarks/interim_ceiling.py: the interim's precision ceiling against closed forms, and
the cause it names (noise or crossing) on made-up outer-study results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

from benchmarks import interim_ceiling as ic


def test_spearman_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    ours = ic.spearman(a, b)
    theirs = [spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


@pytest.mark.parametrize(
    ("gap", "e1", "e2"), [(0.1, 0.05, 0.05), (0.02, 0.03, 0.01), (1, 0.1, 0.2)]
)
def test_ceiling_of_two_models_is_one_minus_twice_the_chance_they_swap(gap, e1, e2):
    """Two models: rho is +1 or -1, so its expectation is 1 - 2 P(swap), and the redrawn
    difference is normal with standard deviation sqrt(e1^2 + e2^2)."""
    swap = norm.cdf(-gap / math.hypot(e1, e2))
    got = ic.precision_ceiling([0.0, gap], [e1, e2], draws=200_000, seed=3)
    assert got == pytest.approx(1 - 2 * swap, abs=0.01)


def test_no_error_gives_a_ceiling_of_one_and_huge_errors_about_zero():
    assert ic.precision_ceiling([1, 2, 3, 4], [0, 0, 0, 0], draws=100) == 1.0
    assert abs(ic.precision_ceiling([1, 2, 3, 4], [1e6] * 4, draws=50_000)) < 0.02


def _source(interim: dict[str, tuple[float, float]], final: dict[str, float]) -> dict:
    """An outer_study JSON's shape, its agreement computed as outer_study computes it."""
    from benchmarks.outer_study import interim_agreement

    scores = {"karras": {"32256": {k: {"fid": m, "spread": s} for k, (m, s) in interim.items()}}}
    return {
        "config": {"inner": {"held_out_sets": 3}},
        "git": {"commit": "a" * 40},
        "preset": "made-up",
        "nfe": 5,
        "literature": [
            {"trial": int(k), "name": f"m{k}", "fid": v, "fid_spread": 0.001, "state": "COMPLETE"}
            for k, v in final.items()
        ]
        + [{"trial": 99, "name": "pruned", "fid": None, "fid_spread": None, "state": "PRUNED"}],
        "interim": {
            "rungs": [32000],
            "scores": scores,
            "agreement": interim_agreement(scores, final, [32000]),
        },
    }


def test_the_cause_is_named_from_the_ceiling_and_rho():
    final = {"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0, "4": 5.0}
    # precise and in the final's order: met
    same = ic.analyse(_source({k: (v, 0.001) for k, v in final.items()}, final), "s", 2000)
    (row,) = same["rows"]
    assert (row["rho"], row["cause"], row["rung"]) == (1.0, "met", True)
    assert row["ceiling"] > 0.99 and same["final_ceiling"] > 0.99
    # precise but reversed: the models changed order after the checkpoint
    rev = ic.analyse(_source({k: (10 - v, 0.001) for k, v in final.items()}, final), "r", 2000)
    (row,) = rev["rows"]
    assert row["rho"] == pytest.approx(-1.0) and row["cause"] == "crossing"
    # so noisy that the checkpoint itself is not ranked: noise
    noisy = ic.analyse(_source({k: (10 - v, 50.0) for k, v in final.items()}, final), "n", 2000)
    (row,) = noisy["rows"]
    assert row["ceiling"] < ic.PRECISE and row["cause"] == "noise"
    # the model that moved most: the best at the end was the worst here (or the reverse)
    assert rev["rows"][0]["moved"]["rank_here"] in (1, 5)


def test_a_source_without_interims_is_refused(tmp_path, capsys):
    import json

    bad = tmp_path / "plain.json"
    bad.write_text(json.dumps({"benchmark": "outer_study"}))
    with pytest.raises(SystemExit) as exc:
        ic.main(["--sources", str(bad), "--out", str(tmp_path / "o.json")])
    assert exc.value.code == 2
    assert "no interim scores" in capsys.readouterr().err
