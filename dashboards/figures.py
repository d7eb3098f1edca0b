"""Plotly figures of a sigmatune study, read from its Optuna storage.

Everything is drawn over logSNR ``lam = -2 ln sigma`` (DESIGN.md). The headline figure puts
the two weightings that a noise schedule used to entangle on one lam axis: the *training*
weighting of each outer trial, as the effective weight per unit lam (Kingma & Gao 2023, eq. 9
convention; ``objectives.loss.DiffusionObjective.effective_weighting``)

    W(lam) = p_lam(lam) * w(sigma) * sigma^2 / c_out(sigma)^2,

normalised to unit area over the run's ``[lam_min, lam_max]``, and the *sampling* spacing of the
tuned step locations, as a step density: ``n`` positive sigmas at ``lam_0 < ... < lam_{n-1}``
put mass ``1/(n-1)`` on each interval, i.e. ``1 / ((n-1) (lam_{i+1} - lam_i))`` per unit lam
(uniform for ``loglinear``).

The data layer (:func:`load_study_data`) reads the outer study ``NAME`` and its inner studies
``NAME/trial-NNNN/nfe-K`` through Optuna alone (schema ``"sigmatune:schema" = 1``); the figure
functions take that plain data. Figures carry plain lists (no numpy arrays), so their JSON is
readable by any plotly.js, optuna-dashboard's included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from sigmatune.models.schedules import validate
from sigmatune.objectives.densities import make_density
from sigmatune.objectives.loss import objective_from_description
from sigmatune.objectives.weightings import make_weighting

SCHEMA = 1
BASELINES = ("karras_rho7", "loglinear")
BASELINE_LABELS = {"karras_rho7": "karras ρ=7", "loglinear": "loglinear"}
LAM_POINTS = 161

BEST_COLOR = "#d62728"
EDM_COLOR = "#1f1f1f"
OTHER_COLOR = "rgba(110, 110, 110, 0.45)"
NFE_COLORS = ("#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SCHEDULE_COLORS = {"tuned": BEST_COLOR, "karras_rho7": "#1f77b4", "loglinear": "#2ca02c"}


# --------------------------------------------------------------------------------------------
# Data read from the storage


@dataclass(frozen=True)
class Schedule:
    """One set of step locations from an inner study: the sigmas, sampler and FID."""

    name: str  # "tuned" for the best trial, else the baseline's name
    nfe: int
    sampler: str
    sampler_kwargs: dict[str, Any]
    sigmas: list[float]  # descending, ending in 0
    fid: float | None
    study_name: str | None = None
    trial_number: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OuterTrial:
    """An outer trial: its training weighting and, per NFE budget, its inner results."""

    number: int
    state: str
    value: float | None
    objective: dict[str, Any] | None  # DiffusionObjective.describe()
    baseline: str | None  # "edm" on the enqueued EDM-defaults trial
    original_trial: int
    inner_studies: dict[int, str]
    best_fid: dict[int, float]
    baseline_fid: dict[int, dict[str, float]]
    model_artifact: str | None
    fail_reason: str
    trial_id: int
    schedules: dict[int, dict[str, Schedule]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"trial {self.number}: {objective_label(self.objective)}"


@dataclass
class StudyData:
    """An outer study with its trials and (optionally) their inner studies' schedules."""

    name: str
    study_id: int
    config: dict[str, Any]
    trials: list[OuterTrial]
    study_ids: dict[str, int]  # study name -> storage id (for links in notes)

    @property
    def complete(self) -> list[OuterTrial]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]

    @property
    def best(self) -> OuterTrial | None:
        done = self.complete
        return min(done, key=lambda t: (t.value, t.number)) if done else None

    @property
    def edm(self) -> OuterTrial | None:
        return next((t for t in self.trials if t.baseline == "edm"), None)

    @property
    def nfe_budgets(self) -> list[int]:
        budgets = (self.config.get("inner") or {}).get("nfe_budgets")
        if budgets:
            return [int(k) for k in budgets]
        found: list[int] = []
        for t in self.trials:
            found.extend(k for k in t.inner_studies if k not in found)
        return found

    @property
    def primary_nfe(self) -> int | None:
        budgets = self.nfe_budgets
        return budgets[0] if budgets else None

    def trial(self, number: int) -> OuterTrial:
        for t in self.trials:
            if t.number == number:
                return t
        raise ValueError(
            f"study {self.name!r} has no trial number={number}; "
            f"valid: {', '.join(str(t.number) for t in self.trials) or 'none'}"
        )

    def sigma_range(self) -> tuple[float, float]:
        """The run's ``(sigma_min, sigma_max)``: from the trials' objectives, or the schedules."""
        lo, hi = math.inf, 0.0
        for t in self.trials:
            if t.objective:
                lo = min(lo, float(t.objective["sigma_min"]))
                hi = max(hi, float(t.objective["sigma_max"]))
        if not hi:
            for t in self.trials:
                for by_name in t.schedules.values():
                    for s in by_name.values():
                        lo, hi = min(lo, s.sigmas[-2]), max(hi, s.sigmas[0])
        if not hi:
            raise ValueError(f"study {self.name!r} has no trial with a training weighting yet")
        return lo, hi


def _int_keys(d: dict[str, Any] | None) -> dict[int, Any]:
    return {int(k): v for k, v in (d or {}).items()}


def load_study_data(
    storage: optuna.storages.BaseStorage | str, study_name: str, *, inner: bool = True
) -> StudyData:
    """Read an outer study, and with ``inner`` the best and baseline schedules of its inner
    studies. Raises ``ValueError`` when ``study_name`` is not a sigmatune outer study."""
    if isinstance(storage, str):
        storage = optuna.storages.get_storage(storage)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        outer = [
            s.study_name
            for s in storage.get_all_studies()
            if s.user_attrs.get("sigmatune:role") == "outer"
        ]
        raise ValueError(
            f"no study named {study_name!r} in this storage; sigmatune studies there: "
            f"{', '.join(outer) or 'none'}"
        ) from None
    attrs = storage.get_study_user_attrs(study_id)
    if attrs.get("sigmatune:role") != "outer":
        raise ValueError(
            f"study {study_name!r} is not a sigmatune outer study "
            f"(its 'sigmatune:role' is {attrs.get('sigmatune:role')!r}, expected 'outer')"
        )
    schema = attrs.get("sigmatune:schema")
    if schema != SCHEMA:
        raise ValueError(
            f"study {study_name!r} has sigmatune:schema={schema!r}; this version reads {SCHEMA}"
        )
    trials = []
    for ft in storage.get_all_trials(study_id, deepcopy=False):
        ua = ft.user_attrs
        trials.append(
            OuterTrial(
                number=ft.number,
                state=ft.state.name,
                value=None if ft.value is None else float(ft.value),
                objective=ua.get("sigmatune:objective"),
                baseline=ua.get("baseline"),
                original_trial=int(ua.get("sigmatune:original_trial", ft.number)),
                inner_studies=_int_keys(ua.get("inner:studies")),
                best_fid={k: float(v) for k, v in _int_keys(ua.get("inner:best_fid")).items()},
                baseline_fid={
                    k: {n: float(f) for n, f in v.items()}
                    for k, v in _int_keys(ua.get("inner:baseline_fid")).items()
                },
                model_artifact=ua.get("sigmatune:model_artifact"),
                fail_reason=str(ua.get("sigmatune:fail_reason", "")),
                trial_id=ft._trial_id,
            )
        )
    data = StudyData(
        name=study_name,
        study_id=study_id,
        config=dict(attrs.get("sigmatune:config") or {}),
        trials=trials,
        study_ids={study_name: study_id},
    )
    if inner:
        for t in trials:
            for nfe, inner_name in t.inner_studies.items():
                try:
                    inner_id = storage.get_study_id_from_name(inner_name)
                except KeyError:
                    continue
                data.study_ids[inner_name] = inner_id
                t.schedules[nfe] = inner_schedules(storage, inner_id, inner_name, nfe)
    return data


def inner_schedules(
    storage: optuna.storages.BaseStorage, study_id: int, study_name: str, nfe: int
) -> dict[str, Schedule]:
    """The best complete trial of an inner study (``"tuned"``) and its baseline trials."""
    out: dict[str, Schedule] = {}
    done = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    for ft in sorted(done, key=lambda t: (t.value, t.number)):
        name = ft.user_attrs.get("baseline")
        keys = [name] if name else []
        if "tuned" not in out:
            keys.append("tuned")
        for key in keys:
            if key not in out and ft.user_attrs.get("sigmas"):
                out[key] = schedule_from_trial(ft, key, nfe, study_name)
    return out


def schedule_from_trial(
    ft: optuna.trial.FrozenTrial, name: str, nfe: int, study_name: str | None = None
) -> Schedule:
    return Schedule(
        name=name,
        nfe=nfe,
        sampler=str(ft.user_attrs.get("sampler", "")),
        sampler_kwargs=dict(ft.user_attrs.get("sampler_kwargs") or {}),
        sigmas=[float(s) for s in ft.user_attrs["sigmas"]],
        fid=None if ft.value is None else float(ft.value),
        study_name=study_name,
        trial_number=ft.number,
        params=dict(ft.params),
    )


# --------------------------------------------------------------------------------------------
# Curves


def objective_label(desc: dict[str, Any] | None) -> str:
    """A short name of a training weighting, e.g. ``edm · unit · lognormal(-1.2, 1.2)``."""
    if not desc:
        return "?"

    def fam(d: dict[str, Any]) -> str:
        vals = []
        for v in (d.get("params") or {}).values():
            if isinstance(v, (list, tuple)):
                vals.append("[" + ", ".join(f"{x:.3g}" for x in v) + "]")
            elif isinstance(v, (int, float)):
                vals.append(f"{v:.3g}")
            elif v is not None:
                vals.append(str(v))
        return f"{d['name']}({', '.join(vals)})" if vals else str(d["name"])

    parts = [str(desc["parameterisation"]), fam(desc["weighting"]), fam(desc["density"])]
    if desc.get("adaptive"):
        parts.append("+" + fam(desc["adaptive"]))
    return " · ".join(parts)


def lam_grid(sigma_min: float, sigma_max: float, points: int = LAM_POINTS) -> torch.Tensor:
    """``points`` logSNR values from ``lam_min = -2 ln sigma_max`` to ``lam_max = -2 ln
    sigma_min`` (float64)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, but got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    return torch.linspace(
        -2 * math.log(sigma_max), -2 * math.log(sigma_min), points, dtype=torch.float64
    )


def weighting_curves(desc: dict[str, Any], lam: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tabulate a training weighting (a ``DiffusionObjective.describe()`` dict) over ``lam``.

    Returns float64 tensors shaped like ``lam``: ``sigma = exp(-lam/2)``; ``p_lam``, the
    noise-level density per unit lam (``p_lam = p_sigma * sigma / 2``); ``w``, the loss weight in
    the parameterisation's own space; ``W``, the effective eps-space weight per unit lam
    (Kingma & Gao 2023) of ``DiffusionObjective.effective_weighting``; ``W_normalised``, ``W``
    divided by its trapezoidal area over ``lam``. An adaptive mechanism enters ``W`` in its
    initial state (its learned state is not part of the description).
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    sigma_min, sigma_max = float(desc["sigma_min"]), float(desc["sigma_max"])
    density = make_density(
        desc["density"]["name"],
        dict(desc["density"].get("params") or {}),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )
    weighting = make_weighting(
        desc["weighting"]["name"],
        dict(desc["weighting"].get("params") or {}),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )
    objective = objective_from_description(desc)
    sigma = torch.exp(-lam / 2)
    with torch.no_grad():
        p_lam = density.log_prob(lam).exp().to(torch.float64)
        w = weighting(sigma).to(torch.float64)
        W = objective.effective_weighting(lam).to(torch.float64)
    area = torch.trapezoid(W, lam)
    W_normalised = W / area if torch.isfinite(area) and area > 0 else torch.full_like(W, math.nan)
    return {
        "lam": lam,
        "sigma": sigma,
        "p_lam": p_lam,
        "w": w,
        "W": W,
        "W_normalised": W_normalised,
    }


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


def _style(trial: OuterTrial, best: OuterTrial | None) -> tuple[dict[str, Any], str | None, bool]:
    """Line style, legend group and legend flag for an outer trial's curve."""
    if best is not None and trial.number == best.number:
        return {"color": BEST_COLOR, "width": 3.5}, None, True
    if trial.baseline == "edm":
        return {"color": EDM_COLOR, "width": 2, "dash": "dash"}, None, True
    return {"color": OTHER_COLOR, "width": 1.2}, "others", False


def _trial_name(trial: OuterTrial, best: OuterTrial | None) -> str:
    if best is not None and trial.number == best.number:
        edm = "EDM defaults · " if trial.baseline == "edm" else ""
        return f"best · {edm}{trial.label}"
    if trial.baseline == "edm":
        return f"EDM defaults · {trial.label}"
    return trial.label


def _weighted_trials(data: StudyData) -> list[OuterTrial]:
    """Trials with a training weighting, others first so that best and EDM are drawn on top."""
    trials = [t for t in data.trials if t.objective]
    best, edm = data.best, data.edm
    rank = {id(best): 2, id(edm): 1}
    return sorted(trials, key=lambda t: (rank.get(id(t), 0), t.number))


# --------------------------------------------------------------------------------------------
# Figures


def _lambda_panels(data: StudyData, points: int, top: str, bottom: str) -> tuple[go.Figure, Any]:
    """Two panels stacked on one λ axis over the run's σ range, and that λ grid."""
    sigma_min, sigma_max = data.sigma_range()
    lam = lam_grid(sigma_min, sigma_max, points)
    fig = make_subplots(
        figure=_new_figure(),
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(top, bottom),
    )
    return fig, lam


def figure_headline(data: StudyData, *, points: int = LAM_POINTS) -> go.Figure:
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
        curves = weighting_curves(t.objective, lam)
        line, group, show = _style(t, best)
        name = _trial_name(t, best)
        if group == "others":
            show, others_shown = not others_shown, True
            name = "other trials" if show else name
        fig.add_trace(
            go.Scatter(
                x=_r(lam),
                y=_r(curves["W_normalised"]),
                mode="lines",
                line=line,
                name=name,
                legendgroup=group,
                showlegend=show,
                hovertemplate=f"{t.label}<br>λ=%{{x:.3g}}<br>W=%{{y:.3g}}<extra></extra>",
            ),
            row=1,
            col=1,
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
        for i, nfe in enumerate(sorted(best.schedules)):
            sched = best.schedules[nfe].get("tuned")
            if sched is None:
                continue
            color = NFE_COLORS[i % len(NFE_COLORS)]
            xs, ys = step_density(sched.sigmas)
            label = f"NFE {nfe}: {sched.sampler}, FID {sched.fid:.4g}"
            if xs:
                fig.add_trace(
                    go.Scatter(
                        x=_r(xs),
                        y=_r(ys),
                        mode="lines",
                        line_shape="hv",
                        line={"color": color, "width": 2.5},
                        name=label,
                        legendgroup=f"nfe{nfe}",
                    ),
                    row=2,
                    col=1,
                )
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
                    showlegend=not xs,
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


def figure_densities(data: StudyData, *, points: int = LAM_POINTS) -> go.Figure:
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
                    hovertemplate=f"{t.label}<br>λ=%{{x:.3g}}<br>{key}=%{{y:.3g}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="λ = −2 ln σ", row=2, col=1)
    fig.update_yaxes(title_text="p(λ)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="w(σ)", type="log", row=2, col=1)
    return _layout(fig, f"{data.name}: p(λ) and w(σ) per outer trial", height=640)


def _schedule_rows(schedules: dict[int, dict[str, Schedule]]) -> list[tuple[str, Schedule]]:
    rows = []
    for nfe in sorted(schedules):
        by_name = schedules[nfe]
        for name in ("tuned", *BASELINES):
            if name in by_name:
                rows.append((f"NFE {nfe} · {BASELINE_LABELS.get(name, name)}", by_name[name]))
    return rows


def _steps_trace(label: str, sched: Schedule, color: str) -> go.Scatter:
    lams = step_lams(sched.sigmas)
    fid = "?" if sched.fid is None else f"{sched.fid:.4g}"
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
            f"{label}<br>{sched.sampler}, FID {fid}<br>"
            "λ=%{x:.4g}, σ=%{customdata:.4g}<extra></extra>"
        ),
    )


def figure_steps(data: StudyData, trial: OuterTrial | None = None) -> go.Figure:
    """Step locations (positive sigmas, over lam) of a trial's tuned schedule per NFE against
    ``karras`` rho = 7 and ``loglinear`` on the same model. Default: the best trial."""
    trial = trial or data.best
    fig = _new_figure()
    if trial is not None:
        for label, sched in reversed(_schedule_rows(trial.schedules)):
            fig.add_trace(_steps_trace(label, sched, SCHEDULE_COLORS.get(sched.name, "#555")))
    name = "no complete trial" if trial is None else f"trial {trial.number}"
    fig.update_xaxes(title_text="λ = −2 ln σ  (the final σ = 0 is not drawn)")
    fig.update_yaxes(type="category", automargin=True)
    return _layout(
        fig,
        f"{data.name}: step locations of {name} against the baselines",
        height=max(320, 60 + 40 * len(fig.data)),
    )


def figure_fid_vs_nfe(data: StudyData, trial: OuterTrial | None = None) -> go.Figure:
    """FID against NFE: the tuned schedules of a trial (default: the best) against the
    baselines on the same model, seeds and images."""
    trial = trial or data.best
    fig = _new_figure()
    if trial is not None:
        nfes = sorted(trial.best_fid)
        fig.add_trace(
            go.Scatter(
                x=nfes,
                y=_r([trial.best_fid[k] for k in nfes]),
                mode="lines+markers",
                name="tuned",
                line={"color": BEST_COLOR, "width": 3},
                marker={"size": 10},
            )
        )
        for name in BASELINES:
            ks = [k for k in nfes if name in trial.baseline_fid.get(k, {})]
            if ks:
                fig.add_trace(
                    go.Scatter(
                        x=ks,
                        y=_r([trial.baseline_fid[k][name] for k in ks]),
                        mode="lines+markers",
                        name=BASELINE_LABELS[name],
                        line={"color": SCHEDULE_COLORS[name], "dash": "dash"},
                    )
                )
    nfes = sorted(trial.best_fid) if trial is not None else []
    fig.update_xaxes(title_text="NFE (denoiser evaluations)", tickmode="array", tickvals=nfes)
    fig.update_yaxes(title_text="FID", type="log")
    name = "no complete trial" if trial is None else f"trial {trial.number}"
    return _layout(fig, f"{data.name}: FID against NFE ({name})", height=440)


def figure_overview(data: StudyData) -> go.Figure:
    """The bilevel overview: each outer trial's best inner FID (tuned step locations) against
    the FID of ``karras`` rho = 7 on the same model, at the primary NFE. Below the diagonal, tuning
    the steps helped."""
    nfe = data.primary_nfe
    fig = _new_figure()
    points = []
    for t in data.complete:
        base = t.baseline_fid.get(nfe, {}).get("karras_rho7") if nfe is not None else None
        tuned = t.best_fid.get(nfe) if nfe is not None else None
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
                customdata=[p[0].label for p in pts],
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
    fig.update_xaxes(title_text=f"FID with karras ρ=7 steps (NFE {nfe})", type="log")
    fig.update_yaxes(title_text=f"FID with tuned steps (NFE {nfe})", type="log")
    return _layout(
        fig, f"{data.name}: tuned step locations against karras ρ=7, per outer trial", height=520
    )


def figure_inner_trials(
    trials: Sequence[optuna.trial.FrozenTrial], *, title: str, max_rows: int = 30
) -> go.Figure:
    """An inner study's complete trials as rows of step locations, sorted by FID (best on top,
    baselines labelled), at most ``max_rows`` of them plus the baselines."""
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("sigmas")),
        key=lambda t: (t.value, t.number),
    )
    shown = done[:max_rows] + [t for t in done[max_rows:] if t.user_attrs.get("baseline")]
    fig = _new_figure()
    for rank, ft in reversed(list(enumerate(shown))):
        base = ft.user_attrs.get("baseline")
        name = "tuned" if rank == 0 and not base else (base or "trial")
        label = f"#{ft.number} FID {ft.value:.4g}" + (
            f" · {BASELINE_LABELS.get(base, base)}" if base else ""
        )
        sched = schedule_from_trial(ft, name, 0)
        color = SCHEDULE_COLORS.get(name, "rgba(110, 110, 110, 0.7)")
        fig.add_trace(_steps_trace(label, sched, color))
    fig.update_xaxes(title_text="λ = −2 ln σ  (the final σ = 0 is not drawn)")
    fig.update_yaxes(type="category", automargin=True)
    return _layout(fig, title, height=max(320, 60 + 28 * len(fig.data)))


def study_figures(data: StudyData) -> dict[str, go.Figure]:
    """The outer study's figures by stable id (optuna-dashboard ``graph_object_id``); those
    that need a training weighting or a complete trial are left out until there is one."""
    figures: dict[str, go.Figure] = {}
    if any(t.objective for t in data.trials):
        figures["sigmatune-headline"] = figure_headline(data)
        figures["sigmatune-densities"] = figure_densities(data)
    if data.complete:
        figures["sigmatune-overview"] = figure_overview(data)
    if data.best is not None:
        figures["sigmatune-steps"] = figure_steps(data)
        figures["sigmatune-fid-nfe"] = figure_fid_vs_nfe(data)
    return figures
