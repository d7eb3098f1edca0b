"""What a ``run`` does besides the study: the command layer's hooks for the engine's runner.

After each outer trial the figures and notes for optuna-dashboard (:func:`publish_figures`),
and when the study is finished the best trial's export attached to it
(:func:`attach_best_export`). :func:`run_study` is :func:`sigmatune.study.run.run` with both:
what ``sigmatune run`` and each of its workers call.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sigmatune.dashboards.publish import publish_after_trial
from sigmatune.study import records
from sigmatune.study.commands.export import attach_export
from sigmatune.study.config import Config
from sigmatune.study.context import RunContext
from sigmatune.study.run import RunSummary, run


def run_study(config: Config, **kwargs: Any) -> RunSummary:
    """:func:`sigmatune.study.run.run` with the command layer's hooks (dashboard figures after
    each trial, the best trial's export at the end); ``kwargs`` go to ``run``."""
    return run(config, after_trial=publish_figures, after_study=attach_best_export, **kwargs)


def publish_figures(ctx: RunContext, study: optuna.Study, trial: FrozenTrial) -> None:
    """Hook run after each outer trial (figures and notes for optuna-dashboard).

    A figure that cannot be drawn is reported and the study goes on: the results are in the
    storage either way, and the next trial (or ``dashboards.publish.publish_study``) redraws.
    """
    try:
        publish_after_trial(ctx.storage, study.study_name, trial.number)
    except Exception as exc:
        ctx.log(
            f"warning: figures and notes for optuna-dashboard not updated after trial "
            f"{trial.number} ({type(exc).__name__}: {exc})"
        )


def attach_best_export(ctx: RunContext, study: optuna.Study) -> None:
    """Hook run when the study is finished (the best trial's export as an artifact; once:
    a worker that finds the best trial's export attached leaves it)."""
    record = records.read_study(ctx.storage, study.study_name)
    attached = record.export or {}
    if record.best is not None and attached.get("trial") == record.best.number:
        return
    try:
        record = attach_export(
            ctx.storage,
            ctx.artifact_store,
            study.study_name,
            ctx.run_dir(records.study_uid(study)) / "export",
        )
    except Exception as exc:
        ctx.log(
            f"warning: the best trial's export was not attached ({type(exc).__name__}: "
            f"{exc}); run `sigmatune export` instead"
        )
        return
    if record is not None:
        ctx.log(
            f"export of the best trial {record['trial']} attached to it: "
            f"{', '.join(record['paths'].values())}"
        )
