"""One self-contained HTML report of a study: figures, best configuration, results, schedules.

The file needs no network: plotly.js is inlined once, every figure is a ``div`` drawn by it,
and nothing else is loaded (no fonts, no CDN, no images). ``sigmatune report STUDY -o
report.html`` writes it (``study.commands.report.export_report``, which adds the best trial's
export).
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from sigmatune.dashboards.figures import SCHEDULE_LABELS, shown_figures, trial_title
from sigmatune.study.records import (
    REPORT_MARK,
    StudyRecord,
    fid_text,
    floor_text,
    held_out_line,
)

# The first line of every report: how `sigmatune report` recognises a file it may replace.
GENERATOR_MARK = REPORT_MARK

PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "svg"},
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.25rem;
border-bottom: 1px solid #ddd; padding-bottom: .2rem; } h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .88rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fdecea; } .muted { color: #666; } .figure { margin: 1rem 0 2rem; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .8rem; max-height: 32rem; }
code { background: #f4f4f4; padding: 0 .2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _sig(value: float) -> str:
    return f"{value:.6g}"


def _figure_div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


# The report reads the overview before the densities (the dashboard shows them the other way)
REPORT_ORDER = ("headline", "capacity", "overview", "densities", "steps", "fid-nfe", "pareto")


def report_figures(data: StudyRecord) -> dict[str, go.Figure]:
    """The report's figures, in its reading order: the dashboard's figures, shown by the same
    rules (``dashboards.figures.FIGURE_RULES``)."""
    shown = shown_figures(data)
    return {key: shown[key] for key in sorted(shown, key=REPORT_ORDER.index)}


def _family(d: dict[str, Any] | None) -> str:
    return "none" if not d else f"{d['name']} {json.dumps(d.get('params') or {})}"


def _best_section(data: StudyRecord) -> str:
    best, primary = data.best, data.primary_nfe
    if best is None:
        return "<p>No trial has completed yet.</p>"
    desc = best.objective or {}
    rows = [("trial", trial_title(best))]
    if desc:
        rows += [
            ("parameterisation", desc.get("parameterisation")),
            ("noise-level density p(σ)", _family(desc.get("density"))),
            ("loss weighting w(σ)", _family(desc.get("weighting"))),
            ("adaptive", _family(desc.get("adaptive"))),
            (
                "σ range, σ_data",
                f"[{desc.get('sigma_min', '?')}, {desc.get('sigma_max', '?')}], "
                f"{desc.get('sigma_data', '?')}",
            ),
        ]
    elif data.source:
        rows.append(("model", data.source))
    rows.append((f"held-out FID at NFE {primary}", fid_text(best.value)))
    out = ["<table>"] + [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    out.append(
        "<table><tr><th>NFE</th><th>sampler</th><th>settings</th>"
        "<th>held-out FIDs: tuned, fair baselines, floor; gain split</th>"
        "<th>search minimum (search seeds)</th></tr>"
    )
    for k in sorted(best.inner):
        r = best.inner[k]
        tuned = r.tuned
        out.append(
            f"<tr><td class=num>{k}</td><td>{_e(tuned.sampler)}</td>"
            f"<td>{_e(json.dumps(tuned.sampler_kwargs) if tuned.sampler_kwargs else '–')}</td>"
            f"<td>{_e(held_out_line(r))}</td><td class=num>{fid_text(r.search_fid)}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _results_table(data: StudyRecord) -> str:
    budgets = data.nfe_budgets
    best = data.best
    out = [
        "<table><tr><th>trial</th><th>state</th><th>training weighting</th>"
        + "".join(f"<th>NFE {k}: tuned (karras ρ=7), held-out</th>" for k in budgets)
        + "<th>note</th></tr>"
    ]
    for t in data.trials:
        cls = ' class="best"' if best is not None and t.number == best.number else ""
        notes = [n for n in (t.name, t.reason, t.note) if n]
        if t.retry_of is not None:
            notes.append(f"retry of {t.retry_of}")
        cells = []
        for k in budgets:
            r = t.inner.get(k)
            h = r.held_out if r is not None else None
            cells.append(
                f"<td class=num>{fid_text(h.mean('tuned'))} ({fid_text(h.mean('karras_rho7'))})"
                "</td>"
                if h is not None
                else "<td>–</td>"
            )
        out.append(
            f"<tr{cls}><td class=num>{t.number}</td><td>{_e(t.state)}</td>"
            f"<td>{_e(t.label if t.objective else 'given model')}</td>{''.join(cells)}"
            f"<td>{_e('; '.join(notes))}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def same_objective_groups(data: StudyRecord) -> list[list[int]]:
    """Trials whose effective weightings W(λ) agree (``objectives.loss.
    same_effective_weighting``): the same objective up to gradient variance, grouped."""
    from sigmatune.objectives.loss import same_effective_weighting

    groups: list[list[Any]] = []
    for t in data.trials:
        if not t.objective:
            continue
        for g in groups:
            if same_effective_weighting(g[0].objective, t.objective):
                g.append(t)
                break
        else:
            groups.append([t])
    return [[t.number for t in g] for g in groups if len(g) > 1]


def _groups_section(data: StudyRecord) -> str:
    groups = same_objective_groups(data)
    if not groups:
        return ""
    items = "".join(
        "<li>" + _e(", ".join(trial_title(data.trial(n)) for n in g)) + "</li>" for g in groups
    )
    return (
        "<h3>Trials with the same effective weighting</h3><p>Their W(λ) agree: the same "
        "objective up to gradient variance (Kingma & Gao 2023); differences between them are "
        f"noise of training, not of the weighting.</p><ul>{items}</ul>"
    )


def _schedules_section(data: StudyRecord) -> str:
    best = data.best
    if best is None:
        return "<p>No schedules yet.</p>"
    out = []
    for k in sorted(best.inner):
        r = best.inner[k]
        by_name = r.schedules
        names = list(by_name)
        tuned = by_name["tuned"]
        out.append(f"<h3>{_e(f'NFE {k} — tuned: {tuned.sampler}; {held_out_line(r)}')}</h3>")
        out.append(
            "<table><tr><th>step</th>"
            + "".join(
                f"<th>{_e(SCHEDULE_LABELS.get(n, n))} σ ({_e(by_name[n].sampler)})</th>"
                for n in names
            )
            + "<th>tuned λ</th></tr>"
        )
        rows = max(len(by_name[n].sigmas) for n in names)
        for i in range(rows):
            cells = []
            for n in names:
                s = by_name[n].sigmas
                cells.append(f"<td class=num>{_sig(s[i])}</td>" if i < len(s) else "<td></td>")
            lam = ""
            if i < len(tuned.sigmas) and tuned.sigmas[i] > 0:
                lam = f"{-2 * math.log(tuned.sigmas[i]):.4f}"
            out.append(f"<tr><td class=num>{i}</td>{''.join(cells)}<td class=num>{lam}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def render_report(data: StudyRecord, *, export: dict[str, Any] | None = None) -> str:
    """The report's HTML text (plotly.js inlined once). The stored storage URL is shown
    without its password."""
    cfg = data.config
    figures = report_figures(data)
    floor = ""
    if data.floors:
        line = floor_text(data.floors, data.seeds.num_images)
        floor = (
            f" {line[:1].upper()}{line[1:]}; noise vs real "
            f"{fid_text(data.floors['ceiling'])} (pure noise scored against the data: a "
            "reference point, not an upper bound)."
        )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head>{GENERATOR_MARK}<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sigmatune report: {_e(data.name)}</title>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>sigmatune study <code>{_e(data.name)}</code></h1>",
        f'<p class="muted">data set <code>{_e(cfg.dataset)}</code> · '
        f"{len(data.trials)} trial(s), {len(data.complete)} complete · NFE budgets "
        f"{_e(data.nfe_budgets)} (primary first) · FID: <code>"
        f"{_e(cfg.inner.fid_extractor)}</code> features of {data.seeds.num_images} images"
        f"{_e(data.seeds.search_note)}; "
        f"every FID below is re-scored on {data.seeds.held_out_sets} held-out seed sets "
        f"(mean ± spread).{_e(floor)}</p>",
        "<p>The outer study tunes the training weighting (parameterisation, loss weight w(σ), "
        "noise-level density p(σ)); each outer trial trains a model whose sampling step "
        "locations are tuned by inner studies, one per NFE budget, and compared with karras "
        "ρ=7 on the full σ range and with karras ρ=7 and loglinear on the tuned schedule's own "
        "σ range, on the same model and held-out seeds: the gain splits into what the σ range "
        "and what the step placement did.</p>",
        "<h2>Best configuration</h2>",
        _best_section(data),
        "<h2>Figures</h2>",
    ]
    for key, fig in figures.items():
        parts.append(f'<div class="figure">{_figure_div(fig, f"figure-{key}")}</div>')
    parts += [
        "<h2>Trials</h2>",
        _results_table(data),
        _groups_section(data),
        "<h2>Exported schedules (best trial)</h2>",
        "<p>σ's in k-diffusion's convention (descending, ending in 0): usable as "
        "<code>sigmas</code> in <code>K.sampling.sample_heun(model, x, sigmas)</code> and "
        "<code>EulerDiscreteScheduler.set_timesteps(sigmas=...)</code> (the whole list, the "
        "final 0 included).</p>",
        _schedules_section(data),
    ]
    if export is not None:
        text = json.dumps(export, indent=2, allow_nan=False)
        parts.append(
            "<details><summary>The JSON export (<code>sigmatune export "
            "--format json</code>)</summary>"
            f"<pre>{_e(text)}</pre></details>"
        )
    parts.append(
        "<details><summary>Configuration</summary>"
        f"<pre>{_e(json.dumps(data.display_config(), indent=2, default=str))}</pre></details>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
