"""Put a study's figures and notes into its Optuna studies, for optuna-dashboard.

After each outer trial (``study.bilevel.after_outer_trial``):

- on the outer study: the headline figure, the bilevel overview, the ``p``/``w`` panels, the
  best trial's step locations and FID against NFE (``dashboards.figures.study_figures``), each
  under a stable ``graph_object_id`` so that a rerun replaces it; and a markdown note with a
  table of the outer trials linking to their inner studies;
- on the finished outer trial: a note with its training weighting and, per NFE budget, a link
  to its inner study, its best FID and the baselines';
- on each of its inner studies: the step locations of its trials against the baselines, and
  a note linking back to the outer study and trial.

Links are optuna-dashboard's own paths (``/dashboard/studies/<id>``,
``/dashboard/studies/<id>/trials?numbers=<n>``).
"""

from __future__ import annotations

from typing import Any

import optuna
import plotly.graph_objects as go
from optuna_dashboard import save_note, save_plotly_graph_object

from sigmatune.dashboards.figures import (
    BASELINE_LABELS,
    BASELINES,
    OuterTrial,
    StudyData,
    figure_inner_trials,
    load_study_data,
    objective_label,
    study_figures,
)

INNER_FIGURE_ID = "sigmatune-inner-steps"


def study_link(study_id: int) -> str:
    return f"/dashboard/studies/{study_id}"


def trial_link(study_id: int, number: int) -> str:
    return f"/dashboard/studies/{study_id}/trials?numbers={number}"


def _fid(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def dashboard_layout(fig: go.Figure) -> go.Figure:
    """Fit a figure to optuna-dashboard's card (half the page wide, 450 px high): no fixed
    height, smaller type, the legend below the plot."""
    fig.update_layout(
        height=None,
        autosize=True,
        margin={"l": 55, "r": 15, "t": 45, "b": 10},
        title={"font": {"size": 13}},
        legend={
            "orientation": "h",
            "yanchor": "top",
            "y": -0.16,
            "xanchor": "left",
            "x": 0,
            "font": {"size": 9},
        },
    )
    fig.update_annotations(font_size=11)  # subplot titles
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _load(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    # A RandomSampler: loading must not touch the study's own sampler state.
    return optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )


# --------------------------------------------------------------------------------------------
# Notes


def study_note(data: StudyData) -> str:
    """The outer study's note: best result and a table of outer trials with their inner
    studies."""
    cfg = data.config
    budgets = data.nfe_budgets
    inner = cfg.get("inner") or {}
    lines = [
        f"## sigmatune study `{data.name}`",
        "",
        f"Data set `{cfg.get('dataset', '?')}`; NFE budgets {budgets} (primary first); FID with "
        f"the `{inner.get('fid_extractor', '?')}` extractor on {inner.get('fid_num_images', '?')} "
        "images with fixed seeds. The outer value is the best inner FID at the primary NFE.",
        "",
    ]
    best, primary = data.best, data.primary_nfe
    if best is not None:
        karras = best.baseline_fid.get(primary, {}).get("karras_rho7")
        vs = f" (karras ρ=7 on the same model: {_fid(karras)})" if karras else ""
        lines += [
            f"**Best:** [trial {best.number}]({trial_link(data.study_id, best.number)}) — "
            f"{_md(objective_label(best.objective))}, FID {_fid(best.value)} at NFE "
            f"{primary}{vs}.",
            "",
        ]
    header = (
        "| trial | state | training weighting | "
        + " | ".join(f"NFE {k} (karras ρ=7)" for k in budgets)
        + " | inner studies |"
    )
    lines += [header, "|" + "---|" * (4 + len(budgets))]
    for t in data.trials:
        cells = [
            f"[{t.number}]({trial_link(data.study_id, t.number)})",
            t.state + (" (EDM defaults)" if t.baseline == "edm" else ""),
            _md(objective_label(t.objective)),
        ]
        for k in budgets:
            karras = t.baseline_fid.get(k, {}).get("karras_rho7")
            cells.append(f"{_fid(t.best_fid.get(k))} ({_fid(karras)})" if k in t.best_fid else "–")
        cells.append(" ".join(_inner_link(data, t, k) for k in sorted(t.inner_studies)) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Figures: `sigmatune-headline` puts the training weighting W(λ) of every "
        "trial beside the density of the best trial's tuned step locations.",
    ]
    return "\n".join(lines) + "\n"


def _inner_link(data: StudyData, t: OuterTrial, nfe: int) -> str:
    name = t.inner_studies[nfe]
    sid = data.study_ids.get(name)
    return f"[nfe {nfe}]({study_link(sid)})" if sid is not None else f"nfe {nfe}: `{name}`"


def trial_note(data: StudyData, t: OuterTrial) -> str:
    """An outer trial's note: its training weighting and links to its inner studies."""
    lines = [f"## Outer trial {t.number}: {_md(objective_label(t.objective))}", ""]
    if t.baseline == "edm":
        lines += ["EDM's defaults (enqueued as the baseline).", ""]
    if t.original_trial != t.number:
        lines += [
            f"Retry of trial {t.original_trial} (resumed its checkpoint and inner studies).",
            "",
        ]
    if t.fail_reason:
        lines += [f"Failed: `{_md(t.fail_reason)}`", ""]
    if t.objective:
        desc = t.objective
        adaptive = desc.get("adaptive")
        lines += [
            f"- parameterisation `{desc['parameterisation']}`, sigma_data {desc['sigma_data']:.4g}",
            f"- density p(σ): `{desc['density']['name']}` {desc['density'].get('params') or {}}",
            f"- weighting w(σ): `{desc['weighting']['name']}` "
            f"{desc['weighting'].get('params') or {}}",
            f"- adaptive: `{adaptive['name']}` {adaptive.get('params') or {}}"
            if adaptive
            else "- adaptive: none",
            f"- σ range [{desc['sigma_min']:.4g}, {desc['sigma_max']:.4g}]",
            "",
        ]
    if t.inner_studies:
        lines += [
            "| NFE | inner study | best FID | sampler | karras ρ=7 | loglinear |",
            "|---|---|---|---|---|---|",
        ]
        for k in sorted(t.inner_studies):
            name = t.inner_studies[k]
            sid = data.study_ids.get(name)
            link = f"[{name}]({study_link(sid)})" if sid is not None else f"`{name}`"
            tuned = t.schedules.get(k, {}).get("tuned")
            best = _fid(t.best_fid.get(k))
            if tuned is not None and sid is not None and tuned.trial_number is not None:
                best = f"[{best}]({trial_link(sid, tuned.trial_number)})"
            base = t.baseline_fid.get(k, {})
            lines.append(
                f"| {k} | {link} | {best} | {tuned.sampler if tuned else '–'} | "
                f"{_fid(base.get('karras_rho7'))} | {_fid(base.get('loglinear'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def inner_note(data: StudyData, t: OuterTrial, nfe: int) -> str:
    """An inner study's note: the link back to its outer trial, the best and the baselines."""
    lines = [
        f"## Inner study of outer trial {t.number}, NFE {nfe}",
        "",
        f"Step locations for the model of [trial {t.number}]"
        f"({trial_link(data.study_id, t.number)}) of the outer study "
        f"[{data.name}]({study_link(data.study_id)}): {_md(objective_label(t.objective))}.",
        "",
    ]
    by_name = t.schedules.get(nfe, {})
    sid = data.study_ids.get(t.inner_studies.get(nfe, ""))
    for name in ("tuned", *BASELINES):
        s = by_name.get(name)
        if s is None:
            continue
        label = "best" if name == "tuned" else BASELINE_LABELS[name]
        ref = f"trial {s.trial_number}"
        if sid is not None and s.trial_number is not None:
            ref = f"[{ref}]({trial_link(sid, s.trial_number)})"
        sig = ", ".join(f"{x:.4g}" for x in s.sigmas)
        lines.append(f"- **{label}**: FID {_fid(s.fid)} ({ref}, {s.sampler}); σ = [{sig}]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Publishing


def save_trial_note(study: optuna.Study, trial_id: int, body: str) -> None:
    """``save_note`` on a trial that may have finished (its note lives in study attrs)."""
    save_note(optuna.Trial(study, trial_id), body)


def publish_outer(storage: optuna.storages.BaseStorage, data: StudyData) -> list[str]:
    """The outer study's figures (stable ids) and note; returns the figure ids."""
    study = _load(storage, data.name)
    ids = []
    for graph_id, fig in study_figures(data).items():
        save_plotly_graph_object(study, dashboard_layout(fig), graph_object_id=graph_id)
        ids.append(graph_id)
    save_note(study, study_note(data))
    return ids


def publish_trial(storage: optuna.storages.BaseStorage, data: StudyData, number: int) -> None:
    """An outer trial's note, and the figure and note of each of its inner studies."""
    t = data.trial(number)
    outer = _load(storage, data.name)
    save_trial_note(outer, t.trial_id, trial_note(data, t))
    for nfe, name in sorted(t.inner_studies.items()):
        if name not in data.study_ids:
            continue
        inner = _load(storage, name)
        trials = inner.get_trials(deepcopy=False)
        fig = figure_inner_trials(
            trials, title=f"{name}: step locations of the trials, best first, with baselines"
        )
        save_plotly_graph_object(inner, dashboard_layout(fig), graph_object_id=INNER_FIGURE_ID)
        save_note(inner, inner_note(data, t, nfe))


def publish_after_trial(
    storage: optuna.storages.BaseStorage, study_name: str, number: int
) -> StudyData:
    """What ``study.bilevel.after_outer_trial`` calls: refresh the outer study's figures and
    note, and annotate trial ``number`` and its inner studies."""
    data = load_study_data(storage, study_name)
    publish_outer(storage, data)
    publish_trial(storage, data, number)
    return data


def publish_study(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """Publish everything of a study (e.g. one run before figures existed)."""
    data = load_study_data(storage, study_name)
    ids = publish_outer(storage, data)
    for t in data.trials:
        publish_trial(storage, data, t.number)
    return {"figures": ids, "trials": [t.number for t in data.trials]}
