"""The outer-study benchmark's independent check: its bare Heun loop against the numpy Heun of
``benchmarks.independent`` on the exact mixture denoiser, and its table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import independent, outer_study
from benchmarks.outer_study import (
    bare_heun,
    independent_text,
    same_model,
    same_model_text,
    study_arm,
)
from benchmarks.quality import Figure
from sigmatune.models.data import gmm2d_mixture


def test_bare_heun_is_heun_on_the_exact_mixture():
    mixture = gmm2d_mixture()
    sigmas = [80.0, 8.7, 1.8, 0.36, 0.002, 0.0]
    eps = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = bare_heun(mixture, sigmas[0] * eps, sigmas).numpy()
    want = independent.heun(independent.Mixture.of(mixture), sigmas[0] * eps.numpy(), sigmas)
    np.testing.assert_allclose(got, want, atol=1e-9)
    # and a different schedule gives different samples (the loop uses the sigmas it is given)
    other = bare_heun(mixture, sigmas[0] * eps, [80.0, 1.0, 0.0]).numpy()
    assert np.abs(other - want).max() > 1e-3


def test_independent_table_lists_each_trial_with_mean_and_spread():
    check = {
        "real_vs_real": [0.25, 0.27, 0.29],
        "trials": {"2": {"name": "rectified_flow", "values": [1.0, 1.2, 1.4]}},
    }
    text = independent_text(check)
    assert "| 2 | rectified_flow | 1.20 ± 0.20 |" in text
    assert "0.270 ± 0.020" in text
    assert independent_text(None) == "" and independent_text({"trials": {}}) == ""
    figure = Figure.of([1, 2, 3])
    assert figure.mean == 2 and figure.spread == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pruner, first, rungs",
    [
        ("successive_halving", 25_000, [25_000, 75_000]),  # 225,000 > train_nimg: no third
        ("hyperband", 50_000, [50_000, 150_000]),
        ("median", 50_000, [100_000]),  # from half of train_nimg
        ("none", 50_000, []),
    ],
)
def test_the_study_arm_line_names_where_its_pruner_can_stop_a_trial(pruner, first, rungs):
    payload = {
        "train_nimg": 200_000,
        "config": {"outer": {"pruner": "hyperband"}, "train": {"checkpoint_nimg": 50_000}},
        "study": [{"trial": 0}, {"trial": 11}],
        "study_arm": {"pruner": pruner, "checkpoint_nimg": first, "outer_trials": 12},
    }
    assert study_arm(payload)["rungs"] == rungs
    # an older JSON without "study_arm": the preset's pruner as stored in its config
    del payload["study_arm"]
    old = study_arm(payload)
    assert (old["pruner"], old["outer_trials"], old["rungs"]) == (
        "hyperband",
        12,
        [50_000, 150_000],
    )


def _write_model(folder, study, number, net):
    from sigmatune.study.modelfile import save_model_file

    path = folder / "artifacts" / "runs" / f"{study}-0123abcd" / f"trial-{number:04d}" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(
        path,
        net=net,
        network="mlp",
        network_params={},
        shape=(2,),
        parameterisation="edm",
        sigma_data=0.5,
        dataset="gmm2d",
        nimg=256,
    )


def test_same_model_compares_the_winners_weights_with_its_literature_twin(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    payload = {
        "train_nimg": 200_000,
        "config": {"outer": {"pruner": "none"}, "train": {"checkpoint_nimg": 50_000}},
        "study_arm": {"name": "arm", "pruner": "none", "checkpoint_nimg": 1, "outer_trials": 3},
        "study": [{"trial": 2}],
        "literature": [{"trial": 0, "name": "edm"}, {"trial": 1, "name": "edm2"}],
        "comparison": {"best_study": {"trial": 2, "name": "edm2"}},
    }
    _write_model(tmp_path, "literature", 1, net)
    _write_model(tmp_path, "arm", 2, net)
    same = same_model(tmp_path, payload)
    assert same == {
        "name": "edm2",
        "study_trial": 2,
        "literature_trial": 1,
        "max_abs_weight_difference": 0.0,
    }
    assert "have the same weights" in same_model_text(same)
    # one weight moved by 0.25: a different model, and by how much
    with torch.no_grad():
        net.bias[1] += 0.25
    _write_model(tmp_path, "arm", 2, net)  # replaces the study's model file
    moved = same_model(tmp_path, payload)
    assert moved["max_abs_weight_difference"] == pytest.approx(0.25)
    assert "differ by up to 0.25" in same_model_text(moved)
    # a TPE winner (no name) has no twin; nor has a winner whose file is missing
    payload["comparison"]["best_study"] = {"trial": 2, "name": None}
    assert same_model(tmp_path, payload) is None
    payload["comparison"]["best_study"] = {"trial": 5, "name": "edm"}
    assert same_model(tmp_path, payload) is None
    assert same_model_text(None) == ""


# ------------------------------------------------------------------ interim vs final (issue 19)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_agrees_with_scipy_with_and_without_ties(seed):
    from scipy.stats import spearmanr

    from benchmarks.outer_study import spearman

    rng = np.random.default_rng(seed)
    x = rng.normal(size=9).tolist()
    y = (np.asarray(x) * rng.choice([-1, 1]) + rng.normal(scale=0.8, size=9)).tolist()
    ties_x = np.round(rng.normal(size=12), 0).tolist()  # many ties
    ties_y = np.round(rng.normal(size=12), 0).tolist()
    for a, b in ((x, y), (ties_x, ties_y), (x, x)):
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_is_none_where_undefined_and_refuses_unequal_lengths():
    from benchmarks.outer_study import spearman

    assert spearman([1.0, 2.0], [2.0, 1.0]) is None  # fewer than three pairs
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # a constant side
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_interim_agreement_ranks_per_checkpoint_and_marks_the_rungs():
    from benchmarks.outer_study import interim_agreement

    final = {"0": 1.0, "1": 2.0, "2": 3.0, "3": None}  # trial 3 has no final figure
    interims = {
        "karras": {
            "4096": {t: {"fid": v, "spread": 0.1} for t, v in zip("0123", (5, 6, 7, 1))},
            "12288": {t: {"fid": v, "spread": 0.1} for t, v in zip("0123", (7, 6, 5, 1))},
            "8192": {t: {"fid": v, "spread": 0.1} for t, v in zip("012", (5, 7, 6))},
        }
    }
    got = interim_agreement(interims, final, rungs=[4000, 12000])
    assert list(got["karras"]) == ["4096", "8192", "12288"]  # in training order
    assert got["karras"]["4096"] == {"rho": pytest.approx(1.0), "n": 3, "rung": True}
    assert got["karras"]["8192"]["rho"] == pytest.approx(0.5) and not got["karras"]["8192"]["rung"]
    assert got["karras"]["12288"] == {"rho": pytest.approx(-1.0), "n": 3, "rung": True}


def test_pruned_rows_say_whether_a_pruned_trial_was_within_the_spread_of_its_cut():
    from types import SimpleNamespace

    from benchmarks.outer_study import interim_text, pruned_rows

    def trial(number, state, cuts, interim=None):
        return SimpleNamespace(
            number=number,
            name=None,
            state=state,
            prune_cut=cuts,
            interim=interim or {},
            interim_spread={},
        )

    cut = {"cut": 1.0, "spread": 0.1, "pruned": False}
    far = {"cut": 1.0, "spread": 0.1, "pruned": True}
    study = SimpleNamespace(
        trials=[
            trial(0, "COMPLETE", {4096: cut}, {4096: 1.08}),
            trial(1, "PRUNED", {4096: far}, {4096: 2.0}),
            trial(2, "PRUNED", {}, {4096: 3.0}),  # a plain pruner: no cut stored
        ]
    )
    rows = pruned_rows(study)
    assert [(r["trial"], r["pruned"], r["within_spread"]) for r in rows] == [
        (0, False, True),
        (1, True, False),
        (2, True, None),
    ]
    payload = {
        "nfe": 5,
        "interim": {
            "product": "karras",
            "verdict": "met",
            "agreement": {"karras": {"4096": {"rho": 0.9, "n": 8, "rung": True}}},
        },
        "prune_cuts": rows,
    }
    text = interim_text(payload)
    assert "| karras | 4,096 | yes | 8 | 0.90 |" in text
    assert "trials pruned within the spread of the cut: 0" in text
    assert interim_text({"nfe": 5}) == ""  # an older JSON renders as before


def _arm_row(trial, name, fid, spread=0.05, state="COMPLETE"):
    return {
        "trial": trial,
        "name": name,
        "label": name or "proposed",
        "state": state,
        "images": 100,
        "fid": fid,
        "fid_spread": spread,
        "karras_same_range": None,
        "reason": None,
    }


def test_a_best_that_is_a_literature_configuration_is_met_only_by_construction():
    lit = [_arm_row(0, "edm", 5.0), _arm_row(1, "rectified_flow", 4.0)]
    stu = [*lit, _arm_row(2, None, 4.5), _arm_row(3, None, None, state="PRUNED")]
    c = outer_study.compare(lit, stu, {"floor": 1.0, "floor_spread": 0.05})
    assert c["best_study"]["name"] == "rectified_flow"
    assert c["proposed_trials"] == 2 and c["proposed_complete"] == 1
    assert c["targets"][outer_study.PROPOSED] is False  # the proposed best (4.5) loses
    payload = {"comparison": c}
    verdicts = outer_study.target_verdicts(payload)
    assert verdicts[outer_study.BEST] == outer_study.BY_CONSTRUCTION
    assert verdicts[outer_study.PROPOSED] == "missed"


@pytest.mark.parametrize(
    ("fid", "spread", "met"),
    [(3.8, 0.05, True), (3.95, 0.05, False), (3.8, 0.2, False)],  # beats by > both spreads?
)
def test_a_proposed_best_must_beat_the_best_literature_by_both_spreads(fid, spread, met):
    lit = [_arm_row(0, "edm", 5.0), _arm_row(1, "rectified_flow", 4.0, spread=0.05)]
    stu = [*lit, _arm_row(2, None, fid, spread=spread)]
    c = outer_study.compare(lit, stu, {"floor": 1.0, "floor_spread": 0.05})
    assert c["best_study"]["name"] is None
    assert c["targets"][outer_study.PROPOSED] is met
    assert outer_study.target_verdicts({"comparison": c})[outer_study.BEST] == "met"


def _confirmation(best_proposed_beats: bool) -> dict:
    def trial(number, name, means, mean, spread):
        models = [{"seed": k, "retrained": k > 0, "values": [m, m]} for k, m in enumerate(means)]
        return {"trial": number, "name": name, "mean": mean, "spread": spread, "models": models}

    trials = [
        trial(2, None, [3.8, 4.6, 4.4], 4.27, 0.42),
        trial(1, "rectified_flow", [4.0, 4.1, 3.9], 4.0, 0.1),
    ]
    return {
        "trials": trials,
        "verdict": {
            "best": 2,
            "best_literature": 1,
            "best_proposed": 2,
            "proposed_beats_literature": best_proposed_beats,
        },
        "seeds": [1, 2],
        "images": 4 * 1000,
    }


def test_a_proposed_win_the_confirmation_does_not_repeat_is_contradicted():
    """A proposed trial that wins on the study's one model per configuration but not once
    the leaders are trained again with unused seeds: "contradicted", and the table says it."""
    lit = [_arm_row(0, "edm", 5.0), _arm_row(1, "rectified_flow", 4.0, spread=0.05)]
    stu = [*lit, _arm_row(2, None, 3.8, spread=0.05)]
    c = outer_study.compare(lit, stu, {"floor": 1.0, "floor_spread": 0.05})
    assert c["targets"][outer_study.PROPOSED] is True  # on the study's own figures
    payload = {"comparison": c, "confirm": _confirmation(False), "nfe": 9}
    assert outer_study.target_verdicts(payload)[outer_study.PROPOSED] == outer_study.NOT_CONFIRMED
    payload["confirm"] = _confirmation(True)
    assert outer_study.target_verdicts(payload)[outer_study.PROPOSED] == "met"
    payload["confirm"] = _confirmation(False)
    text = outer_study.confirm_text(payload)
    assert "| 2 | proposed | 3.800 | 4.600 | 4.400 | 4.27 ± 0.42 |" in text
    assert "does not beat the best literature configuration" in text
    # 100 + 100 + 100 study images, 200 literature, 4,000 for the confirmation
    assert "21.50× the literature's" in text
    assert outer_study.confirm_text({"comparison": c}) == ""  # a JSON without one
