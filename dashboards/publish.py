"""Put a study's figures and notes into its Optuna studies, for optuna-dashboard.

After each outer trial (``study.commands.hooks.publish_figures``):

- on the outer study: the headline figure, the bilevel overview, the ``p``/``w`` panels, the
  best trial's step locations and FID against NFE (``dashboards.figures.study_figures``), each
  under a stable ``graph_object_id`` so that a rerun replaces it; and a markdown note with a
  table of the outer trials linking to their inner studies;
- on the finished outer trial: a note with its training weighting and, per NFE budget, a link
  to its inner study, its best FID and the baselines';
- on each of its inner studies: the step locations of its trials against the baselines, and
  a note linking back to the outer study and trial; on each inner trial, a note with its
  schedule (where it came from, its search FID, sampler and sigmas).

Links are optuna-dashboard's own paths (``/dashboard/studies/<id>``,
``/dashboard/studies/<id>/trials?numbers=<n>``).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import plotly.graph_objects as go

from sigmatune.dashboards.figures import (
    SCHEDULE_LABELS,
    figure_inner_trials,
    study_figures,
    trial_title,
)
from sigmatune.study.records import (
    InnerRecord,
    InnerTrialRecord,
    StudyRecord,
    TrialRecord,
    fid_text,
    floor_text,
    held_out_line,
    read_inner_trials,
    read_study,
)

INNER_FIGURE_ID = "sigmatune-inner-steps"
# Fewer complete outer trials than this: the study note says importances are not findings yet.
FEW_TRIALS = 30


def study_link(study_id: int) -> str:
    return f"/dashboard/studies/{study_id}"


def trial_link(study_id: int, number: int) -> str:
    return f"/dashboard/studies/{study_id}/trials?numbers={number}"


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


def dashboard_help(data: StudyRecord) -> str:
    """How to read optuna-dashboard's built-in panels for this study (what they show was read
    from optuna-dashboard 0.21's History and Intermediate-values code)."""
    primary = data.primary_nfe
    text = (
        f"Reading the built-in panels: a complete trial's objective is its held-out FID at NFE "
        f"{primary}. *Intermediate values* shows the interim FIDs reported at training "
        'checkpoints; its x axis, labelled "Step", counts **training images**. '
    )
    if any(t.state == "PRUNED" and t.values for t in data.trials):
        text += (
            "A pruned trial carries its last interim FID as its value (Optuna's rule: a "
            "partly trained model, a fitted schedule, one held-out seed set), and *History* "
            "plots it among the final values while its switch *Include PRUNED trials* is on "
            "(the default): turn it off to compare final values only. "
        )
    else:
        text += "Pruned trials carry no final value and *History* shows complete trials only. "
    return text + _importance_help(len(data.complete))


def _importance_help(complete: int) -> str:
    """What *Hyperparameter importance* and *Contour* show with ``complete`` complete trials
    (optuna-dashboard 0.21 fits importances, PED-ANOVA, from two complete trials on)."""
    trials = f"{complete} complete trial{'' if complete == 1 else 's'}"
    if complete < 2:
        return (
            f"*Hyperparameter importance* and *Contour* are empty while the study has "
            f"{trials}: they need at least two."
        )
    text = (
        f"*Hyperparameter importance* and *Contour* are drawn from the {trials} so far. "
        "Each parameterisation, density and weighting has its own parameters, so a parameter "
        "is compared over the trials that have it. "
    )
    if complete < FEW_TRIALS:
        top = math.ceil(0.1 * complete)  # PED-ANOVA's default top quantile
        best = "the best trial" if top == 1 else f"the {top} best trials"
        text += (
            f"The importances (PED-ANOVA: where the best tenth of the trials lies in each "
            f"parameter's range, against all trials) fitted on {complete} trials say where "
            f"{best} happen{'s' if top == 1 else ''} to differ from the rest, not which "
            f"parameters matter: they are not reliable before some {FEW_TRIALS} complete "
            "trials. "
        )
    return text + (
        "The contour is a surface interpolated between the trials' points, one point per "
        "trial: away from the points it shows the interpolation, not measured FIDs."
    )


def _floor_text(data: StudyRecord) -> str:
    """The scorer's reference points. The stored ``ceiling`` is the FID of pure noise against
    the data: a poor schedule scores above it, so it is shown as what it is, not as a bound."""
    if not data.floors:
        return ""
    fl = data.floors
    line = floor_text(fl, data.seeds.num_images)
    return (
        f" {line[:1].upper()}{line[1:]}; "
        f"noise vs real {fid_text(fl['ceiling'])} (pure noise scored against the data: a "
        "reference point, not an upper bound)."
    )


def study_note(data: StudyRecord) -> str:
    """The outer study's note: best result and a table of outer trials with their inner
    studies, every FID on held-out seeds."""
    cfg = data.config
    budgets = data.nfe_budgets
    lines = [
        f"## sigmatune study `{data.name}`",
        "",
        f"Data set `{cfg.dataset}`; NFE budgets {budgets} (primary first); FID with the "
        f"`{cfg.inner.fid_extractor}` extractor on {data.seeds.num_images} images"
        f"{data.seeds.search_note}, re-scored on {data.seeds.held_out_sets} held-out seed "
        f"sets (mean ± spread).{_floor_text(data)}",
        "",
        dashboard_help(data),
        "",
    ]
    best, primary = data.best, data.primary_nfe
    if best is not None and primary in best.inner:
        lines += [
            f"**Best:** [trial {best.number}]({trial_link(data.study_id, best.number)}) — "
            f"{_md(trial_title(best))}; NFE {primary}: {_md(held_out_line(best.inner[primary]))}",
            "",
        ]
    header = (
        "| trial | state | training weighting | "
        + " | ".join(f"NFE {k} tuned (karras ρ=7)" for k in budgets)
        + " | inner studies |"
    )
    lines += [header, "|" + "---|" * (4 + len(budgets))]
    for t in data.trials:
        cells = [
            f"[{t.number}]({trial_link(data.study_id, t.number)})",
            t.state,
            _md(trial_title(t)),
        ]
        for k in budgets:
            r = t.inner.get(k)
            h = r.held_out if r is not None else None
            cells.append(
                f"{fid_text(h.mean('tuned'))} ({fid_text(h.mean('karras_rho7'))})" if h else "–"
            )
        cells.append(" ".join(_inner_link(data, t, k) for k in sorted(t.inner)) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Figures: `sigmatune-headline` puts the training weighting W(λ) of every "
        "trial beside the density of the best trial's tuned step locations.",
    ]
    return "\n".join(lines) + "\n"


def _inner_link(data: StudyRecord, t: TrialRecord, nfe: int) -> str:
    name = t.inner[nfe].study_name
    sid = data.study_ids.get(name)
    return f"[nfe {nfe}]({study_link(sid)})" if sid is not None else f"nfe {nfe}: `{name}`"


def trial_note(data: StudyRecord, t: TrialRecord) -> str:
    """An outer trial's note: its training weighting, why it failed or was pruned, and per
    NFE a link to its inner study with the held-out figures."""
    lines = [f"## {_md(trial_title(t))}", ""]
    if t.name:
        lines += [f"The literature configuration `{t.name}`, enqueued as a baseline.", ""]
    if t.retry_of is not None:
        lines += [
            f"Retry of trial {t.retry_of} (resumed its checkpoint and inner studies).",
            "",
        ]
    if t.fail_reason:
        lines += [f"Failed: `{_md(t.fail_reason)}`", ""]
    if t.prune_reason:
        lines += [f"Pruned: {_md(t.prune_reason)}", ""]
    if t.note:
        lines += [_md(t.note), ""]
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
    if t.inner:
        lines += [
            "| NFE | inner study | best trial | held-out FID (tuned, baselines, floor) | sampler |",
            "|---|---|---|---|---|",
        ]
        for k in sorted(t.inner):
            r = t.inner[k]
            sid = data.study_ids.get(r.study_name)
            link = (
                f"[{r.study_name}]({study_link(sid)})" if sid is not None else f"`{r.study_name}`"
            )
            best = f"#{r.search_trial}"
            if sid is not None:
                best = f"[{best}]({trial_link(sid, r.search_trial)})"
            lines.append(f"| {k} | {link} | {best} | {_md(held_out_line(r))} | {r.tuned.sampler} |")
        lines.append("")
    return "\n".join(lines)


def best_search_value(study: optuna.Study) -> tuple[int, float] | None:
    """The number and value of the trial that optuna-dashboard's *Best Trial* card shows (the
    study's best trial); None before a trial completes."""
    try:
        best = study.best_trial
    except (ValueError, RuntimeError):  # no complete trial; several objectives
        return None
    return (best.number, float(best.value)) if best.value is not None else None


def _best_search_text(r: InnerRecord, sid: int | None, best: tuple[int, float] | None) -> str:
    """What the *Best Trial* card's number is: ln FID on the search seeds, with its FID."""
    if best is None and r.search_trial >= 0 and r.search_fid > 0:
        best = (r.search_trial, math.log(r.search_fid))
    if best is None or not math.isfinite(best[1]):
        return ""
    number, ln_fid = best
    ref = f"[trial {number}]({trial_link(sid, number)})" if sid is not None else f"trial {number}"
    return (
        f"**Best of the search: FID {fid_text(math.exp(ln_fid))} on the search seeds** "
        f"({ref}). optuna-dashboard's *Best Trial* shows its value, {ln_fid:.4g}: the ln FID "
        "the search minimises, not a FID. The search seeds picked it, so this FID is "
        "optimistic; the held-out figures are the ones to compare."
    )


def inner_note(
    data: StudyRecord, t: TrialRecord, nfe: int, best: tuple[int, float] | None = None
) -> str:
    """An inner study's note: the link back to its outer trial, the search's best FID (the
    FID behind optuna-dashboard's *Best Trial* value, which is ln FID: ``best``, the trial
    number and value of :func:`best_search_value`, else the record's search best), the
    schedules compared and their held-out figures."""
    r = t.inner[nfe]
    sid = data.study_ids.get(r.study_name)
    lines = [
        f"## Inner study of trial {t.number}, NFE {nfe}",
        "",
        f"Step locations for the model of [trial {t.number}]"
        f"({trial_link(data.study_id, t.number)}) of the study "
        f"[{data.name}]({study_link(data.study_id)}): {_md(trial_title(t))}. Trial values are "
        "ln FID on the search seeds (FID = e^value); the figures below are on held-out seeds.",
        "",
    ]
    best_text = _best_search_text(r, sid, best)
    if best_text:
        lines += [best_text, ""]
    lines += [f"Held-out: {_md(held_out_line(r))}", ""]
    if r.at_bound:
        lines += [f"The best trial sits on a bound of the space: {', '.join(r.at_bound)}.", ""]
    for name, s in r.schedules.items():
        label = SCHEDULE_LABELS.get(name, name)
        ref = ""
        if name == "tuned" and sid is not None:
            ref = f" ([trial {r.search_trial}]({trial_link(sid, r.search_trial)}))"
        mean = r.held_out.mean(name) if r.held_out is not None else None
        sig = ", ".join(f"{x:.4g}" for x in s.sigmas)
        lines.append(f"- **{label}**{ref}: held-out FID {fid_text(mean)}; σ = [{sig}]")
    return "\n".join(lines) + "\n"


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(kwargs.items())
    )


def inner_trial_note(data: StudyRecord, t: TrialRecord, nfe: int, it: InnerTrialRecord) -> str:
    """An inner trial's note: where its schedule came from (a starting point or the search),
    its FID on the search seeds, its sampler and its step locations."""
    r = t.inner[nfe]
    sid = data.study_ids.get(r.study_name)
    if it.start:
        label = SCHEDULE_LABELS.get(it.start, it.start)
        title = f"{label} (starting point)"
        origin = f"enqueued as the starting point `{it.start}` before the search"
    else:
        title = "searched schedule" + (" (the best)" if it.number == r.search_trial else "")
        origin = "proposed by the search"
    study = f"[{r.study_name}]({study_link(sid)})" if sid is not None else f"`{r.study_name}`"
    lines = [
        f"## Inner trial {it.number}: {title}",
        "",
        f"A schedule of NFE {nfe} in {study}, for the model of [trial {t.number}]"
        f"({trial_link(data.study_id, t.number)}) ({_md(t.label)}), {origin}. Its value is "
        "ln FID on the search seeds.",
        "",
        f"- state: {it.state}",
        f"- FID on the search seeds: {fid_text(it.fid)}",
    ]
    if it.number == r.search_trial:
        lines.append(
            f"- the best of the search, the inner study's tuned schedule; held-out: "
            f"{_md(held_out_line(r))}"
        )
    s = it.schedule
    if s is None:
        lines.append("- no schedule stored (the trial ended before its schedule was made)")
    else:
        kwargs = f" ({_kwargs_text(s.sampler_kwargs)})" if s.sampler_kwargs else ""
        sig = ", ".join(f"{x:.4g}" for x in s.sigmas)
        lines += [f"- sampler `{s.sampler}`{kwargs}", f"- σ ({len(s.sigmas)} values) = [{sig}]"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Publishing


# optuna-dashboard is imported where it writes, not when this module loads: it brings
# scikit-learn and scipy along (3 s of a process's start on a 2-core machine), and every
# ``sigmatune run`` loads this module, also one that stops at a bad config or a bad storage.


def save_note(target: optuna.Study | optuna.Trial, body: str) -> None:
    """optuna-dashboard's ``save_note``: the markdown note shown with ``target``."""
    from optuna_dashboard import save_note as save

    save(target, body)


def save_plotly_graph_object(study: optuna.Study, fig: go.Figure, graph_object_id: str) -> None:
    """optuna-dashboard's ``save_plotly_graph_object``: ``fig`` on the study's page, under
    ``graph_object_id`` (a second save with the same id replaces it)."""
    from optuna_dashboard import save_plotly_graph_object as save

    save(study, fig, graph_object_id=graph_object_id)


def save_trial_note(study: optuna.Study, trial_id: int, body: str) -> None:
    """``save_note`` on a trial that may have finished (its note lives in study attrs)."""
    save_note(optuna.Trial(study, trial_id), body)


def publish_outer(storage: optuna.storages.BaseStorage, data: StudyRecord) -> list[str]:
    """The outer study's figures (stable ids) and note; returns the figure ids."""
    study = _load(storage, data.name)
    ids = []
    for graph_id, fig in study_figures(data).items():
        save_plotly_graph_object(study, dashboard_layout(fig), graph_object_id=graph_id)
        ids.append(graph_id)
    save_note(study, study_note(data))
    return ids


def publish_trial(storage: optuna.storages.BaseStorage, data: StudyRecord, number: int) -> None:
    """An outer trial's note, the figure and note of each of its inner studies, and the notes
    of their trials."""
    t = data.trial(number)
    outer = _load(storage, data.name)
    save_trial_note(outer, t.trial_id, trial_note(data, t))
    for nfe, r in sorted(t.inner.items()):
        if r.study_name not in data.study_ids:
            continue
        inner = _load(storage, r.study_name)
        inner_trials = read_inner_trials(storage, r.study_name)
        fig = figure_inner_trials(
            inner_trials,
            title=f"{r.study_name}: step locations of the trials, best first, with baselines",
        )
        save_plotly_graph_object(inner, dashboard_layout(fig), graph_object_id=INNER_FIGURE_ID)
        save_note(inner, inner_note(data, t, nfe, best_search_value(inner)))
        for it in inner_trials:
            save_trial_note(inner, it.trial_id, inner_trial_note(data, t, nfe, it))


def publish_after_trial(
    storage: optuna.storages.BaseStorage, study_name: str, number: int
) -> StudyRecord:
    """What ``study.commands.hooks.publish_figures`` calls: refresh the outer study's figures and
    note, and annotate trial ``number`` and its inner studies."""
    data = read_study(storage, study_name)
    publish_outer(storage, data)
    publish_trial(storage, data, number)
    return data


def publish_study(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """Publish everything of a study (e.g. one run before figures existed)."""
    data = read_study(storage, study_name)
    ids = publish_outer(storage, data)
    for t in data.trials:
        publish_trial(storage, data, t.number)
    return {"figures": ids, "trials": [t.number for t in data.trials]}
