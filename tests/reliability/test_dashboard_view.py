"""What a person sees in optuna-dashboard on a published study (issue 23, the dashboard item):
the study note says what Hyperparameter importance and Contour mean with few trials instead
of calling them empty; an outer trial's page is no wider than a 1,400 px window; inner trials
carry a note (no empty box); the study list shows the outer study first.

The fast tests read what the dashboard serves (``/api/studies``, the notes in storage); the
slow ones open the pages in headless Chromium with the helpers of
tests/dashboards/test_report.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note

from sigmatune.dashboards import publish as P
from sigmatune.dashboards import server as S
from sigmatune.study.records import read_inner_trials, read_study

WINDOW = {"width": 1400, "height": 900}


def _load_test_report():
    """tests/dashboards/test_report.py as a module, for its Chromium helpers."""
    name = "sigmatune_tests_dashboards_report"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "dashboards/test_report.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def published(synthetic_copy, tmp_path_factory):
    """The synthetic study (3 complete outer trials and a failed one, 2 inner studies each),
    published as the runner publishes it."""
    study = synthetic_copy(tmp_path_factory.mktemp("dashboard-view"))
    P.publish_study(study.storage, study.name)
    return study


def _inner_names(study) -> list[str]:
    data = read_study(study.storage, study.name)
    return [r.study_name for t in data.trials for r in t.inner.values()]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# --------------------------------------------------------------------------------------------
# The study note: Hyperparameter importance and Contour


def test_the_study_note_says_what_importance_and_contour_mean_with_few_trials(published):
    data = read_study(published.storage, published.name)
    assert len(data.complete) == 3
    note = P.study_note(data)
    assert "Hyperparameter importance" in note and "Contour" in note
    assert "are empty" not in note  # they show values: importances, a fitted contour
    assert "3 complete trials" in note
    assert "not reliable" in note and "interpolated between the trials' points" in note
    assert note == get_note(optuna.load_study(study_name=published.name, storage=published.storage))

    # the count is the study's own; with one complete trial the panels are indeed empty
    one = dataclasses.replace(data, trials=data.trials[:1])
    text = P.dashboard_help(one)
    assert "1 complete trial:" in text and "need at least two" in text
    many = dataclasses.replace(data, trials=data.trials[:3] * 20)
    text = P.dashboard_help(many)
    assert "60 complete trials" in text and "not reliable" not in text


# --------------------------------------------------------------------------------------------
# Inner trials' notes


def test_every_inner_trial_has_a_note_with_its_schedule(published):
    storage = published.storage
    data = read_study(storage, published.name)
    for t in data.trials:
        for nfe, r in t.inner.items():
            inner = optuna.load_study(study_name=r.study_name, storage=storage)
            records = {it.number: it for it in read_inner_trials(storage, r.study_name)}
            assert len(records) == len(inner.trials) == 5
            for ft in inner.trials:
                note = get_note(optuna.Trial(inner, ft._trial_id))
                it = records[ft.number]
                assert note.startswith(f"## Inner trial {ft.number}: "), note
                assert f"NFE {nfe}" in note and f"/dashboard/studies/{data.study_id}/" in note
                assert f"FID on the search seeds: {it.fid:.4g}" in note
                assert f"sampler `{it.schedule.sampler}`" in note
                assert f"σ ({len(it.schedule.sigmas)} values) = [" in note
                if it.start:
                    assert f"starting point `{it.start}`" in note
                else:
                    assert "proposed by the search" in note
                assert ("the best of the search" in note) == (ft.number == r.search_trial)


def test_the_dashboard_serves_the_inner_trials_notes(published):
    with S.start(published.storage) as server:
        ids = {
            s["study_name"]: s["study_id"]
            for s in _get(f"{server.base_url}/api/studies")["study_summaries"]
        }
        for name in _inner_names(published)[:2]:
            detail = _get(f"{server.base_url}/api/studies/{ids[name]}")
            bodies = [t["note"]["body"] for t in detail["trials"]]
            assert len(bodies) == 5 and all("FID on the search seeds" in b for b in bodies)


# --------------------------------------------------------------------------------------------
# The study list


def test_the_study_list_shows_the_outer_study_first(published):
    """optuna-dashboard lists ``/api/studies`` reversed ("Sort descending", its default):
    what it shows first is the answer's last study."""
    with S.start(published.storage) as server:
        summaries = _get(f"{server.base_url}/api/studies")["study_summaries"]
    shown = [s["study_name"] for s in reversed(summaries)]
    inner = _inner_names(published)
    assert shown[0] == published.name
    assert sorted(shown[1:]) == sorted(inner)


def test_outer_first_groups_each_outer_study_with_its_inner_studies():
    def summary(study_id, name, role=None, outer=None):
        attrs = [{"key": "sigmatune:role", "value": role}] if role else []
        if outer:
            attrs.append({"key": "outer:study", "value": outer})
        return {"study_id": study_id, "study_name": name, "user_attrs": attrs}

    studies = [
        summary(1, "a", "outer"),
        summary(2, "a/trial-0000/nfe-5", "inner", "a"),
        summary(3, "other"),
        summary(4, "b", "outer"),
        summary(5, "b/nfe-5", "inner"),  # a sampling study's: no link, found by its name
        summary(6, "a/trial-0001/nfe-5", "inner", "a"),
        summary(7, "lost/trial-0000/nfe-5", "inner", "lost"),
    ]
    shown = [s["study_id"] for s in reversed(S.outer_first(studies))]
    assert shown == [7, 4, 5, 3, 1, 6, 2]


# --------------------------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def browser_page(published):
    """A headless Chromium page, 1,400 x 900, and the dashboard serving the published study."""
    report = _load_test_report()
    executable = report._chromium()
    from playwright.sync_api import sync_playwright

    with S.start(published.storage) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=report.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WINDOW)
            yield server, page
        finally:
            browser.close()


def _ids(server) -> dict[str, int]:
    summaries = _get(f"{server.base_url}/api/studies")["study_summaries"]
    return {s["study_name"]: s["study_id"] for s in summaries}


@pytest.mark.slow
def test_an_outer_trial_page_fits_a_1400px_window(browser_page, published):
    server, page = browser_page
    outer = _ids(server)[published.name]
    for number in (published.best_number, 3):  # the best trial, and the failed one
        page.goto(f"{server.url}/studies/{outer}/trials?numbers={number}")
        page.get_by_text(f"Trial {number} (trial_id=").wait_for(timeout=30_000)
        page.get_by_text("User Attributes").wait_for(timeout=30_000)
        page.get_by_role("heading", name=f"trial {number}: ").wait_for(timeout=30_000)
        width, window = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert window == WINDOW["width"]
        assert width <= window, f"trial {number}: the page is {width} px wide"


@pytest.mark.slow
def test_the_study_list_page_shows_the_outer_study_first(browser_page, published):
    server, page = browser_page
    ids = _ids(server)
    page.goto(server.url)
    links = page.locator("a[href*='/dashboard/studies/']")
    links.first.wait_for(timeout=30_000)
    hrefs = links.evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs[0].endswith(f"/studies/{ids[published.name]}"), hrefs
    assert len(hrefs) == len(ids)


@pytest.mark.slow
def test_an_inner_trial_page_shows_its_note(browser_page, published):
    server, page = browser_page
    name = _inner_names(published)[0]
    page.goto(f"{server.url}/studies/{_ids(server)[name]}/trials?numbers=0")
    page.get_by_text("Trial 0 (trial_id=").wait_for(timeout=30_000)
    note = page.get_by_role("heading", name="Inner trial 0: ")
    note.wait_for(timeout=30_000)
    assert "FID on the search seeds" in page.inner_text("main")
