"""dashboards.figures: the data read from a study, the curves, and what each figure draws."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sigmatune.dashboards import figures as F
from sigmatune.models.schedules import karras, loglinear

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


def test_lam_grid_spans_the_run_and_refuses_a_bad_range():
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 11)
    assert lam.dtype == torch.float64 and lam.shape == (11,)
    assert float(lam[0]) == pytest.approx(-2 * math.log(SIGMA_MAX))
    assert float(lam[-1]) == pytest.approx(-2 * math.log(SIGMA_MIN))
    with pytest.raises(ValueError, match="sigma_min"):
        F.lam_grid(1.0, 0.5)


def _desc(parameterisation, density, weighting, sigma_data=0.5):
    return {
        "parameterisation": parameterisation,
        "sigma_data": sigma_data,
        "density": {"name": density[0], "params": density[1]},
        "weighting": {"name": weighting[0], "params": weighting[1]},
        "adaptive": None,
        "sigma_min": SIGMA_MIN,
        "sigma_max": SIGMA_MAX,
    }


def test_edm_defaults_weighting_matches_the_closed_form():
    # DESIGN.md: for EDM's defaults W(lam) = N(lam; 2.4, 2.4^2) (e^-lam + sd^2)/sd^2, up to the
    # truncation constant; p_lam = N(lam; 2.4, 2.4^2) up to the same constant.
    sd = 0.5
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 101)
    c = F.weighting_curves(
        _desc("edm", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}), sd), lam
    )
    normal = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    ratio_p = c["p_lam"] / normal
    ratio_W = c["W"] / (normal * (torch.exp(-lam) + sd**2) / sd**2)
    assert torch.allclose(ratio_p, ratio_p[50].expand_as(ratio_p), rtol=1e-9)
    assert torch.allclose(ratio_W, ratio_W[50].expand_as(ratio_W), rtol=1e-9)
    # the truncated normal keeps most of its mass inside [lam_min, lam_max] here
    assert 1.0 <= float(ratio_p[0]) < 1.1
    assert torch.allclose(c["w"], torch.ones_like(lam))
    assert torch.allclose(c["sigma"], torch.exp(-lam / 2))


def test_eps_unit_weighting_is_the_density_and_normalised_w_has_area_one():
    lam = F.lam_grid(SIGMA_MIN, SIGMA_MAX, 201)
    c = F.weighting_curves(_desc("eps", ("cosine", {"shift": 1.0}), ("unit", {})), lam)
    assert torch.allclose(c["W"], c["p_lam"], rtol=1e-9)  # c_out = -sigma: W = p_lam
    # p_lam of cosine: sech((lam - shift)/2) / (2 pi), truncated: a constant ratio
    ratio = c["p_lam"] / (1 / torch.cosh((lam - 1.0) / 2) / (2 * math.pi))
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert float(torch.trapezoid(c["W_normalised"], lam)) == pytest.approx(1.0, rel=1e-12)


def test_objective_label_names_every_part():
    d = _desc("v", ("piecewise", {"heights": [1.0, 2.0]}), ("snr", {"k": 0.5}))
    d["adaptive"] = {"name": "importance", "params": {}}
    assert F.objective_label(d) == "v · snr(0.5) · piecewise([1, 2]) · +importance"
    assert F.objective_label(None) == "?"


# --------------------------------------------------------------------------------- data


def test_load_study_data_reads_the_stored_layout(synthetic_study):
    data = F.load_study_data(synthetic_study.storage, synthetic_study.name)
    assert [t.number for t in data.trials] == [0, 1, 2, 3]
    assert [t.state for t in data.trials] == ["COMPLETE"] * 3 + ["FAIL"]
    assert data.best.number == synthetic_study.best_number
    assert data.edm.number == 0 and data.edm.baseline == "edm"
    assert data.nfe_budgets == [5, 9] and data.primary_nfe == 5
    assert data.trials[3].fail_reason.startswith("NonFiniteLossError")
    for number, exp in synthetic_study.expected.items():
        t = data.trial(number)
        assert t.objective == exp["description"]
        for nfe, best in exp["inner_best"].items():
            tuned = t.schedules[nfe]["tuned"]
            assert tuned.sigmas == best.user_attrs["sigmas"]
            assert tuned.fid == best.value and tuned.trial_number == best.number
            assert t.schedules[nfe]["karras_rho7"].sigmas == pytest.approx(
                karras(len(tuned.sigmas) - 1, SIGMA_MIN, SIGMA_MAX).tolist()
            )
            assert (
                t.schedules[nfe]["loglinear"].fid
                == exp["attrs"]["inner:baseline_fid"][str(nfe)]["loglinear"]
            )
            assert t.inner_studies[nfe] in data.study_ids
    with pytest.raises(ValueError, match="no trial number=7"):
        data.trial(7)


def test_load_study_data_refuses_unknown_and_inner_studies(synthetic_study):
    with pytest.raises(ValueError, match="no study named 'nope'.*synth"):
        F.load_study_data(synthetic_study.storage, "nope")
    with pytest.raises(ValueError, match="not a sigmatune outer study"):
        F.load_study_data(synthetic_study.storage, "synth/trial-0000/nfe-5")


# --------------------------------------------------------------------------------- figures


@pytest.fixture
def data(synthetic_study):
    return F.load_study_data(synthetic_study.storage, synthetic_study.name)


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
        sigmas = data.best.schedules[nfe]["tuned"].sigmas
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
        assert x == pytest.approx(t.baseline_fid[5]["karras_rho7"], rel=1e-5)
        assert y == pytest.approx(t.best_fid[5], rel=1e-5)
    assert points[1][2] == "best" and points[0][2] == "EDM defaults"


def test_steps_and_fid_figures_show_the_tuned_schedule_against_both_baselines(data):
    fig = F.figure_steps(data)
    rows = {tr.y[0]: tr for tr in fig.data}
    for nfe in (5, 9):
        for name, label in (
            ("tuned", "tuned"),
            ("karras_rho7", "karras ρ=7"),
            ("loglinear", "loglinear"),
        ):
            tr = rows[f"NFE {nfe} · {label}"]
            assert list(tr.x) == pytest.approx(
                _lam(data.best.schedules[nfe][name].sigmas), rel=1e-5
            )
    fig = F.figure_fid_vs_nfe(data)
    by_name = {tr.name: tr for tr in fig.data}
    assert list(by_name["tuned"].x) == [5, 9]
    assert list(by_name["tuned"].y) == pytest.approx([data.best.best_fid[k] for k in (5, 9)])
    assert list(by_name["karras ρ=7"].y) == pytest.approx(
        [data.best.baseline_fid[k]["karras_rho7"] for k in (5, 9)]
    )


def test_densities_figure_has_p_and_w_per_trial(data):
    fig = F.figure_densities(data)
    assert len([tr for tr in fig.data if tr.yaxis == "y"]) == 4
    assert len([tr for tr in fig.data if tr.yaxis == "y2"]) == 4
    assert fig.layout.yaxis2.type == "log"


def test_inner_trials_figure_lists_trials_best_first(synthetic_study):
    import optuna

    study = optuna.load_study(study_name="synth/trial-0001/nfe-5", storage=synthetic_study.storage)
    fig = F.figure_inner_trials(study.get_trials(), title="t")
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
