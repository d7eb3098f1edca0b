"""``sigmatune report``: one self-contained HTML report of a study."""

from __future__ import annotations

import argparse
from pathlib import Path

from sigmatune.dashboards.report import render_report
from sigmatune.study.formats import check_output, export_document, write_text_atomic
from sigmatune.study.storage import read_stored_study


def check_report_output(output: str | Path) -> Path:
    """A path ``report`` may write (:func:`check_output`: the same rule as ``export``)."""
    return check_output(output, "report", "report.html")


def export_report(storage_url: str, study_name: str | None, output: str | Path) -> Path:
    """``sigmatune report``: the self-contained HTML report with the best trial's export,
    written atomically; refuses to replace a file that is not a report."""

    path = check_report_output(output)
    study = read_stored_study(storage_url, study_name)
    doc = export_document(study) if study.best is not None else None
    return write_text_atomic(path, render_report(study, export=doc))


def main(args: argparse.Namespace) -> int:
    """``sigmatune report``."""

    path = export_report(args.storage, args.study or args.study_name, args.output)
    print(f"sigmatune: wrote {path}")
    return 0
