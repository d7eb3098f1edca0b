"""``sigmatune run``: create or resume the bilevel study and run it to its budget.

Outer study ``NAME`` (one trial = one training weighting, one trained model, see
:mod:`sigmatune.study.outer`); inner studies ``NAME/trial-NNNN/nfe-K`` (one trial = one set of
step locations for that model, see :mod:`sigmatune.study.inner`). Any number of ``run``
processes may point at the same storage: each claims trials until the configured count is
reached, and a trial whose process died is failed by its stale heartbeat and retried (the
retry resumes the original's checkpoint and inner studies). A trial that fails because a disk
is full stops the run, as every later trial would fail too: it is failed with its reason and a
retry of it is queued, so the same command resumes it once space is freed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sigmatune.objectives.literature import LITERATURE
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records, spaces
from sigmatune.study.config import Config
from sigmatune.study.context import RunContext, make_context
from sigmatune.study.errors import WriteError, one_line, out_of_space
from sigmatune.study.outer import train_trial
from sigmatune.study.scoring import floors
from sigmatune.study.storage import redact_url

# Keys of a stored config that a resumed study may change.
RESUMABLE_KEYS = frozenset(
    {"outer.outer_trials", "storage", "artifact_dir", "artifact_store", "device"}
)


class StudyConfigMismatch(ValueError):
    """The stored study was made with another configuration."""


@dataclass
class RunSummary:
    study_name: str
    storage_url: str
    best_trial: int | None
    best: records.TrialRecord | None
    lines: list[str] = field(default_factory=list)


def run(
    config: Config,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    context: RunContext | None = None,
    after_trial: Callable[[RunContext, optuna.Study, FrozenTrial], None] | None = None,
    after_study: Callable[[RunContext, optuna.Study], None] | None = None,
) -> RunSummary:
    """Create or resume the bilevel study and run it to ``outer.outer_trials`` trials.

    ``after_trial(ctx, study, trial)`` runs after each outer trial this process finished, and
    ``after_study(ctx, study)`` once the study has all its trials: the hooks of the command
    that started the run (``sigmatune run`` publishes dashboard figures and attaches the best
    trial's export: :func:`sigmatune.study.commands.run.run_study`)."""
    ctx = context or make_context(
        config,
        progress=progress,
        log=log,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    study, uid = open_outer_study(ctx)
    lines: list[str] = []
    running: list[int] = []  # the trial this process runs, while it runs
    full: list[BaseException] = []  # a trial failed because a disk is full

    def objective(trial: optuna.trial.Trial) -> float | list[float]:
        running[:] = [trial.number]
        try:
            return train_trial(trial, ctx=ctx, study_uid=uid)
        except Exception as exc:
            if out_of_space(exc) is not None:
                full.append(exc)
            raise

    def on_trial(st: optuna.Study, ft: FrozenTrial) -> None:
        running.clear()
        line = summary_line(records.read_trial(ft), config.inner.nfe_budgets)
        lines.append(line)
        log(line)
        if full and ft.state == optuna.trial.TrialState.FAIL:
            raise disk_full_error(st, ft, full[0])  # every later trial would fail too
        if after_trial is not None:
            after_trial(ctx, st, ft)

    waited: set[int] = set()

    def on_wait(running: list[FrozenTrial]) -> None:
        fresh = [t.number for t in running if t.number not in waited]
        if fresh:
            waited.update(fresh)
            log(
                f"waiting for outer trial(s) {fresh}: running elsewhere, or their process "
                "died and their heartbeat has not gone stale yet"
            )

    try:
        adapter.optimize_until(
            study,
            objective,
            config.outer.outer_trials,
            poll_seconds=ctx.poll_seconds,
            on_trial=on_trial,
            on_wait=on_wait,
        )
    except WriteError:
        raise
    except Exception as exc:  # the storage itself could not be written
        cause = out_of_space(exc)
        if cause is None:
            raise
        raise storage_full_error(config, running, cause) from None
    if after_study is not None:
        after_study(ctx, study)
    record = records.read_study(ctx.storage, config.name)
    best = record.best
    return RunSummary(
        study_name=config.name,
        storage_url=config.storage,
        best_trial=None if best is None else best.number,
        best=best,
        lines=lines,
    )


def disk_full_error(study: optuna.Study, trial: FrozenTrial, exc: BaseException) -> WriteError:
    """The run stops at a trial that failed because a disk is full (every later trial would
    fail the same way): the trial is failed with its reason, and a retry of it is queued, as
    for a trial whose process died (the full disk is not the trial's fault), so the next run
    resumes its last checkpoint. The paragraph says what happened and what to do."""
    queue_retry(study, trial)
    err = WriteError(
        f"{' '.join(str(exc).split())}. Trial {trial.number} of study {study.study_name!r} is "
        "marked failed with this reason, and a retry of it is queued: free space on that disk "
        "and run the same command again (the retry resumes the trial's last checkpoint)"
    )
    err.errno = getattr(out_of_space(exc), "errno", None)
    return err


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a retry of a failed trial as Optuna's ``RetryHeartbeatStaleTrialCallback`` does
    for a trial whose process died (same params and attrs, ``failed_trial`` and
    ``retry_history`` system attrs, so it resumes the original's checkpoint and inner studies
    and the failed trial no longer counts), without the failed trial's reason."""
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=records.retry_user_attrs(trial),
            system_attrs=adapter.retry_system_attrs(trial),
        )
    )


def storage_full_error(config: Config, running: list[int], exc: BaseException) -> WriteError:
    """The paragraph for a storage that cannot be written because its disk is full: the trial
    this process ran cannot be marked failed either; a later run fails it once its heartbeat
    is stale and retries it."""

    trial = (
        f" Trial {running[0]} of study {config.name!r} could not be marked failed: the next "
        "run fails it once its heartbeat is older than the grace period, and retries it."
        if running
        else ""
    )
    err = WriteError(
        f"the storage {redact_url(config.storage)} cannot be written, its disk is full "
        f"({one_line(exc)}).{trial} Free space on that disk and run the same command again"
    )
    err.errno = getattr(exc, "errno", None)
    return err


def open_outer_study(ctx: RunContext) -> tuple[optuna.Study, str]:
    """Create (enqueueing EDM's defaults first, and storing the floors) or resume the outer
    study; returns it with its unique id."""
    config = ctx.config
    objectives = spaces.outer_objectives(config)
    scorer_floors = floors(ctx)  # computed (or read from its cache) before the study exists
    study, created = adapter.create_or_load(
        config.name,
        ctx.storage,
        sampler=spaces.make_outer_sampler(config),
        pruner=spaces.make_outer_pruner(config),
        directions=["minimize"] * len(objectives),
    )
    if created:
        adapter.set_metric_names(study, metric_names(objectives))
        enqueue_configurations(ctx, study)
        # written last: a process that loads the study meanwhile waits for it (below)
        records.init_outer_study(study, config, kind="bilevel", floors=scorer_floors)
    else:
        wait_until_initialised(study, ctx.poll_seconds)
        check_stored_config(study, config)
    return study, records.study_uid(study)


# How long a process waits for another to finish creating the study: the creator computes
# the floors before it creates the study, so what is left takes seconds.
INIT_WAIT_S = 60


def wait_until_initialised(study: optuna.Study, poll_seconds: float) -> None:
    """Wait until the process that created the study has written its records (several
    workers started at once: one creates, the others load it in the meantime). The
    creator may be computing the scorer's floors, which takes a while on a first run."""

    deadline = time.monotonic() + INIT_WAIT_S
    while not records.is_initialised(study):
        if time.monotonic() > deadline:
            raise records.StudyLayoutError(
                f"study {study.study_name!r} exists but was never set up (its creating process "
                f"died within seconds of creating it, or it is not a sigmatune study): delete "
                f"it with `optuna delete-study --study-name {study.study_name!r} --storage URL` "
                "and run again, or choose another --study-name"
            )
        time.sleep(min(poll_seconds, 1.0))


def metric_names(objectives: tuple[int, ...]) -> list[str]:
    """The outer objectives' names for optuna-dashboard. A pruned trial carries its last
    interim FID as its value (Optuna's rule), which the name says."""
    return [f"FID NFE {k} (held-out; pruned trials: last interim)" for k in objectives]


def enqueue_configurations(ctx: RunContext, study: optuna.Study) -> None:
    """Enqueue the named configurations (EDM's, then the literature's) that fit the budget,
    once, by the process that creates the study (so that workers started together never
    enqueue them twice)."""
    configurations = list(enqueued_configurations(ctx).items())[: ctx.config.outer.outer_trials]
    enqueued: list[dict[str, Any]] = []
    for name, desc in configurations:
        params = spaces.objective_params(desc, ctx.config)
        if params in enqueued:  # the same point (W(lambda), split, ...) as an earlier one
            continue
        enqueued.append(params)
        study.enqueue_trial(params, user_attrs=records.name_attrs(name))


def enqueued_configurations(ctx: RunContext) -> dict[str, records.ObjectiveDescription]:
    """The study's first trials: EDM's defaults, then the literature's configurations
    (``objectives.literature``), each over the run's sigma range and sigma_data."""

    config = ctx.config
    out: dict[str, records.ObjectiveDescription] = {}
    if config.outer.enqueue_baseline:
        out["edm"] = spaces.edm_defaults_description(config, ctx.sigma_data)
    for name in config.outer.literature:
        out[name] = LITERATURE[name].description(
            ctx.sigma_data, float(config.sigma_min), float(config.sigma_max)
        )
    return out


def check_stored_config(study: optuna.Study, config: Config) -> None:
    """A resumed study must be resumed with the configuration it was made with."""
    stored = records.stored_config(study)
    if stored is None:
        return
    a, b = flatten(stored.to_dict()), flatten(config.to_dict())
    diffs = [
        f"{key}: stored {a.get(key)!r}, given {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in RESUMABLE_KEYS and a.get(key) != b.get(key)
    ]
    if diffs:
        raise StudyConfigMismatch(
            f"study {config.name!r} already exists in this storage with another "
            "configuration (" + "; ".join(diffs[:6]) + "). Resume it with the same config, "
            "or choose another study name (--study-name)."
        )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "params":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def summary_line(trial: records.TrialRecord, nfe_budgets: list[int] | tuple[int, ...]) -> str:
    """One line per finished outer trial: configuration, then per NFE the held-out figures
    (or why it failed or was pruned)."""
    name = f" [{trial.name}]" if trial.name else ""
    head = f"trial {trial.number:>3} {trial.state:<8} {trial.label}{name}"
    if trial.state != "COMPLETE":
        return head + (f"  ({trial.reason})" if trial.reason else "")
    parts = [
        f"nfe {k}: {records.held_out_line(trial.inner[k])}" for k in nfe_budgets if k in trial.inner
    ]
    parts += [f"warning: {w}" for w in records.worse_budgets(trial.inner)]
    return head + "\n    " + "\n    ".join(parts)
