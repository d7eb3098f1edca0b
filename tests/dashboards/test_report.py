"""dashboards.report: one self-contained HTML file, opened in headless Chromium.

Chromium comes from the Debian package (``apt-get install -y chromium``, done by ``.ci/run``)
and is driven by Playwright with ``executable_path``; Playwright downloads no browser.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from plotly.offline import get_plotlyjs

from sigmatune.dashboards.report import render_report
from sigmatune.study.records import read_study

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        pytest.fail(
            "Chromium is not installed; this test needs it: apt-get install -y chromium "
            "(the Debian package; .ci/run installs it)",
            pytrace=False,
        )
    return path


def _local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("file", "data", "about", "blob"):
        return True
    return parsed.scheme in ("http", "https", "ws") and parsed.hostname == "127.0.0.1"


@pytest.fixture
def report(synthetic_study, tmp_path) -> Path:
    from sigmatune.study.commands.report import export_report

    return export_report(synthetic_study.url, None, tmp_path / "report.html")


def test_report_is_one_file_with_plotly_inlined_once(report):
    text = report.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()[:400]) == 1
    assert "<script src" not in text and "<link" not in text and "@import" not in text
    assert text.count('class="plotly-graph-div"') == 5
    for section in ("Best configuration", "Trials", "Exported schedules (best trial)"):
        assert section in text
    assert "eps min_snr(5) cosine(1)" in text  # the best trial's training weighting
    assert "held-out seed sets" in text and "Floor (real vs real) 0.004" in text


def test_report_lists_each_schedule_sigma(synthetic_study):
    data = read_study(synthetic_study.storage, synthetic_study.name)
    text = render_report(data)
    for nfe, record in data.best.inner.items():
        for s in record.tuned.sigmas:
            assert f"<td class=num>{s:.6g}</td>" in text, (nfe, s)


def test_report_renders_in_headless_chromium_without_network(report):
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a dev dependency
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)

    errors: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()

            def route(r):
                if _local(r.request.url):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "requestfailed",
                lambda r: None if not _local(r.url) else errors.append(f"request failed: {r.url}"),
            )
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".every(d => d._fullLayout !== undefined)",
                timeout=30_000,
            )
            figures = page.evaluate(
                """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
                    id: d.id,
                    traces: (d.data || []).length,
                    points: (d.data || []).reduce((n, t) => n + ((t.x || []).length), 0),
                    drawn: d.querySelectorAll('.main-svg .scatterlayer .trace').length,
                }))"""
            )
            title = page.title()
        finally:
            browser.close()
    assert outside == [], f"requests left the machine: {outside}"
    assert errors == []
    assert title == "sigmatune report: synth"
    assert [f["id"] for f in figures] == [
        "figure-headline",
        "figure-overview",
        "figure-densities",
        "figure-steps",
        "figure-fid-nfe",
    ]
    for f in figures:
        assert f["traces"] > 0 and f["points"] > 0 and f["drawn"] > 0, f
