"""``sigmatune status``: the outer trials of a study and their held-out figures.

As a table for people (:func:`format_status`) or a JSON list for scripts
(:func:`status_json`: one object per trial with ``number``, ``state``, ``name``, ``label``,
``params``, ``held_out`` (per NFE, as in the export), ``reason`` and ``confirmed``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from datetime import datetime
from typing import Any

from sigmatune.study import records
from sigmatune.study.records import StudyRecord, TrialRecord
from sigmatune.study.storage import read_stored_study

LABEL_WIDTH = 40


def read_status(storage_url: str, study_name: str | None = None) -> StudyRecord:
    """The study a ``status`` command shows (the only one, or ``study_name``)."""
    return read_stored_study(storage_url, study_name)


def trial_json(study: StudyRecord, t: TrialRecord) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state,
        "name": t.name,
        "label": t.label if t.objective else ("given model" if study.kind == "sampling" else None),
        "params": t.params,
        "held_out": {
            str(k): (r.held_out.export() if r.held_out is not None else None)
            for k, r in sorted(t.inner.items())
        },
        # where each budget's tuned schedule came from: "search" or a starting point's name
        "tuned_origin": {str(k): r.origin for k, r in sorted(t.inner.items())},
        "reason": t.reason,
        # `sigmatune confirm`: the mean and spread over the trial's models, or None
        "confirmed": records.confirmed_figure(study, t),
    }


def status_json(study: StudyRecord) -> str:
    return json.dumps([trial_json(study, t) for t in study.trials], indent=2) + "\n"


def _running_note(t: TrialRecord, heartbeat_grace_s: float) -> str:
    if t.state != "RUNNING" or t.running_since is None:
        return ""
    started = datetime.fromisoformat(t.running_since)
    age = (datetime.now() - started).total_seconds()
    return (
        f"running for {age:.0f} s; if its process was killed, its heartbeat goes stale after "
        f"{heartbeat_grace_s:.0f} s and the next `sigmatune run` fails and retries it"
    )


def format_status(study: StudyRecord, *, heartbeat_grace_s: float = 30.0) -> str:
    """A table: one block per outer trial (its label wrapped to the column, never pushing
    the next columns), the held-out figures per NFE below it."""
    lines = [
        f"study {study.name} ({study.kind}): {len(study.trials)} trial(s); FID with the "
        f"{study.config.inner.fid_extractor!r} extractor on {study.seeds.num_images} images"
        f"{study.seeds.search_note}, held-out over {study.seeds.held_out_sets} seed sets",
    ]
    if study.floors:
        fl = study.floors
        lines.append(
            f"{records.floor_text(fl, study.seeds.num_images)}; noise vs real "
            f"{records.fid_text(fl['ceiling'])} (a reference point, not an upper bound)"
        )
    lines.append(f"{'trial':>5}  {'state':<8}  {'training weighting':<{LABEL_WIDTH}}  name")
    for t in study.trials:
        label = t.label if t.objective else ("given model" if study.kind == "sampling" else "?")
        tags = [t.name] if t.name else []
        if t.retry_of is not None:
            tags.append(f"retry of {t.retry_of}")
        wrapped = textwrap.wrap(label, LABEL_WIDTH) or ["?"]
        first = f"{t.number:>5}  {t.state:<8}  {wrapped[0]:<{LABEL_WIDTH}}  {', '.join(tags)}"
        lines.append(first.rstrip())
        lines += [f"{'':>5}  {'':<8}  {w}" for w in wrapped[1:]]
        detail = []
        if t.state == "COMPLETE":
            detail = [f"nfe {k}: {records.held_out_line(r)}" for k, r in sorted(t.inner.items())]
            confirmed = records.confirmed_figure(study, t)
            if confirmed is not None:
                detail.append(
                    f"confirmed at nfe {confirmed['nfe']}: {records.fid_text(confirmed['mean'])}"
                    f" ± {records.fid_text(confirmed['spread'], 2)} over {confirmed['models']} "
                    f"models (training seeds {', '.join(str(s) for s in confirmed['seeds'])})"
                )
        elif t.reason:
            detail = [t.reason]
        running = _running_note(t, heartbeat_grace_s)
        if running:
            detail.append(running)
        if t.note:
            detail.append(t.note)
        lines += [f"{'':>5}    {d}" for d in detail]
    confirmed = {t.number: records.confirmed_figure(study, t) for t in study.complete}
    confirmed = {n: c for n, c in confirmed.items() if c is not None}
    if confirmed:
        best = min(confirmed, key=lambda n: (confirmed[n]["mean"], n))
        name = study.trial(best).name or "proposed"
        lines.append(
            f"best of the {len(confirmed)} confirmed trial(s) (`sigmatune confirm`): trial {best} "
            f"({name}), {records.fid_text(confirmed[best]['mean'])} over its models"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``sigmatune status``."""

    study = read_status(args.storage_option or args.storage, args.study_name)
    sys.stdout.write(status_json(study) if args.format == "json" else format_status(study) + "\n")
    return 0
