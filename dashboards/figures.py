"""Plotly figures of a sigmatune study, drawn from its stored records.

Everything is drawn over logSNR ``lam = -2 ln sigma`` (docs/development.md). The headline
figure puts the two weightings that a noise schedule used to entangle on one lam axis: the
*training* weighting of each outer trial, as the effective weight per unit lam (Kingma & Gao
2023, eq. 9 convention; ``objectives.curves.weighting_curves``)

    W(lam) = p_lam(lam) * w(sigma) * sigma^2 / c_out(sigma)^2,

normalised to unit area over the run's ``[lam_min, lam_max]``, and the *sampling* spacing of the
tuned step locations, as a step density: ``n`` positive sigmas at ``lam_0 < ... < lam_{n-1}``
put mass ``1/(n-1)`` on each interval, i.e. ``1 / ((n-1) (lam_{i+1} - lam_i))`` per unit lam
(uniform for ``loglinear``).

The figures take a :class:`~sigmatune.study.records.StudyRecord` (read by
``sigmatune.study.records.read_study``, the one reader of what a study stores). Every FID
drawn is a held-out figure (mean over the held-out seed sets, with its spread), never the
search's optimistic minimum. Figures carry plain lists (no numpy arrays), so their JSON is
readable by any plotly.js, optuna-dashboard's included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from sigmatune.models.schedules import validate
from sigmatune.objectives.curves import LAM_POINTS, lam_grid, weighting_curves
from sigmatune.study.records import (
    InnerTrialRecord,
    Schedule,
    StudyRecord,
    TrialRecord,
    fid_text,
)

SCHEDULE_LABELS = {
    "tuned": "tuned",
    "karras_rho7": "karras ρ=7",
    "karras_rho7_same_range": "karras ρ=7, tuned σ range",
    "loglinear_same_range": "loglinear, tuned σ range",
    "gits": "GITS",
    "ld3": "LD3",
    "loglinear": "loglinear",
}

BEST_COLOR = "#d62728"
EDM_COLOR = "#1f1f1f"
OTHER_COLOR = "rgba(110, 110, 110, 0.45)"
NFE_COLORS = ("#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SCHEDULE_COLORS = {
    "tuned": BEST_COLOR,
    "karras_rho7": "#1f77b4",
    "karras_rho7_same_range": "#17becf",
    "loglinear_same_range": "#2ca02c",
    "gits": "#ff7f0e",
    "ld3": "#9467bd",
    "loglinear": "#2ca02c",
}


def trial_title(t: TrialRecord) -> str:
    name = f" [{t.name}]" if t.name else ""
    return f"trial {t.number}: {t.label}{name}"


def held_out_mean(t: TrialRecord, nfe: int, name: str) -> float | None:
    record = t.inner.get(nfe)
    if record is None or record.held_out is None:
        return None
    return record.held_out.mean(name)


def held_out_spread(t: TrialRecord, nfe: int, name: str) -> float | None:
    record = t.inner.get(nfe)
    if record is None or record.held_out is None:
        return None
    return record.held_out.spread(name)


# --------------------------------------------------------------------------------------------
# Curves


def step_lams(sigmas: Sequence[float]) -> list[float]:
    """logSNR of the positive sigmas of a schedule, ascending (the final 0 is at lam = inf)."""
    s = validate(sigmas)
    return [float(x) for x in (-2 * torch.log(s[:-1])).tolist()]


def step_density(sigmas: Sequence[float]) -> tuple[list[float], list[float]]:
    """The density over lam of a schedule's step locations: ``n`` positive sigmas at ``lam_0 <
    ... < lam_{n-1}`` give ``1 / ((n-1) (lam_{i+1} - lam_i))`` on ``[lam_i, lam_{i+1})``, which
    integrates to 1. Returns ``(lam_0..lam_{n-1}, d_0..d_{n-2}, d_{n-2})`` for a plotly
    ``line_shape="hv"`` step line; empty lists for a one-step schedule."""
    lams = step_lams(sigmas)
    n = len(lams)
    if n < 2:
        return [], []
    dens = [1.0 / ((n - 1) * (lams[i + 1] - lams[i])) for i in range(n - 1)]
    return lams, dens + dens[-1:]


def _r(values: Sequence[float] | torch.Tensor, digits: int = 6) -> list[float | None]:
    """Plain, short JSON numbers (None for non-finite values, which plotly leaves out)."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    out: list[float | None] = []
    for v in values:
        v = float(v)
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
    return out


def _new_figure() -> go.Figure:
    # template "none" from the start: plotly.py's default template is deep-copied otherwise
    return go.Figure(layout={"template": "none"})


def _layout(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="none",  # plotly.js's own plain style; a named template is ~7 kB per figure
        font={"family": "Arial, sans-serif", "size": 12, "color": "#2a3f5f"},
        paper_bgcolor="white",
        plot_bgcolor="white",
        height=height,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"font": {"size": 11}},
        hovermode="closest",
    )
    fig.update_xaxes(zeroline=False, gridcolor="#ebebeb", linecolor="#bbbbbb")
    fig.update_yaxes(zeroline=False, gridcolor="#ebebeb", linecolor="#bbbbbb")
    return fig


def _style(trial: TrialRecord, best: TrialRecord | None) -> tuple[dict[str, Any], str | None, bool]:
    """Line style, legend group and legend flag for an outer trial's curve."""
    if best is not None and trial.number == best.number:
        return {"color": BEST_COLOR, "width": 3.5}, None, True
    if trial.is_edm:
        return {"color": EDM_COLOR, "width": 2, "dash": "dash"}, None, True
    return {"color": OTHER_COLOR, "width": 1.2}, "others", False


def _trial_name(trial: TrialRecord, best: TrialRecord | None) -> str:
    if best is not None and trial.number == best.number:
        edm = "EDM defaults · " if trial.is_edm else ""
        return f"best · {edm}{trial_title(trial)}"
    if trial.is_edm:
        return f"EDM defaults · {trial_title(trial)}"
    return trial_title(trial)


def _weighted_trials(data: StudyRecord) -> list[TrialRecord]:
    """Trials with a training weighting, others first so that best and EDM are drawn on top."""
    trials = [t for t in data.trials if t.objective]
    best, edm = data.best, data.edm
    rank = {id(best): 2, id(edm): 1}
    return sorted(trials, key=lambda t: (rank.get(id(t), 0), t.number))


# --------------------------------------------------------------------------------------------
# Figures


def _lambda_panels(
    data: StudyRecord, points: int, *titles: str, spacing: float = 0.1
) -> tuple[go.Figure, Any]:
    """Panels (one per title) stacked on one λ axis over the run's σ range, and that λ grid."""
    sigma_min, sigma_max = data.sigma_range
    lam = lam_grid(sigma_min, sigma_max, points)
    fig = make_subplots(
        figure=_new_figure(),
        rows=len(titles),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=spacing,
        subplot_titles=titles,
    )
    return fig, lam


def _w_trace(t: TrialRecord, lam: Any, line: dict[str, Any], name: str, **kw: Any) -> go.Scatter:
    """Trial ``t``'s effective weighting W(λ), normalised to area 1, over ``lam``."""
    return go.Scatter(
        x=_r(lam),
        y=_r(weighting_curves(t.objective, lam)["W_normalised"]),
        mode="lines",
        line=line,
        name=name,
        hovertemplate=f"{trial_title(t)}<br>λ=%{{x:.3g}}<br>W=%{{y:.3g}}<extra></extra>",
        **kw,
    )


def _density_trace(sched: Schedule, color: str, name: str, **kw: Any) -> go.Scatter | None:
    """The density of ``sched``'s step locations over λ (steps per unit λ), or None for a
    schedule with no interval to draw."""
    xs, ys = step_density(sched.sigmas)
    if not xs:
        return None
    return go.Scatter(
        x=_r(xs),
        y=_r(ys),
        mode="lines",
        line_shape="hv",
        line={"color": color, "width": 2.5},
        name=name,
        **kw,
    )


def figure_headline(data: StudyRecord, *, points: int = LAM_POINTS) -> go.Figure:
    """Training weighting ``W(lam)`` of every outer trial (normalised; best highlighted, EDM's
    defaults dashed) above the step density of the best trial's tuned schedules per NFE."""
    fig, lam = _lambda_panels(
        data,
        points,
        "training: effective weighting W(λ) per unit λ (normalised to area 1)",
        "sampling: density of the tuned step locations (best trial)",
    )
    best = data.best
    others_shown = False
    for t in _weighted_trials(data):
        line, group, show = _style(t, best)
        name = _trial_name(t, best)
        if group == "others":
            show, others_shown = not others_shown, True
            name = "other trials" if show else name
        fig.add_trace(
            _w_trace(t, lam, line, name, legendgroup=group, showlegend=show), row=1, col=1
        )
    lam_min, lam_max = float(lam[0]), float(lam[-1])
    fig.add_trace(
        go.Scatter(
            x=[lam_min, lam_max],
            y=[1 / (lam_max - lam_min)] * 2,
            mode="lines",
            line={"color": "#999999", "dash": "dot", "width": 1.5},
            name="uniform in λ (loglinear spacing)",
        ),
        row=2,
        col=1,
    )
    if best is not None:
        for i, nfe in enumerate(sorted(best.inner)):
            sched = best.inner[nfe].tuned
            color = NFE_COLORS[i % len(NFE_COLORS)]
            label = (
                f"NFE {nfe}: {sched.sampler}, held-out FID "
                f"{fid_text(held_out_mean(best, nfe, 'tuned'))}"
            )
            density = _density_trace(sched, color, label, legendgroup=f"nfe{nfe}")
            if density is not None:
                fig.add_trace(density, row=2, col=1)
            lams = step_lams(sched.sigmas)
            fig.add_trace(
                go.Scatter(
                    x=_r(lams),
                    y=[0.0] * len(lams),
                    mode="markers",
                    marker={
                        "symbol": "line-ns-open",
                        "size": 14,
                        "color": color,
                        "line": {"width": 2, "color": color},
                    },
                    name=f"NFE {nfe} steps",
                    legendgroup=f"nfe{nfe}",
                    showlegend=density is None,
                    customdata=_r(sched.sigmas[:-1]),
                    hovertemplate=f"λ=%{{x:.4g}}<br>σ=%{{customdata:.4g}}<extra>NFE {nfe}</extra>",
                ),
                row=2,
                col=1,
            )
    fig.update_xaxes(title_text="λ = −2 ln σ  (noise ← → clean)", row=2, col=1)
    fig.update_yaxes(title_text="W(λ)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="steps per unit λ", rangemode="tozero", row=2, col=1)
    title = f"{data.name}: training weighting and sampling spacing over λ"
    return _layout(fig, title, height=720)


ERROR_REFERENCES = {
    "exact": "excess denoising error over the exact denoiser",
    "data": "denoising loss on the data set's examples",
}


def _capacity_trials(data: StudyRecord) -> list[TrialRecord]:
    """The best trial, and EDM's defaults beside it, where their per-λ errors are stored."""
    best, edm = data.best, data.edm
    shown = [t for t in (best, edm) if t is not None and t.lam_errors]
    return list({t.number: t for t in shown}.values())


def figure_capacity(data: StudyRecord, *, points: int = LAM_POINTS) -> go.Figure:
    """Where the model spends its capacity (the seed's thesis in one figure): over one λ axis,
    the best trial's training weighting W(λ) (EDM's defaults dashed), its trained model's
    denoising error per λ bin (``models.capacity``: the mean over the bin's examples, ± its
    standard error), and the density of its tuned sampling steps per NFE."""
    trials = _capacity_trials(data)
    reference = trials[0].lam_errors["reference"] if trials else "exact"
    fig, lam = _lambda_panels(
        data,
        points,
        "training: W(λ), normalised",
        f"the trained model: {ERROR_REFERENCES.get(reference, reference)} per λ bin",
        "sampling: density of the tuned step locations",
        spacing=0.07,
    )
    best = data.best
    for t in trials:
        line, group, _ = _style(t, best)
        name = _trial_name(t, best)
        if t.objective:
            trace = _w_trace(t, lam, line, name, legendgroup=group or f"t{t.number}")
            fig.add_trace(trace, row=1, col=1)
        errors = t.lam_errors
        edges = [float(e) for e in errors["edges"]]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig.add_trace(
            go.Scatter(
                x=_r(centres),
                y=_r(errors["error"]),
                error_y={"type": "data", "array": _r(errors["stderr"]), "visible": True},
                mode="lines+markers",
                line={**line, "shape": "linear"},
                name=f"{name}: error",
                legendgroup=group or f"t{t.number}",
                showlegend=not t.objective,
                hovertemplate=(
                    f"{trial_title(t)}<br>λ=%{{x:.3g}}<br>error=%{{y:.3g}}"
                    f" ({errors['per_bin']} examples per bin)<extra></extra>"
                ),
            ),
            row=2,
            col=1,
        )
    if best is not None:
        for i, nfe in enumerate(sorted(best.inner)):
            sched = best.inner[nfe].tuned
            color = NFE_COLORS[i % len(NFE_COLORS)]
            density = _density_trace(sched, color, f"NFE {nfe} ({sched.sampler}), best trial")
            if density is not None:
                fig.add_trace(density, row=3, col=1)
    fig.update_xaxes(title_text="λ = −2 ln σ  (noise ← → clean)", row=3, col=1)
    fig.update_yaxes(title_text="W(λ)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="error (MSE)", type="log", row=2, col=1)
    fig.update_yaxes(title_text="steps per unit λ", rangemode="tozero", row=3, col=1)
    title = f"{data.name}: where the best model spends its capacity"
    return _layout(fig, title, height=880)


def figure_densities(data: StudyRecord, *, points: int = LAM_POINTS) -> go.Figure:
    """Per outer trial: the noise-level density ``p_lam`` and the loss weight ``w(sigma)``."""
    fig, lam = _lambda_panels(
        data,
        points,
        "noise-level density p(λ)",
        "loss weight w(σ) (in its parameterisation's space)",
    )
    best = data.best
    others_shown = False
    for t in _weighted_trials(data):
        curves = weighting_curves(t.objective, lam)
        line, group, show = _style(t, best)
        if group == "others":
            show, others_shown = not others_shown, True
        name = "other trials" if (group == "others" and show) else _trial_name(t, best)
        for row, key in ((1, "p_lam"), (2, "w")):
            fig.add_trace(
                go.Scatter(
                    x=_r(lam),
                    y=_r(curves[key]),
                    mode="lines",
                    line=line,
                    name=name,
                    legendgroup=group or f"t{t.number}",
                    showlegend=show and row == 1,
                    hovertemplate=(
                        f"{trial_title(t)}<br>λ=%{{x:.3g}}<br>{key}=%{{y:.3g}}<extra></extra>"
                    ),
                ),
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="λ = −2 ln σ", row=2, col=1)
    fig.update_yaxes(title_text="p(λ)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="w(σ)", type="log", row=2, col=1)
    return _layout(fig, f"{data.name}: p(λ) and w(σ) per outer trial", height=640)


def _steps_trace(label: str, sched: Schedule, color: str, fid: float | None) -> go.Scatter:
    lams = step_lams(sched.sigmas)
    return go.Scatter(
        x=_r(lams),
        y=[label] * len(lams),
        mode="lines+markers",
        line={"color": color, "width": 1},
        marker={"size": 9, "color": color},
        name=label,
        showlegend=False,
        customdata=_r(sched.sigmas[:-1]),
        hovertemplate=(
            f"{label}<br>{sched.sampler}, FID {fid_text(fid)}<br>"
            "λ=%{x:.4g}, σ=%{customdata:.4g}<extra></extra>"
        ),
    )


def figure_steps(data: StudyRecord, trial: TrialRecord | None = None) -> go.Figure:
    """Step locations (positive sigmas, over lam) of a trial's tuned schedule per NFE against
    the baselines on the same model (labelled with held-out FIDs). Default: the best trial."""
    trial = trial or data.best
    fig = _new_figure()
    if trial is not None:
        rows = []
        for nfe in sorted(trial.inner):
            for name, sched in trial.inner[nfe].schedules.items():
                label = f"NFE {nfe} · {SCHEDULE_LABELS.get(name, name)}"
                rows.append((label, sched, name, held_out_mean(trial, nfe, name)))
        for label, sched, name, fid in reversed(rows):
            fig.add_trace(_steps_trace(label, sched, SCHEDULE_COLORS.get(name, "#555"), fid))
    name = "no complete trial" if trial is None else f"trial {trial.number}"
    fig.update_xaxes(title_text="λ = −2 ln σ  (the final σ = 0 is not drawn)")
    fig.update_yaxes(type="category", automargin=True)
    return _layout(
        fig,
        f"{data.name}: step locations of {name} against the baselines",
        height=max(320, 60 + 40 * len(fig.data)),
    )


def _log_hline(fig: go.Figure, y: float, text: str) -> None:
    """A dotted line across the plot at ``y`` on a log y axis, labelled on it. plotly.js puts a
    shape on a log axis at its data value but an annotation at the log10 of its ``y`` (its
    documented rule), so the label is placed at ``log10(y)``: given ``y`` it would sit at
    ``10**y`` (0.109's label near 1.29). Nothing is drawn for a ``y`` a log axis cannot show."""
    if not (math.isfinite(y) and y > 0):
        return
    fig.add_hline(y=y, line={"color": "#999999", "dash": "dot"})
    fig.add_annotation(
        text=text,
        x=1,
        xref="x domain",
        xanchor="right",
        y=math.log10(y),
        yref="y",
        yanchor="bottom",
        showarrow=False,
        font={"color": "#666666"},
    )


def figure_fid_vs_nfe(data: StudyRecord, trial: TrialRecord | None = None) -> go.Figure:
    """Held-out FID against NFE (mean and spread over the held-out sets): the tuned
    schedules of a trial (default: the best) against the baselines on the same model."""
    trial = trial or data.best
    fig = _new_figure()
    nfes = sorted(trial.inner) if trial is not None else []
    if trial is not None:
        names = ["tuned"] + sorted(
            {n for k in nfes for n in trial.inner[k].schedules if n != "tuned"}
        )
        for name in names:
            ks = [k for k in nfes if held_out_mean(trial, k, name) is not None]
            if not ks:
                continue
            tuned = name == "tuned"
            fig.add_trace(
                go.Scatter(
                    x=ks,
                    y=_r([held_out_mean(trial, k, name) for k in ks]),
                    error_y={
                        "type": "data",
                        "array": _r([held_out_spread(trial, k, name) or 0.0 for k in ks]),
                        "visible": True,
                    },
                    mode="lines+markers",
                    name=SCHEDULE_LABELS.get(name, name),
                    line={
                        "color": SCHEDULE_COLORS.get(name, "#555"),
                        "width": 3 if tuned else 1.5,
                        "dash": None if tuned else "dash",
                    },
                    marker={"size": 10 if tuned else 7},
                )
            )
        if data.floors:
            _log_hline(fig, float(data.floors["floor"]), "floor (real vs real)")
    fig.update_xaxes(title_text="NFE (denoiser evaluations)", tickmode="array", tickvals=nfes)
    fig.update_yaxes(title_text="FID (held-out seeds)", type="log")
    name = "no complete trial" if trial is None else f"trial {trial.number}"
    return _layout(fig, f"{data.name}: held-out FID against NFE ({name})", height=440)


def figure_overview(data: StudyRecord) -> go.Figure:
    """The bilevel overview: each outer trial's held-out FID with its tuned step locations
    against ``karras`` rho=7 on the same model, at the primary NFE. Below the diagonal, tuning
    the steps helped."""
    nfe = data.primary_nfe
    fig = _new_figure()
    points = []
    for t in data.complete:
        base = held_out_mean(t, nfe, "karras_rho7")
        tuned = held_out_mean(t, nfe, "tuned")
        if base is not None and tuned is not None:
            points.append((t, base, tuned))
    best, edm = data.best, data.edm
    groups = (
        (
            "other trials",
            [p for p in points if p[0] is not best and p[0] is not edm],
            {"color": "#7f7f7f", "size": 10},
        ),
        (
            "EDM defaults",
            [p for p in points if p[0] is edm and p[0] is not best],
            {"color": EDM_COLOR, "size": 12, "symbol": "square"},
        ),
        (
            "best",
            [p for p in points if p[0] is best],
            {"color": BEST_COLOR, "size": 16, "symbol": "star"},
        ),
    )
    for name, pts, marker in groups:
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=_r([p[1] for p in pts]),
                y=_r([p[2] for p in pts]),
                mode="markers+text",
                text=[str(p[0].number) for p in pts],
                textposition="top center",
                marker=marker,
                name=name,
                customdata=[trial_title(p[0]) for p in pts],
                hovertemplate=(
                    "%{customdata}<br>karras ρ=7: %{x:.4g}<br>tuned: %{y:.4g}<extra></extra>"
                ),
            )
        )
    if points:
        lo = min(min(p[1], p[2]) for p in points)
        hi = max(max(p[1], p[2]) for p in points)
        fig.add_trace(
            go.Scatter(
                x=_r([lo, hi]),
                y=_r([lo, hi]),
                mode="lines",
                line={"color": "#bbbbbb", "dash": "dot"},
                name="y = x",
            )
        )
    fig.update_xaxes(title_text=f"held-out FID with karras ρ=7 steps (NFE {nfe})", type="log")
    fig.update_yaxes(title_text=f"held-out FID with tuned steps (NFE {nfe})", type="log")
    return _layout(
        fig, f"{data.name}: tuned step locations against karras ρ=7, per outer trial", height=520
    )


def figure_inner_trials(
    trials: Sequence[InnerTrialRecord], *, title: str, max_rows: int = 30
) -> go.Figure:
    """An inner study's complete trials as rows of step locations, sorted by FID on the
    search seeds (best on top, starting points labelled), at most ``max_rows`` of them plus
    the starting points."""
    done = sorted(
        (t for t in trials if t.state == "COMPLETE" and t.schedule and t.fid is not None),
        key=lambda t: (t.fid, t.number),
    )
    shown = done[:max_rows] + [t for t in done[max_rows:] if t.start]
    fig = _new_figure()
    for rank, t in reversed(list(enumerate(shown))):
        name = "tuned" if rank == 0 else (t.start or "trial")
        label = f"#{t.number} FID {t.fid:.4g}" + (
            f" · {SCHEDULE_LABELS.get(t.start, t.start)}" if t.start else ""
        )
        color = SCHEDULE_COLORS.get(name, "rgba(110, 110, 110, 0.7)")
        fig.add_trace(_steps_trace(label, t.schedule, color, t.fid))
    fig.update_xaxes(title_text="λ = −2 ln σ  (the final σ = 0 is not drawn)")
    fig.update_yaxes(type="category", automargin=True)
    return _layout(fig, title, height=max(320, 60 + 28 * len(fig.data)))


PARETO_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def pareto_front(data: StudyRecord) -> list[TrialRecord]:
    """The complete trials no other complete trial beats in every objective (all minimised)."""
    done = [t for t in data.complete if t.values and len(t.values) == len(data.directions)]

    def dominated(a: TrialRecord) -> bool:
        return any(
            all(y <= x for x, y in zip(a.values, b.values))
            and any(y < x for x, y in zip(a.values, b.values))
            for b in done
        )

    return sorted((t for t in done if not dominated(t)), key=lambda t: t.values)


def figure_pareto(data: StudyRecord, *, points: int = LAM_POINTS) -> go.Figure:
    """A multi-objective study: every complete trial's held-out FIDs at its first two
    objective NFEs (the Pareto front joined and coloured), beside the W(λ) of each point of
    the front in the same colour — which training weighting buys which trade-off."""
    names = [f"NFE {k}" for k in (data.config.outer.objectives or data.nfe_budgets[:1])]
    fig = make_subplots(
        figure=_new_figure(),
        rows=1,
        cols=2,
        column_widths=[0.45, 0.55],
        horizontal_spacing=0.12,
        subplot_titles=(
            f"held-out FID: {names[0]} against {names[1] if len(names) > 1 else names[0]}",
            "W(λ) of the Pareto-optimal trials (normalised)",
        ),
    )
    front = pareto_front(data)
    others = [t for t in data.complete if t not in front and t.values and len(t.values) > 1]
    if others:
        fig.add_trace(
            go.Scatter(
                x=_r([t.values[0] for t in others]),
                y=_r([t.values[1] for t in others]),
                mode="markers",
                marker={"color": "#999999", "size": 8},
                name="dominated trials",
                customdata=[trial_title(t) for t in others],
                hovertemplate="%{customdata}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    lo, hi = data.sigma_range
    lam = lam_grid(lo, hi, points)
    for i, t in enumerate(front):
        color = PARETO_COLORS[i % len(PARETO_COLORS)]
        if len(t.values) > 1:
            fig.add_trace(
                go.Scatter(
                    x=_r([t.values[0]]),
                    y=_r([t.values[1]]),
                    mode="markers+text",
                    text=[str(t.number)],
                    textposition="top center",
                    marker={"color": color, "size": 13, "symbol": "star"},
                    name=trial_title(t),
                    legendgroup=f"p{t.number}",
                ),
                row=1,
                col=1,
            )
        if t.objective:
            curves = weighting_curves(t.objective, lam)
            fig.add_trace(
                go.Scatter(
                    x=_r(lam),
                    y=_r(curves["W_normalised"]),
                    mode="lines",
                    line={"color": color, "width": 2},
                    name=f"W(λ) · trial {t.number}",
                    legendgroup=f"p{t.number}",
                    showlegend=False,
                ),
                row=1,
                col=2,
            )
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=_r([t.values[0] for t in front]),
                y=_r([t.values[1] for t in front]),
                mode="lines",
                line={"color": "#bbbbbb", "dash": "dot"},
                name="Pareto front",
            ),
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text=f"FID, {names[0]}", type="log", row=1, col=1)
    fig.update_yaxes(title_text=f"FID, {names[-1]}", type="log", row=1, col=1)
    fig.update_xaxes(title_text="λ = −2 ln σ", row=1, col=2)
    fig.update_yaxes(title_text="W(λ)", rangemode="tozero", row=1, col=2)
    return _layout(fig, f"{data.name}: the Pareto front over NFE budgets", height=520)


# Which figure is shown when, once for the dashboard and the report: (id, the condition on
# the study, how it is drawn), in reading order; a figure that needs a training weighting or
# a complete trial is left out until there is one.
FIGURE_RULES: tuple[tuple[str, Callable[[StudyRecord], bool], Callable[..., go.Figure]], ...] = (
    ("headline", lambda d: any(t.objective for t in d.trials), figure_headline),
    ("capacity", lambda d: bool(_capacity_trials(d)), figure_capacity),
    ("densities", lambda d: any(t.objective for t in d.trials), figure_densities),
    ("overview", lambda d: bool(d.complete), figure_overview),
    ("steps", lambda d: d.best is not None, figure_steps),
    ("fid-nfe", lambda d: d.best is not None, figure_fid_vs_nfe),
    ("pareto", lambda d: len(d.directions) > 1 and bool(d.complete), figure_pareto),
)


def shown_figures(data: StudyRecord) -> dict[str, go.Figure]:
    """The figures :data:`FIGURE_RULES` shows for ``data``, by id, in reading order."""
    return {key: draw(data) for key, when, draw in FIGURE_RULES if when(data)}


def study_figures(data: StudyRecord) -> dict[str, go.Figure]:
    """The outer study's figures by stable id (optuna-dashboard ``graph_object_id``)."""
    return {f"sigmatune-{key}": fig for key, fig in shown_figures(data).items()}
