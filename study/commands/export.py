"""``sigmatune export``: a trial's training weighting and tuned step schedules, for other tools.

``sigmatune export STUDY --format json|csv|k-diffusion|diffusers``: the formats are
:mod:`sigmatune.study.formats`; this command reads the study, chooses the trial and writes.
:func:`attach_export` is what a finished ``run`` does with the best trial's export.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

import optuna

from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records
from sigmatune.study.formats import (
    FORMATS,
    ExportResult,
    check_output,
    choose_trial,
    dumps,
    export_document,
    file_stem,
    render,
    to_csv,
    write_text_atomic,
)
from sigmatune.study.storage import read_stored_study


def export(
    storage_url: str,
    study_name: str | None = None,
    *,
    trial: int | None = None,
    nfe: int | None = None,
    fmt: str = "json",
    output: str | Path | None = None,
) -> ExportResult:
    """``sigmatune export``: the best (or ``trial``'s) weighting and schedules in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if output and fmt != "k-diffusion":  # refused before the storage is opened
        check_output(output, "export", "export.csv" if fmt == "csv" else "export.json")
    study = read_stored_study(storage_url, study_name)
    # json and csv hold the one budget asked for; the others every tuned budget (and one
    # from the step density when --nfe names a budget that was not tuned)
    tuned = nfe is not None and nfe in choose_trial(study, trial).inner
    doc = export_document(study, trial, None if fmt not in ("json", "csv") and tuned else nfe)
    return render(doc, fmt, nfe=nfe, output=output)


def attach_export(
    storage: optuna.storages.BaseStorage,
    artifact_store: Any,
    study_name: str,
    directory: str | Path,
    *,
    trial: int | None = None,
) -> dict[str, Any] | None:
    """Attach the export (JSON and CSV) of the best outer trial (or ``trial``) to that trial as
    artifacts, replacing a previous attachment of the study. Returns the record stored in the
    outer study's user attr ``records.EXPORT`` (None when no trial is complete)."""
    study = records.read_study(storage, study_name)
    if trial is None and study.best is None:
        return None
    doc = export_document(study, trial)
    chosen = study.trial(int(doc["trial"]))
    previous = study.export
    if previous:
        for artifact_id in (previous.get("artifacts") or {}).values():
            adapter.register_trial_artifact(
                storage, study.study_id, previous.get("trial_id"), artifact_id, filename=None
            )
            try:
                artifact_store.remove(artifact_id)
            except Exception:  # already gone
                pass
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)  # the run's own artifact folder
    stem = f"{file_stem(study.name, chosen.number)}-export"
    files = {
        "json": (directory / f"{stem}.json", dumps(doc), "application/json"),
        "csv": (directory / f"{stem}.csv", to_csv(doc), "text/csv"),
    }
    artifacts: dict[str, str] = {}
    for fmt, (path, text, mimetype) in files.items():
        write_text_atomic(path, text)
        artifact_id = str(uuid.uuid4())
        with open(path, "rb") as f:
            artifact_store.write(artifact_id, f)
        adapter.register_trial_artifact(
            storage,
            study.study_id,
            chosen.trial_id,
            artifact_id,
            filename=path.name,
            mimetype=mimetype,
        )
        artifacts[fmt] = artifact_id
    record = {
        "trial": chosen.number,
        "trial_id": chosen.trial_id,
        "artifacts": artifacts,
        "files": {fmt: v[0].name for fmt, v in files.items()},
        "paths": {fmt: str(v[0]) for fmt, v in files.items()},
    }
    records.write_export(storage, study.study_id, record)
    return record


def main(args: argparse.Namespace) -> int:
    """``sigmatune export``."""

    result = export(
        args.storage,
        args.study or args.study_name,
        trial=args.trial,
        nfe=args.nfe,
        fmt=args.format,
        output=args.output,
    )
    if result.text:
        sys.stdout.write(result.text)
    for path in result.paths:
        print(f"sigmatune: wrote {path}", file=sys.stderr)
    if result.message:
        print(result.message)
    return 0
