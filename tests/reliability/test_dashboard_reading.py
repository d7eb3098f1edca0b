"""What a person reads in optuna-dashboard and in the report of a real run with a pruned
trial (issue 15, item 13): named objectives, pruned trials with their reason, the study
note that explains History, Intermediate values, Hyperparameter importance and Contour, and
trial pages without long one-line JSON.

The run is a real, minimal one in which the outer pruner is replaced by one that prunes every
trial after the first at its first checkpoint: the pruning path (interim score, report,
reason, TrialPruned) is sigmatune's own, only the decision is forced.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from sigmatune.study import records

LONGEST_USER_ATTR = 300  # characters of a user attr's JSON on a trial page


class _PruneAfterTheFirst(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number >= 1


@dataclass
class PrunedRun:
    folder: Path
    url: str
    name: str


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> PrunedRun:
    from sigmatune.study import spaces
    from sigmatune.study.commands.hooks import run_study as run
    from sigmatune.study.config import load_config

    folder = tmp_path_factory.mktemp("pruned-run")
    url = f"sqlite:///{folder / 'run.db'}"
    config = load_config(
        "toy",
        {
            "name": "pruned",
            "storage": url,
            "device": "cpu",
            "outer.outer_trials": 2,
            "outer.pruner": "median",
            "inner.inner_trials": 2,
            "inner.nfe_budgets": [5],
            "inner.fid_num_images": 256,
            "inner.batch_size": 256,
            "train.train_nimg": 8192,
            "train.checkpoint_nimg": 4096,
            "train.batch_size": 256,
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spaces, "make_outer_pruner", lambda _config: _PruneAfterTheFirst())
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            run(config, progress=False, log=lambda _line: None)
        finally:
            os.chdir(cwd)
    return PrunedRun(folder=folder, url=url, name="pruned")


def _outer(run: PrunedRun) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=run.url)


def _pruned(run: PrunedRun) -> optuna.trial.FrozenTrial:
    (trial,) = _outer(run).get_trials(states=(optuna.trial.TrialState.PRUNED,))
    return trial


@pytest.mark.slow
def test_the_run_has_one_complete_and_one_pruned_trial_with_its_reason(pruned_run):
    states = [t.state.name for t in _outer(pruned_run).trials]
    assert states == ["COMPLETE", "PRUNED"]
    reason = records.read_trial(_pruned(pruned_run)).prune_reason
    assert reason and "interim FID" in reason and "4096 training images" in reason


@pytest.mark.slow
def test_every_study_names_its_objective(pruned_run):
    storage = optuna.storages.RDBStorage(pruned_run.url)
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        names = study.metric_names
        assert names and all(n and not n.startswith("Objective") for n in names), (
            summary.study_name,
            names,
        )
        assert "NFE 5" in names[0] and "FID" in names[0]


@pytest.mark.slow
def test_no_user_attr_of_a_trial_is_a_long_line(pruned_run):
    """optuna-dashboard shows a trial's user attrs one per line, unwrapped: long records
    (schedules, held-out figures, descriptions) belong in system attrs."""
    storage = optuna.storages.RDBStorage(pruned_run.url)
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.trials:
            for key, value in trial.user_attrs.items():
                text = json.dumps(value)
                assert len(text) <= LONGEST_USER_ATTR, (summary.study_name, trial.number, key)


@pytest.mark.slow
def test_the_report_shows_why_a_trial_was_pruned(pruned_run, tmp_path):
    from sigmatune.study.commands.report import export_report

    path = export_report(pruned_run.url, pruned_run.name, tmp_path / "report.html")
    html = path.read_text()
    reason = records.read_trial(_pruned(pruned_run)).prune_reason
    rows = re.findall(r"<tr[^>]*><td class=num>1</td><td>PRUNED</td>.*?</tr>", html, re.DOTALL)
    assert len(rows) == 1
    import html as html_module

    assert html_module.escape(reason, quote=True) in rows[0]


@pytest.mark.slow
def test_the_dashboard_explains_its_panels_and_the_pruned_trial(pruned_run):
    """Through optuna-dashboard's own API: the study note says how to read History (here a
    pruned trial carries its interim FID as its value, which History plots unless its switch
    is off), that the Intermediate values' x axis is training images, and why Hyperparameter
    importance and Contour are empty; the pruned trial's note gives its reason."""
    from sigmatune.dashboards import server as S

    pruned = _pruned(pruned_run)
    assert pruned.values, "Optuna gives a pruned trial its last interim value"
    storage = optuna.storages.RDBStorage(pruned_run.url)
    with S.start(storage) as server:
        with urllib.request.urlopen(f"{server.base_url}/api/studies", timeout=30) as r:
            ids = {s["study_name"]: s["study_id"] for s in json.loads(r.read())["study_summaries"]}
        url = f"{server.base_url}/api/studies/{ids[pruned_run.name]}"
        with urllib.request.urlopen(url, timeout=30) as r:
            detail = json.loads(r.read())
    note = detail["note"]["body"]
    assert "Include PRUNED trials" in note and "last interim FID" in note
    assert "training images" in note and '"Step"' in note
    assert "Hyperparameter importance" in note and "Contour" in note
    trial_note = next(t for t in detail["trials"] if t["number"] == pruned.number)["note"]["body"]
    assert "Pruned:" in trial_note
    assert records.read_trial(pruned).prune_reason.split(" (")[0] in trial_note
