"""dashboards.server and ``sigmatune dashboard``: optuna-dashboard's HTTP API on a study."""

from __future__ import annotations

import json
import re
import urllib.request

import optuna
import pytest

from sigmatune.dashboards import server as S
from sigmatune.dashboards.publish import publish_study
from sigmatune.study.commands.cli import main


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
        kind = response.headers.get("Content-Type", "")
    return json.loads(body) if "json" in kind else body


def _studies(base: str) -> dict[str, int]:
    return {s["study_name"]: s["study_id"] for s in _get(f"{base}/api/studies")["study_summaries"]}


def _check_dashboard(base: str, name: str, outer_trials: list[int], nfe: list[int]) -> dict:
    """What a person opening the dashboard sees: studies, figures, linked notes."""
    studies = _studies(base)
    inner = {f"{name}/trial-{n:04d}/nfe-{k}" for n in outer_trials for k in nfe}
    assert {name} | inner <= set(studies)

    detail = _get(f"{base}/api/studies/{studies[name]}")
    figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert {"sigmatune-headline", "sigmatune-overview"} <= set(figures)
    for graph_id, fig in figures.items():
        assert fig["data"] and all(tr.get("x") for tr in fig["data"]), graph_id

    links = set(re.findall(r"/dashboard/studies/(\d+)", detail["note"]["body"]))
    for inner_name in inner:
        assert str(studies[inner_name]) in links, inner_name
    by_number = {t["number"]: t for t in detail["trials"]}
    for n in outer_trials:
        note = by_number[n]["note"]["body"]
        for k in nfe:
            inner_name = f"{name}/trial-{n:04d}/nfe-{k}"
            assert f"[{inner_name}](/dashboard/studies/{studies[inner_name]})" in note

    for inner_name in inner:
        inner_detail = _get(f"{base}/api/studies/{studies[inner_name]}")
        assert [g["id"] for g in inner_detail["plotly_graph_objects"]] == ["sigmatune-inner-steps"]
        assert f"/dashboard/studies/{studies[name]}" in inner_detail["note"]["body"]
    return detail


def test_dashboard_serves_a_published_study_on_localhost(synthetic_study):
    publish_study(synthetic_study.storage, synthetic_study.name)
    with S.start(synthetic_study.storage) as server:
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/dashboard"
        assert b"<html" in _get(server.url).lower()
        _check_dashboard(server.base_url, "synth", [0, 1, 2], [5, 9])


def test_make_dashboard_server_binds_to_localhost_by_default(synthetic_study):
    server = S.make_dashboard_server(synthetic_study.storage, port=0)
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
    assert S.DEFAULT_HOST == "127.0.0.1"


def test_cli_dashboard_refuses_a_storage_that_does_not_exist(tmp_path, capsys, monkeypatch):
    served = []
    monkeypatch.setattr(S, "serve", lambda *a, **k: served.append((a, k)))
    missing = tmp_path / "nothing-here.db"
    assert main(["dashboard", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert "nothing-here.db" in err and "does not exist" in err
    assert not missing.exists() and served == []
    assert main(["dashboard", "sqlite:///:memory:"]) == 2
    assert "in-memory" in capsys.readouterr().err


def test_cli_dashboard_binds_to_localhost_unless_told(synthetic_study, monkeypatch, tmp_path):
    served = []
    monkeypatch.setattr(S, "serve", lambda storage, **kw: served.append(kw))
    assert main(["dashboard", synthetic_study.url]) == 0
    assert served[-1]["host"] == "127.0.0.1" and served[-1]["port"] == 8080
    assert served[-1]["artifact_store"] is not None
    assert (
        main(
            [
                "dashboard",
                synthetic_study.url,
                "--host",
                "0.0.0.0",
                "--port",
                "9999",
                "--artifact-dir",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert served[-1]["host"] == "0.0.0.0" and served[-1]["port"] == 9999


@pytest.mark.slow
def test_dashboard_on_a_toy_run(toy_run):
    """optuna-dashboard on the study a ``toy`` run made, figures and notes by its hooks."""
    from sigmatune.study.records import EXPORT as EXPORT_ATTR
    from sigmatune.study.storage import artifact_store_for, open_storage

    storage = open_storage(toy_run.url)
    store, _ = artifact_store_for(toy_run.url, toy_run.config.artifact_dir)
    outer = optuna.load_study(study_name=toy_run.name, storage=storage)
    numbers = [t.number for t in outer.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert numbers
    with S.start(storage, artifact_store=store) as server:
        detail = _check_dashboard(
            server.base_url, toy_run.name, numbers, list(toy_run.config.inner.nfe_budgets)
        )
        # the best trial carries its export, downloadable through the dashboard
        record = outer.user_attrs[EXPORT_ATTR]
        best = next(t for t in detail["trials"] if t["number"] == record["trial"])
        names = {a["filename"]: a["artifact_id"] for a in best["artifacts"]}
        json_name = next(n for n in names if n.endswith("-export.json"))
        doc = _get(
            f"{server.base_url}/artifacts/{best['study_id']}/{best['trial_id']}/{names[json_name]}"
        )
        assert doc["trial"] == record["trial"] and doc["study"] == toy_run.name
