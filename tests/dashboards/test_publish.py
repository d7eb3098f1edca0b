"""dashboards.publish: figures under stable ids and linked notes, as optuna-dashboard reads them."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from sigmatune.dashboards import publish as P
from sigmatune.study.records import read_study

OUTER_IDS = {
    "sigmatune-headline",
    "sigmatune-densities",
    "sigmatune-overview",
    "sigmatune-steps",
    "sigmatune-fid-nfe",
}


def _figures(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    return {
        k: json.loads(v)
        for k, v in get_plotly_graph_objects(
            storage.get_study_system_attrs(study._study_id)
        ).items()
    }


def _links(text):
    return re.findall(r"\]\((/dashboard/studies/\d+(?:/trials\?numbers=\d+)?)\)", text)


@pytest.fixture(scope="module")
def published(synthetic_copy, tmp_path_factory):
    study = synthetic_copy(tmp_path_factory.mktemp("published"))
    P.publish_study(study.storage, study.name)
    return study


def test_outer_study_gets_every_figure_with_data(published):
    figs = _figures(published.storage, "synth")
    assert set(figs) == OUTER_IDS
    for fid, fig in figs.items():
        assert fig["data"], fid
        assert all(trace.get("x") is not None for trace in fig["data"]), fid


def test_notes_link_outer_trials_and_inner_studies_both_ways(published):
    storage = published.storage
    outer = optuna.load_study(study_name="synth", storage=storage)
    ids = {s.study_name: s._study_id for s in storage.get_all_studies()}
    note = get_note(outer)
    for number in (0, 1, 2):
        for nfe in (5, 9):
            inner_id = ids[f"synth/trial-{number:04d}/nfe-{nfe}"]
            assert f"/dashboard/studies/{inner_id}" in _links(note)
    assert f"[trial 1](/dashboard/studies/{outer._study_id}/trials?numbers=1)" in note

    trial = optuna.Trial(outer, outer.trials[1]._trial_id)
    trial_note = get_note(trial)
    assert "synth/trial-0001/nfe-5" in trial_note
    assert f"/dashboard/studies/{ids['synth/trial-0001/nfe-5']}" in _links(trial_note)
    best_inner = published.expected[1]["inner_best"][9]
    assert (
        f"/dashboard/studies/{ids['synth/trial-0001/nfe-9']}/trials?numbers={best_inner.number}"
    ) in _links(trial_note)
    assert "Failed: `NonFiniteLossError: nan`" in get_note(
        optuna.Trial(outer, outer.trials[3]._trial_id)
    )

    inner = optuna.load_study(study_name="synth/trial-0002/nfe-5", storage=storage)
    inner_note = get_note(inner)
    assert f"/dashboard/studies/{outer._study_id}/trials?numbers=2" in _links(inner_note)
    assert f"/dashboard/studies/{outer._study_id}" in _links(inner_note)
    assert "karras ρ=7" in inner_note and "loglinear, tuned σ range" in inner_note
    assert "held-out" in inner_note.lower()


def test_inner_studies_get_their_step_figure(published):
    for number in (0, 1, 2):
        for nfe in (5, 9):
            figs = _figures(published.storage, f"synth/trial-{number:04d}/nfe-{nfe}")
            assert set(figs) == {P.INNER_FIGURE_ID}
            assert len(figs[P.INNER_FIGURE_ID]["data"]) == 5


def test_republishing_replaces_figures_and_notes_instead_of_piling_up(published):
    storage = published.storage
    outer = optuna.load_study(study_name="synth", storage=storage)
    before = dict(storage.get_study_system_attrs(outer._study_id))
    P.publish_after_trial(storage, "synth", 1)
    after = storage.get_study_system_attrs(outer._study_id)
    assert set(_figures(storage, "synth")) == OUTER_IDS
    plot_keys = {k for k in after if k.startswith("dashboard:plot_data:")}
    assert plot_keys == {k for k in before if k.startswith("dashboard:plot_data:")}
    assert get_note(outer) == P.study_note(read_study(storage, "synth"))


def test_after_outer_trial_hook_publishes(synthetic_study):
    from types import SimpleNamespace

    from sigmatune.study.commands.hooks import publish_figures as after_outer_trial

    messages = []
    ctx = SimpleNamespace(storage=synthetic_study.storage, log=messages.append)
    outer = optuna.load_study(study_name="synth", storage=synthetic_study.storage)
    after_outer_trial(ctx, outer, outer.trials[2])
    assert messages == []
    assert set(_figures(synthetic_study.storage, "synth")) == OUTER_IDS
    assert "## trial 2: " in get_note(optuna.Trial(outer, outer.trials[2]._trial_id))
