"""One self-contained HTML report of a study: figures, best configuration, results, schedules.

The file needs no network: plotly.js is inlined once, every figure is a ``div`` drawn by it,
and nothing else is loaded (no fonts, no CDN, no images). ``sigmatune report STUDY -o
report.html`` writes it (``study.export.export_report``, which adds the best trial's export).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from sigmatune.dashboards.figures import (
    BASELINE_LABELS,
    BASELINES,
    StudyData,
    figure_densities,
    figure_fid_vs_nfe,
    figure_headline,
    figure_overview,
    figure_steps,
    objective_label,
)

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


def _fid(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _sig(value: float) -> str:
    return f"{value:.6g}"


def _figure_div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


def report_figures(data: StudyData) -> dict[str, go.Figure]:
    """The report's figures, in reading order."""
    figures: dict[str, go.Figure] = {}
    if any(t.objective for t in data.trials):
        figures["headline"] = figure_headline(data)
    if data.complete:
        figures["overview"] = figure_overview(data)
    if any(t.objective for t in data.trials):
        figures["densities"] = figure_densities(data)
    if data.best is not None:
        figures["steps"] = figure_steps(data)
        figures["fid-nfe"] = figure_fid_vs_nfe(data)
    return figures


def _best_section(data: StudyData) -> str:
    best, primary = data.best, data.primary_nfe
    if best is None:
        return "<p>No outer trial has completed yet.</p>"
    desc = best.objective or {}
    rows = [
        ("trial", f"{best.number}" + (" (EDM defaults)" if best.baseline == "edm" else "")),
        ("training weighting", objective_label(desc)),
        ("parameterisation", desc.get("parameterisation")),
        (
            "noise-level density p(σ)",
            f"{desc['density']['name']} {json.dumps(desc['density'].get('params') or {})}"
            if desc
            else "–",
        ),
        (
            "loss weighting w(σ)",
            f"{desc['weighting']['name']} {json.dumps(desc['weighting'].get('params') or {})}"
            if desc
            else "–",
        ),
        (
            "adaptive",
            f"{desc['adaptive']['name']} {json.dumps(desc['adaptive'].get('params') or {})}"
            if desc.get("adaptive")
            else "none",
        ),
        (
            "σ range, σ_data",
            f"[{desc.get('sigma_min', '?')}, {desc.get('sigma_max', '?')}], "
            f"{desc.get('sigma_data', '?')}",
        ),
        (f"FID at NFE {primary}", _fid(best.value)),
    ]
    out = ["<table>"] + [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    out.append(
        "<table><tr><th>NFE</th><th>sampler</th><th>settings</th><th>tuned FID</th>"
        + "".join(f"<th>{_e(BASELINE_LABELS[n])} FID</th>" for n in BASELINES)
        + "<th>ratio to karras ρ=7</th></tr>"
    )
    for k in sorted(best.schedules):
        tuned = best.schedules[k].get("tuned")
        if tuned is None:
            continue
        base = best.baseline_fid.get(k, {})
        karras = base.get("karras_rho7")
        ratio = f"×{tuned.fid / karras:.3f}" if karras and tuned.fid is not None else "–"
        out.append(
            f"<tr><td class=num>{k}</td><td>{_e(tuned.sampler)}</td>"
            f"<td>{_e(json.dumps(tuned.sampler_kwargs) if tuned.sampler_kwargs else '–')}</td>"
            f"<td class=num>{_fid(tuned.fid)}</td>"
            + "".join(f"<td class=num>{_fid(base.get(n))}</td>" for n in BASELINES)
            + f"<td class=num>{ratio}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _results_table(data: StudyData) -> str:
    budgets = data.nfe_budgets
    best = data.best
    out = [
        "<table><tr><th>trial</th><th>state</th><th>training weighting</th>"
        + "".join(f"<th>NFE {k}: tuned (karras ρ=7)</th>" for k in budgets)
        + "<th>note</th></tr>"
    ]
    for t in data.trials:
        cls = ' class="best"' if best is not None and t.number == best.number else ""
        notes = []
        if t.baseline == "edm":
            notes.append("EDM defaults")
        if t.original_trial != t.number:
            notes.append(f"retry of {t.original_trial}")
        if t.fail_reason:
            notes.append(t.fail_reason)
        cells = "".join(
            f"<td class=num>{_fid(t.best_fid.get(k))} "
            f"({_fid(t.baseline_fid.get(k, {}).get('karras_rho7'))})</td>"
            if k in t.best_fid
            else "<td>–</td>"
            for k in budgets
        )
        out.append(
            f"<tr{cls}><td class=num>{t.number}</td><td>{_e(t.state)}</td>"
            f"<td>{_e(objective_label(t.objective))}</td>{cells}"
            f"<td>{_e('; '.join(notes))}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _schedules_section(data: StudyData) -> str:
    best = data.best
    if best is None:
        return "<p>No schedules yet.</p>"
    out = []
    for k in sorted(best.schedules):
        by_name = best.schedules[k]
        names = [n for n in ("tuned", *BASELINES) if n in by_name]
        if not names:
            continue
        tuned = by_name.get("tuned")
        head = f"NFE {k}" + (f" — tuned: {tuned.sampler}, FID {_fid(tuned.fid)}" if tuned else "")
        out.append(f"<h3>{_e(head)}</h3>")
        out.append(
            "<table><tr><th>step</th>"
            + "".join(
                f"<th>{_e('tuned' if n == 'tuned' else BASELINE_LABELS[n])} σ "
                f"({_e(by_name[n].sampler)})</th>"
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
            if tuned is not None and i < len(tuned.sigmas) and tuned.sigmas[i] > 0:
                lam = f"{-2 * math.log(tuned.sigmas[i]):.4f}"
            out.append(f"<tr><td class=num>{i}</td>{''.join(cells)}<td class=num>{lam}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def render_report(data: StudyData, *, export: dict[str, Any] | None = None) -> str:
    """The report's HTML text (plotly.js inlined once)."""
    cfg = data.config
    inner = cfg.get("inner") or {}
    figures = report_figures(data)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sigmatune report: {_e(data.name)}</title>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>sigmatune study <code>{_e(data.name)}</code></h1>",
        f'<p class="muted">data set <code>{_e(cfg.get("dataset", "?"))}</code> · '
        f"{len(data.trials)} outer trial(s), {len(data.complete)} complete · NFE budgets "
        f"{_e(data.nfe_budgets)} (primary first) · FID: <code>"
        f"{_e(inner.get('fid_extractor', '?'))}</code> features of "
        f"{_e(inner.get('fid_num_images', '?'))} images with fixed seeds.</p>",
        "<p>The outer study tunes the training weighting (parameterisation, loss weight w(σ), "
        "noise-level density p(σ)); each outer trial trains a model whose sampling step "
        "locations are tuned by inner studies, one per NFE budget, against karras ρ=7 and "
        "loglinear steps on the same model, seeds and images.</p>",
        "<h2>Best configuration</h2>",
        _best_section(data),
        "<h2>Figures</h2>",
    ]
    for key, fig in figures.items():
        parts.append(f'<div class="figure">{_figure_div(fig, f"figure-{key}")}</div>')
    parts += [
        "<h2>Outer trials</h2>",
        _results_table(data),
        "<h2>Exported schedules (best trial)</h2>",
        "<p>σ's in k-diffusion's convention (descending, ending in 0): usable as "
        "<code>sigmas</code> in <code>K.sampling.sample_heun(model, x, sigmas)</code> and "
        "<code>EulerDiscreteScheduler.set_timesteps(sigmas=...)</code>.</p>",
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
        f"<pre>{_e(json.dumps(cfg, indent=2, default=str))}</pre></details>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    data: StudyData, output: str | Path, *, export: dict[str, Any] | None = None
) -> Path:
    """Write :func:`render_report` to ``output``; returns the path."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data, export=export), encoding="utf-8")
    return path
