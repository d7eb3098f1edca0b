"""What the figures and notes say about the scorer's reference points and the inner searches'
values (issue 19, item 6): the floor's label sits on the floor's line of the log FID axis, the
FID of noise against the data is not called a ceiling (baselines score above it), and an inner
study says which FID is behind optuna-dashboard's *Best Trial* value (ln FID)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna_dashboard import get_note
from plotly.offline import get_plotlyjs

from sigmatune.dashboards import figures as F
from sigmatune.dashboards import publish as P
from sigmatune.dashboards.report import render_report, report_figures
from sigmatune.study.commands.status import format_status
from sigmatune.study.records import fid_text, read_study


@pytest.fixture(scope="module")
def published(synthetic_copy, tmp_path_factory):
    study = synthetic_copy(tmp_path_factory.mktemp("signals"))
    P.publish_study(study.storage, study.name)
    return study


@pytest.fixture(scope="module")
def data(published):
    return read_study(published.storage, published.name)


def _axis_value(axis_type: str, y: float) -> float:
    """A data value in plotly.js's coordinates of an annotation on an axis of ``axis_type``."""
    return math.log10(y) if axis_type == "log" else y


def test_the_floor_label_sits_on_the_floor_line(data):
    for fig in (F.figure_fid_vs_nfe(data), report_figures(data)["fid-nfe"]):
        (line,) = [s for s in fig.layout.shapes if s.type == "line"]
        (label,) = [a for a in fig.layout.annotations if a.text == "floor (real vs real)"]
        assert line.y0 == line.y1 == pytest.approx(data.floors["floor"])
        assert label.yref == line.yref == "y"
        axis_type = fig.layout.yaxis.type
        assert axis_type == "log"
        # plotly.js: a shape on a log axis is at its data value, an annotation at log10(y)
        assert label.y == pytest.approx(_axis_value(axis_type, line.y0))
        assert label.yanchor == "bottom" and label.showarrow is False


def _user_texts(published, data) -> dict[str, str]:
    """Everything a person reads of the study: notes, status, report, figures' text."""
    texts = {"study note": P.study_note(data), "status": format_status(data)}
    for t in data.trials:
        texts[f"trial {t.number} note"] = P.trial_note(data, t)
        for nfe in t.inner:
            texts[f"inner note {t.number}/{nfe}"] = P.inner_note(data, t, nfe)
    texts["report"] = render_report(data).replace(get_plotlyjs(), "")
    for key, fig in {**F.study_figures(data), **report_figures(data)}.items():
        layout = fig.layout
        words = [layout.title.text or ""]
        words += [a.text or "" for a in layout.annotations]
        words += [tr.name or "" for tr in fig.data]
        words += [str(getattr(tr, "hovertemplate", "") or "") for tr in fig.data]
        texts[f"figure {key}"] = " ".join(words)
    outer = optuna.load_study(study_name=published.name, storage=published.storage)
    texts["published study note"] = get_note(outer)
    return texts


def test_noise_vs_real_is_not_called_a_ceiling(published, data):
    texts = _user_texts(published, data)
    called = [where for where, text in texts.items() if "ceiling" in text.lower()]
    assert not called, f"'ceiling' in {called}"
    noise = fid_text(data.floors["ceiling"])  # the stored key keeps its name
    for where in ("study note", "status", "report", "published study note"):
        assert f"noise vs real {noise}" in texts[where], where
        assert "not an upper bound" in texts[where], where


def test_an_inner_study_note_gives_the_fid_behind_its_best_trial_value(published, data):
    best_trial = data.best
    for nfe, r in best_trial.inner.items():
        inner = optuna.load_study(study_name=r.study_name, storage=published.storage)
        ln_fid = inner.best_value  # what optuna-dashboard's Best Trial card shows
        note = get_note(inner)
        fid = fid_text(math.exp(ln_fid))
        assert f"FID {fid} on the search seeds" in note, nfe
        assert f"{ln_fid:.4g}" in note and "Best Trial" in note and "ln FID" in note
        assert f"trials?numbers={inner.best_trial.number})" in note
        # the same from the record when the study's best is not given
        assert f"FID {fid} on the search seeds" in P.inner_note(data, best_trial, nfe)
