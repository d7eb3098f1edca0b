"""dashboards.figures: what each figure draws from a study's stored records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sigmatune.dashboards import figures as F
from sigmatune.models.schedules import karras, loglinear
from sigmatune.study.records import read_inner_trials, read_study

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _lam(sigmas):
    return [-2 * math.log(s) for s in sigmas if s > 0]


# --------------------------------------------------------------------------------- curves


def test_step_density_matches_hand_computed_intervals():
    # lam = 0, 2, 6: mass 1/2 on each interval, over widths 2 and 4
    sigmas = [1.0, math.exp(-1.0), math.exp(-3.0), 0.0]
    xs, ys = F.step_density(sigmas)
    assert xs == pytest.approx([0.0, 2.0, 6.0])
    assert ys == pytest.approx([0.25, 0.125, 0.125])


@pytest.mark.parametrize("n", [2, 3, 8, 17])
def test_step_density_is_uniform_for_loglinear_and_integrates_to_one(n):
    xs, ys = F.step_density(loglinear(n, SIGMA_MIN, SIGMA_MAX))
    width = 2 * math.log(SIGMA_MAX / SIGMA_MIN)
    assert ys == pytest.approx([1 / width] * n, rel=1e-9)
    k = karras(n, SIGMA_MIN, SIGMA_MAX).tolist()
    xs, ys = F.step_density(k)
    assert sum(y * (b - a) for a, b, y in zip(xs[:-1], xs[1:], ys)) == pytest.approx(1.0)


def test_step_density_of_one_step_is_empty_and_bad_schedules_are_refused():
    assert F.step_density([SIGMA_MAX, 0.0]) == ([], [])
    with pytest.raises(ValueError, match="end with exactly 0"):
        F.step_density([2.0, 1.0])


# --------------------------------------------------------------------------------- figures


@pytest.fixture
def data(synthetic_study):
    return read_study(synthetic_study.storage, synthetic_study.name)


def _held(t, nfe, name):
    return t.inner[nfe].held_out.mean(name)


def test_headline_draws_every_weighting_and_the_best_trials_step_density(data):
    fig = F.figure_headline(data)
    top = [tr for tr in fig.data if tr.yaxis == "y"]
    bottom = [tr for tr in fig.data if tr.yaxis == "y2"]
    assert len(top) == 4  # every trial with a training weighting, the failed one included
    best = [tr for tr in top if tr.name.startswith("best")]
    assert len(best) == 1 and "trial 1" in best[0].name and best[0].line.color == F.BEST_COLOR
    edm = [tr for tr in top if tr.name.startswith("EDM")]
    assert len(edm) == 1 and edm[0].line.dash == "dash"
    lam = torch.tensor(top[0].x, dtype=torch.float64)
    for tr in top:  # normalised: area 1
        assert float(torch.trapezoid(torch.tensor(tr.y, dtype=torch.float64), lam)) == (
            pytest.approx(1.0, rel=1e-3)
        )
    for nfe in (5, 9):
        sigmas = data.best.inner[nfe].tuned.sigmas
        rug = [tr for tr in bottom if tr.name == f"NFE {nfe} steps"]
        assert list(rug[0].x) == pytest.approx(_lam(sigmas), rel=1e-5)
        line = [tr for tr in bottom if tr.name.startswith(f"NFE {nfe}:")]
        assert line[0].line.shape == "hv" and len(line[0].y) == len(sigmas) - 1


def test_overview_puts_each_trial_at_its_baseline_and_tuned_fid(data):
    fig = F.figure_overview(data)
    points = {}
    for tr in fig.data:
        if tr.mode == "markers+text":
            for text, x, y in zip(tr.text, tr.x, tr.y):
                points[int(text)] = (x, y, tr.name)
    assert set(points) == {0, 1, 2}
    for n, (x, y, _group) in points.items():
        t = data.trial(n)
        assert x == pytest.approx(_held(t, 5, "karras_rho7"), rel=1e-5)
        assert y == pytest.approx(_held(t, 5, "tuned"), rel=1e-5)
    assert points[1][2] == "best" and points[0][2] == "EDM defaults"


def test_steps_and_fid_figures_show_the_tuned_schedule_against_the_fair_baselines(data):
    fig = F.figure_steps(data)
    rows = {tr.y[0]: tr for tr in fig.data}
    names = ("tuned", "karras_rho7", "karras_rho7_same_range", "loglinear_same_range")
    for nfe in (5, 9):
        for name in names:
            tr = rows[f"NFE {nfe} · {F.SCHEDULE_LABELS[name]}"]
            assert list(tr.x) == pytest.approx(
                _lam(data.best.inner[nfe].schedules[name].sigmas), rel=1e-5
            )
    fig = F.figure_fid_vs_nfe(data)
    by_name = {tr.name: tr for tr in fig.data}
    assert list(by_name["tuned"].x) == [5, 9]
    for name in names:  # held-out means with their spread as error bars
        tr = by_name[F.SCHEDULE_LABELS[name]]
        assert list(tr.y) == pytest.approx([_held(data.best, k, name) for k in (5, 9)])
        spreads = [data.best.inner[k].held_out.spread(name) for k in (5, 9)]
        assert list(tr.error_y.array) == pytest.approx(spreads, rel=1e-5)
    floor = [s for s in fig.layout.shapes if s.type == "line"]
    assert floor and floor[0].y0 == pytest.approx(data.floors["floor"])


def test_densities_figure_has_p_and_w_per_trial(data):
    fig = F.figure_densities(data)
    assert len([tr for tr in fig.data if tr.yaxis == "y"]) == 4
    assert len([tr for tr in fig.data if tr.yaxis == "y2"]) == 4
    assert fig.layout.yaxis2.type == "log"


def test_inner_trials_figure_lists_trials_best_first(synthetic_study):
    trials = read_inner_trials(synthetic_study.storage, "synth/trial-0001/nfe-5")
    fig = F.figure_inner_trials(trials, title="t")
    fids = [float(tr.y[0].split("FID ")[1].split(" ")[0]) for tr in fig.data]
    assert len(fids) == 5
    assert fids[::-1] == sorted(fids)  # drawn bottom-up: the best is the top row
    assert sum("karras" in tr.y[0] for tr in fig.data) == 1


def test_study_figures_have_stable_ids_and_plain_json(data):
    figs = F.study_figures(data)
    assert list(figs) == [
        "sigmatune-headline",
        "sigmatune-densities",
        "sigmatune-overview",
        "sigmatune-steps",
        "sigmatune-fid-nfe",
    ]
    for fig in figs.values():
        text = fig.to_json()
        assert "bdata" not in text  # plain lists: any plotly.js reads them
        assert all(len(tr["x"]) for tr in json.loads(text)["data"])


# --------------------------------------------------------------------------- capacity figure


def _with_lam_errors(data, reference="exact"):
    """The study with stored per-lam errors on its best trial (16 bins over the run's range)."""
    import dataclasses

    lam_lo, lam_hi = -2 * math.log(SIGMA_MAX), -2 * math.log(SIGMA_MIN)
    edges = torch.linspace(lam_lo, lam_hi, 17).tolist()
    errors = {
        "edges": edges,
        "error": [0.01 * (k + 1) for k in range(16)],
        "stderr": [0.001] * 16,
        "per_bin": 256,
        "reference": reference,
    }
    best = data.best
    trials = [
        dataclasses.replace(t, lam_errors=errors) if t.number == best.number else t
        for t in data.trials
    ]
    return dataclasses.replace(data, trials=trials), errors


def test_capacity_figure_is_shown_only_where_a_model_stored_its_per_lam_errors(data):
    assert "capacity" not in F.shown_figures(data)
    with_errors, _ = _with_lam_errors(data)
    assert list(F.shown_figures(with_errors))[:2] == ["headline", "capacity"]


@pytest.mark.parametrize("reference", ["exact", "data"])
def test_capacity_figure_draws_w_the_stored_errors_at_bin_centres_and_the_steps(data, reference):
    with_errors, errors = _with_lam_errors(data, reference)
    fig = F.figure_capacity(with_errors)
    (err,) = [tr for tr in fig.data if tr.yaxis == "y2"]
    edges = errors["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    assert list(err.x) == pytest.approx(centres, abs=1e-4)  # drawn with 6 significant digits
    assert list(err.y) == pytest.approx(errors["error"], rel=1e-5)
    assert list(err.error_y.array) == pytest.approx(errors["stderr"], rel=1e-5)
    assert fig.layout.yaxis2.type == "log"
    assert F.ERROR_REFERENCES[reference] in fig.layout.annotations[1].text
    # W of the best trial, normalised: integrates to one over the run's lam range
    (w,) = [tr for tr in fig.data if tr.yaxis == "y"]
    xs, ys = list(w.x), list(w.y)
    area = sum((b - a) * (ya + yb) / 2 for a, b, ya, yb in zip(xs, xs[1:], ys, ys[1:]))
    assert area == pytest.approx(1.0, rel=1e-2)
    steps = [tr for tr in fig.data if tr.yaxis == "y3"]
    assert len(steps) == len(with_errors.best.inner)
