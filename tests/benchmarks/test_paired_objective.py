"""benchmarks/paired_objective.py: its rank agreement is Spearman's ρ (checked against ranks
computed here), over all the schedules and over the better half by held-out FID."""

from __future__ import annotations

import pytest

from benchmarks import paired_objective as po


def _pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a) ** 0.5
    vb = sum((y - mb) ** 2 for y in b) ** 0.5
    return cov / (va * vb)


def _ranks(v):
    order = sorted(range(len(v)), key=v.__getitem__)
    r = [0.0] * len(v)
    for rank, i in enumerate(order, 1):
        r[i] = float(rank)
    return r


def test_spearman_is_the_correlation_of_the_ranks():
    a = [0.3, 1.2, 0.9, 5.0, 0.1]
    b = [1.0, 2.0, 4.0, 3.0, 0.5]
    assert po.spearman(a, b) == pytest.approx(_pearson(_ranks(a), _ranks(b)))
    assert po.spearman(a, [2 * x for x in a]) == pytest.approx(1.0)
    assert po.spearman([1.0, 2.0], [2.0, 1.0]) is None  # under 3 points
    assert po.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # a constant


def _row(search, paired, distance, held):
    return {
        "search_fid": search,
        "paired": {"value": paired, "paired": distance},
        "held_out_fid": held,
    }


def test_rank_agreement_over_all_and_over_the_better_half():
    # the search FID orders all six as held-out FID does; the paired bound gets the three
    # worst right and the three best in reverse
    held = [0.1, 0.2, 0.3, 1.0, 2.0, 3.0]
    rows = [
        _row(s, p, p / 2, h)
        for s, p, h in zip([1, 2, 3, 4, 5, 6], [3.0, 2.0, 1.0, 4.0, 5.0, 6.0], held)
    ]
    out = po.rank_agreement(rows)
    assert out["n"] == 6 and out["fid"] == pytest.approx(1.0)
    assert out["paired"] == pytest.approx(_pearson([3, 2, 1, 4, 5, 6], [1, 2, 3, 4, 5, 6]))
    assert out["paired_distance_alone"] == pytest.approx(out["paired"])
    assert out["top_half"]["n"] == 3
    assert out["top_half"]["fid"] == pytest.approx(1.0)
    assert out["top_half"]["paired"] == pytest.approx(-1.0)
