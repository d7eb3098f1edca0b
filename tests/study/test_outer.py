"""The outer study: the literature as its first trials, multi-fidelity over training images,
several NFE budgets at once, and the same objective met twice."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import optuna
import pytest
import torch

from sigmatune.objectives.literature import LITERATURE
from sigmatune.study import records, spaces
from sigmatune.study.config import load_config
from sigmatune.study.run import enqueue_configurations, enqueued_configurations

SIGMA_DATA = 0.5


def _ctx(**overrides):
    config = load_config("toy", overrides)
    return SimpleNamespace(config=config, sigma_data=SIGMA_DATA)


def test_the_literature_comes_first_in_order_with_its_names():
    ctx = _ctx(**{"outer.outer_trials": 20})
    study = optuna.create_study(sampler=spaces.make_outer_sampler(ctx.config))
    enqueue_configurations(ctx, study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    names = [t.user_attrs[records.NAME] for t in waiting]
    assert names == ["edm", *ctx.config.outer.literature]
    smin, smax = ctx.config.sigma_min, ctx.config.sigma_max
    for t, name in zip(waiting, names, strict=True):
        # the trial's params rebuild exactly the paper's configuration
        fixed = optuna.trial.FixedTrial(t.system_attrs["fixed_params"])  # what enqueue stores
        desc = spaces.suggest_objective_description(fixed, ctx.config, SIGMA_DATA)
        expected = (
            spaces.edm_defaults_description(ctx.config, SIGMA_DATA)
            if name == "edm"
            else LITERATURE[name].description(SIGMA_DATA, smin, smax)
        )
        assert desc["parameterisation"] == expected["parameterisation"]
        for key in ("density", "weighting"):
            assert desc[key]["name"] == expected[key]["name"]
            for p, v in expected[key]["params"].items():
                if v is not None and p in desc[key]["params"]:
                    assert desc[key]["params"][p] == pytest.approx(v)
        assert (desc["adaptive"] or {}).get("name") == (expected["adaptive"] or {}).get("name")


def test_only_what_fits_the_budget_is_enqueued():
    ctx = _ctx(**{"outer.outer_trials": 3})
    study = optuna.create_study()
    enqueue_configurations(ctx, study)
    assert [t.user_attrs[records.NAME] for t in study.trials] == list(enqueued_configurations(ctx))[
        :3
    ]


def test_the_same_effective_weighting_is_noted_on_the_later_trial():
    """x0 with snr(1) weighting and eps with unit weighting have the same W(λ) (c_out = σ_d
    against −σ): the same objective up to gradient variance."""
    from sigmatune.study.outer import note_same_objective

    config = load_config("toy")

    def desc(parameterisation, weighting):
        return {
            "parameterisation": parameterisation,
            "sigma_data": SIGMA_DATA,
            "density": {"name": "lognormal", "params": {"P_mean": -1.2, "P_std": 1.2}},
            "weighting": weighting,
            "adaptive": None,
            "sigma_min": config.sigma_min,
            "sigma_max": config.sigma_max,
        }

    study = optuna.create_study()
    first = study.ask()
    records.begin_outer_trial(first, desc("eps", {"name": "unit", "params": {}}), 0, None)
    study.tell(first, 1.0)
    second = study.ask()
    same = desc("x0", {"name": "snr", "params": {"k": 1.0}})
    records.begin_outer_trial(second, same, 1, None)
    note_same_objective(second, same)
    third = study.ask()
    other = desc("edm", {"name": "unit", "params": {}})
    records.begin_outer_trial(third, other, 2, None)
    note_same_objective(third, other)
    notes = {t.number: t.user_attrs.get(records.NOTE) for t in study.get_trials()}
    assert notes[1].startswith("same W(λ) as trial 0") and notes[2] is None


def test_status_json_has_one_object_per_trial_with_the_contract_keys(synthetic_study, capsys):
    from sigmatune.study.commands.cli import main

    assert main(["status", "--storage", synthetic_study.url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert set(r) == {
            "number",
            "state",
            "name",
            "label",
            "params",
            "held_out",
            "tuned_origin",  # per NFE: "search" or the starting point's name (issue 18)
            "reason",
            "confirmed",  # `sigmatune confirm`'s figure over the trial's models, or None
        }
        assert set(r["tuned_origin"]) == set(r["held_out"])
        assert r["confirmed"] is None
    assert rows[0]["name"] == "edm" and rows[1]["name"] is None
    assert rows[3]["reason"].startswith("NonFiniteLossError")
    held = rows[1]["held_out"]["5"]
    assert list(held) == list(records.EXPORT_HELD_OUT_KEYS)
    expected = synthetic_study.expected[1]["inner"][5].held_out
    assert held["tuned"] == pytest.approx(expected.mean("tuned"))


def test_pareto_front_and_its_figure(tmp_path):
    """A two-objective study: the front is the non-dominated trials, and the figure draws
    each front point beside its own W(λ)."""
    from sigmatune.dashboards.figures import figure_pareto, pareto_front
    from sigmatune.study.records import read_study

    url = f"sqlite:///{tmp_path / 'p.db'}"
    config = load_config("toy", {"name": "p", "storage": url, "outer.objectives": [5, 9]})
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="p", storage=storage, directions=["minimize"] * 2)
    records.init_outer_study(study, config)
    values = {0: (1.0, 5.0), 1: (2.0, 2.0), 2: (3.0, 3.0), 3: (5.0, 1.0)}  # 2 is dominated
    for number, v in values.items():
        trial = study.ask()
        desc = spaces.edm_defaults_description(config, SIGMA_DATA)
        desc["density"]["params"]["P_mean"] = -1.2 + 0.3 * number
        records.begin_outer_trial(trial, desc, number, None)
        study.tell(trial, list(v))
    data = read_study(storage, "p")
    assert data.directions == ("minimize", "minimize")
    assert [t.number for t in pareto_front(data)] == [0, 1, 3]
    fig = figure_pareto(data)
    stars = [tr for tr in fig.data if tr.mode == "markers+text"]
    curves = [tr for tr in fig.data if tr.name and tr.name.startswith("W(λ)")]
    assert [int(tr.text[0]) for tr in stars] == [0, 1, 3]
    assert [tr.line.color for tr in curves] == [tr.marker.color for tr in stars]
    lam = torch.tensor(curves[0].x, dtype=torch.float64)
    area = torch.trapezoid(torch.tensor(curves[0].y, dtype=torch.float64), lam)
    assert float(area) == pytest.approx(1.0, rel=1e-3)
    assert not math.isnan(float(area))


@pytest.mark.slow
def test_a_multi_objective_run_stores_one_held_out_value_per_budget(tmp_path):
    """outer.objectives = [3, 5]: two minimised values per trial, each the held-out FID of
    that budget's tuned schedule; no pruning (Optuna cannot prune such a study)."""
    from sigmatune.study.commands.hooks import run_study as run

    config = load_config(
        "toy",
        {
            "name": "mo",
            "storage": f"sqlite:///{tmp_path / 'mo.db'}",
            "device": "cpu",
            "outer.outer_trials": 2,
            "outer.literature": ["rectified_flow"],
            "outer.objectives": [3, 5],
            "inner.nfe_budgets": [3, 5],
            "inner.inner_trials": 4,
            "inner.fid_num_images": 128,
            "inner.batch_size": 128,
            "inner.peers": [],
            "train.train_nimg": 4096,
            "train.checkpoint_nimg": 1024,
            "train.batch_size": 256,
            "network.params": {"hidden": 32, "depth": 2, "emb_dim": 16},
        },
    )
    summary = run(config, progress=False, log=lambda _m: None)
    assert summary.best is not None
    study = records.read_study(optuna.storages.RDBStorage(config.storage), "mo")
    assert study.directions == ("minimize", "minimize")
    assert [t.name for t in study.trials] == ["edm", "rectified_flow"]
    for t in study.trials:
        assert t.state == "COMPLETE" and t.interim == {}  # nothing reported, nothing pruned
        assert t.values == pytest.approx(tuple(t.inner[k].held_out.mean("tuned") for k in (3, 5)))
