"""Every place sigmatune reaches past Optuna's public API, in one small module.

Each function says which internal it uses and why. The rest of sigmatune uses Optuna's public
API only (studies, trials, storages, samplers, pruners, artifacts).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

# optuna-dashboard's key prefix for an artifact registered on a study
# (``optuna_dashboard.artifact._backend.DASHBOARD_ARTIFACTS_ATTR_PREFIX``; a test checks they
# agree). Written out, not imported: importing optuna_dashboard loads scikit-learn, a second
# on every command's start.
DASHBOARD_ARTIFACTS_ATTR_PREFIX = "dashboard:artifacts:"
# Every table of Optuna's RDB schema (and alembic's version table): a database holding only
# some of them is a schema another process is creating at this moment, not another program's.
SCHEMA_TABLES = frozenset(models.BaseModel.metadata.tables) | {"alembic_version"}
ORPHAN_GRACE_FACTOR = 5  # a RUNNING trial that never beat is stale after this many grace periods


def trial_id(trial: optuna.trial.BaseTrial) -> int:
    """The storage id of a trial (``_trial_id``: the key of storage-level calls)."""
    return int(trial._trial_id)  # type: ignore[attr-defined]


def study_id(study: optuna.Study) -> int:
    """The storage id of a study (``_study_id``)."""
    return int(study._study_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """A study's storage (``_storage``)."""
    return study._storage


def set_trial_system_attr(trial: optuna.trial.Trial, key: str, value: Any) -> None:
    """A system attr of a live trial: ``Trial.set_system_attr`` was removed from the public
    API, the storage method is public. Long records live there so that optuna-dashboard's
    trial page (which shows user attrs) stays readable."""
    trial.storage.set_trial_system_attr(trial_id(trial), key, value)


def set_frozen_trial_user_attr(
    study: optuna.Study, trial: FrozenTrial, key: str, value: Any
) -> None:
    """A user attr of a running trial known only as the ``FrozenTrial`` a pruner is handed
    (the storage's public method, by the private ``_trial_id``)."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def pruning_cut(
    pruner: optuna.pruners.BasePruner, study: optuna.Study, trial: FrozenTrial
) -> float | None:
    """The interim value ``trial`` had to reach (minimising) where ``pruner`` has just said to
    prune it at its last step, or None where there is none to compare with.

    Successive halving (and each Hyperband bracket, one such pruner over the trials of its
    bracket): the value at the rung the trial just completed (the ``completed_rung_K`` system
    attrs Optuna writes) that the best ``1/reduction_factor`` must reach, i.e.
    ``sorted(values)[max(0, len // reduction_factor - 1)]`` as Optuna's
    ``_is_trial_promotable_to_next_rung``; uses ``HyperbandPruner._get_bracket_id``,
    ``_create_bracket_study`` and ``_pruners``. Median (``PercentilePruner``): the median of
    the complete trials' values at the same step, as Optuna's pruner computes it."""
    step = trial.last_step
    if step is None:
        return None
    if isinstance(pruner, optuna.pruners.PercentilePruner):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        values = [v for v in values if np.isfinite(v)]
        percentile = float(pruner._percentile)  # type: ignore[attr-defined]
        return float(np.percentile(values, percentile)) if values else None
    halving: Any = pruner
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        bracket = pruner._get_bracket_id(study, trial)
        study = pruner._create_bracket_study(study, bracket)
        halving = pruner._pruners[bracket]
    if not isinstance(halving, optuna.pruners.SuccessiveHalvingPruner):
        return None
    trials = study.get_trials(deepcopy=False)
    own = next((t for t in trials if t.number == trial.number), None)
    if own is None:
        return None
    rung = 0
    while f"completed_rung_{rung + 1}" in own.system_attrs:
        rung += 1
    key = f"completed_rung_{rung}"
    if key not in own.system_attrs:
        return None
    values = sorted(float(t.system_attrs[key]) for t in trials if key in t.system_attrs)
    return values[max(0, len(values) // int(halving._reduction_factor) - 1)]


def is_enqueued(trial: FrozenTrial) -> bool:
    """Whether Optuna made ``trial`` from ``enqueue_trial`` (its ``fixed_params``)."""
    return "fixed_params" in trial.system_attrs


def whole_study(study: optuna.Study) -> optuna.Study:
    """The study itself where a sampler is handed a view of it: with ``HyperbandPruner``,
    Optuna gives the sampler a study of the trial's bracket only (its ``_BracketStudy``, the
    whole study in ``_study``), and a warm start must see every trial."""
    whole = getattr(study, "_study", None)
    return whole if isinstance(whole, optuna.Study) else study


def retry_system_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The system attrs Optuna's ``RetryFailedTrialCallback`` gives a retry of ``trial``
    (``failed_trial`` and ``retry_history``, with the trial's own), so that the retry resumes
    the original's checkpoint and inner studies and the failed trial no longer counts."""
    attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    attrs["retry_history"] = [*attrs["retry_history"], trial.number]
    return attrs


def trial_system_attrs(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """A trial's system attrs; a live ``Trial`` keeps them in the storage only."""
    if isinstance(trial, FrozenTrial):
        return dict(trial.system_attrs)
    return dict(trial.storage.get_trial_system_attrs(trial_id(trial)))


def original_trial_number(trial: optuna.trial.BaseTrial) -> int:
    """The number of the trial this one retries (itself when it is no retry), from the
    ``failed_trial`` system attr that ``RetryFailedTrialCallback`` writes."""
    failed = trial_system_attrs(trial).get("failed_trial")
    return int(failed) if failed is not None else int(trial.number)


def set_metric_names(study: optuna.Study, names: Sequence[str]) -> None:
    """Name the study's objective(s) for optuna-dashboard (experimental in Optuna since 3.2,
    so its warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def create_or_load(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    directions: Sequence[str] = ("minimize",),
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists. The flag says whether we created it.

    Creation is decided by the storage's unique study name, so of several processes that
    start together exactly one sees ``True`` and enqueues the baselines.
    """
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=list(directions),
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        return study, False


def retried_numbers(all_trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that a later trial retries (``retry_history`` system attr)."""
    out: set[int] = set()
    for t in all_trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def count_finished(all_trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards the budget: complete, pruned, or failed and not retried."""
    retried = retried_numbers(all_trials)
    n = 0
    for t in all_trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and t.number not in retried:
            # A FAIL that a retry supersedes does not count (the retry will); one whose
            # retries are spent, or that failed for a reason of its own, does.
            n += 1
    return n


def fail_orphans(study: optuna.Study) -> list[int]:
    """Fail (and retry) RUNNING trials that never recorded a heartbeat, long after they began.

    Optuna records a trial's first heartbeat only after ``study.ask()`` returns, and ask runs
    the sampler (a GP fit): a process killed in that window leaves a RUNNING trial that
    ``fail_stale_trials`` never sees, and a study waiting for it would wait forever. Such a
    trial is failed once it is ``ORPHAN_GRACE_FACTOR`` grace periods old. Reads the heartbeat
    table of ``RDBStorage`` (``optuna.storages._rdb.models``): SQL storages only.
    """
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        return []
    interval = storage.get_heartbeat_interval()
    if interval is None:
        return []
    grace = backend.grace_period if backend.grace_period is not None else 2 * interval

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    session = backend.scoped_session()
    try:
        alive = {
            row[0]
            for row in session.query(models.TrialHeartbeatModel.trial_id)
            .filter(models.TrialHeartbeatModel.trial_id.in_([trial_id(t) for t in running]))
            .all()
        }
    finally:
        session.close()
    cutoff = datetime.now() - timedelta(seconds=ORPHAN_GRACE_FACTOR * grace)
    failed = []
    for t in running:
        if trial_id(t) in alive or t.datetime_start is None or t.datetime_start > cutoff:
            continue
        try:
            changed = storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process was first
            continue
        if changed:
            failed.append(t.number)
            callback = storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(study, storage.get_trial(trial_id(t)))
    return failed


def optimize_until(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], Any],
    n_trials: int,
    *,
    poll_seconds: float = 2.0,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_wait: Callable[[list[FrozenTrial]], None] | None = None,
) -> None:
    """Run trials until ``n_trials`` are finished, sharing the work with other processes.

    Trials that others are running are waited for (they finish, or their heartbeat goes
    stale and Optuna fails and retries them, and then this process runs the retry).
    """
    callbacks = [on_trial] if on_trial is not None else None
    while True:
        with warnings.catch_warnings():  # experimental in Optuna, and stable since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        fail_orphans(study)
        all_trials = study.get_trials(deepcopy=False)
        finished = count_finished(all_trials)
        if finished >= n_trials:
            return
        running = [t for t in all_trials if t.state == TrialState.RUNNING]
        waiting = [t for t in all_trials if t.state == TrialState.WAITING]
        if finished + len(running) >= n_trials and not waiting:
            if on_wait is not None:
                on_wait(running)
            time.sleep(poll_seconds)
            continue
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False
        )


def register_trial_artifact(
    storage: optuna.storages.BaseStorage,
    study: int,
    trial: int,
    artifact_id: str,
    *,
    filename: str | None,
    mimetype: str = "application/octet-stream",
) -> None:
    """Show an artifact on a *finished* trial's page in optuna-dashboard, the way the
    dashboard registers uploads (study system attr ``dashboard:artifacts:<trial_id>:<id>``,
    ``optuna_dashboard.artifact._backend``); ``filename=None`` removes the registration.
    A finished trial's own attributes cannot change, so this is the only way."""
    key = f"{DASHBOARD_ARTIFACTS_ATTR_PREFIX}{trial}:{artifact_id}"
    meta = (
        None
        if filename is None
        else {
            "artifact_id": artifact_id,
            "filename": filename,
            "mimetype": mimetype,
            "encoding": None,
        }
    )
    storage.set_study_system_attr(study, key, json.dumps(meta))


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler whose random state is reseeded before each trial from ``(seed, trial
    number)``: processes that share a study draw different points (their trials have different
    numbers), and one process with the same seed still makes the same study. Reseeds the
    ``_rng`` of Optuna's TPE and random samplers (and TPE's inner random sampler)."""

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int) -> None:
        self._base = base
        self._seed = int(seed)

    @property
    def base(self) -> optuna.samplers.BaseSampler:
        return self._base

    def _reseed(self, number: int) -> None:

        value = int(np.random.SeedSequence([self._seed, int(number)]).generate_state(1)[0])
        for owner in (self._base, getattr(self._base, "_random_sampler", None)):
            rng = getattr(owner, "_rng", None)
            if rng is not None:
                rng.rng.seed(value)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: Any
    ) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._reseed(trial.number)
        self._base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._base.reseed_rng()


# --------------------------------------------------------------------------------------------
# Heartbeats through Optuna's gRPC storage proxy


class HeartbeatGrpcStorageProxy(optuna.storages.GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client with the trial heartbeats that it lacks.

    Optuna's ``GrpcStorageProxy`` is no ``BaseHeartbeat``, so ``study.optimize`` records no
    heartbeats through it and ``fail_stale_trials`` does nothing: the trial of a killed worker
    would stay RUNNING. Here a heartbeat is the trial system attr ``heartbeat_attr``
    (``records.HEARTBEAT``) = ``[trial id, the worker's UNIX time]`` (the id, because Optuna's
    retry copies the failed trial's system attrs), and a RUNNING trial is stale when its last
    heartbeat is older than the grace period by the checking worker's clock. A RUNNING trial
    that never beat (its worker died inside ``study.ask()``) is stale once this process has
    seen it so for ``ORPHAN_GRACE_FACTOR`` grace periods (by its own monotonic clock).
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int,
        heartbeat_attr: str,
        heartbeat_interval: int,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive, but got {heartbeat_interval=}")
        super().__init__(host=host, port=port)
        self.heartbeat_interval = int(heartbeat_interval)
        self.heartbeat_attr = heartbeat_attr
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        self._never_beat_since: dict[int, float] = {}

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, self.heartbeat_attr, [trial_id, time.time()])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed as stale by another worker meanwhile: its retry runs elsewhere

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        now, seen = time.time(), time.monotonic()
        stale = []
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            beat = t.system_attrs.get(self.heartbeat_attr)
            if isinstance(beat, list) and len(beat) == 2 and beat[0] == trial_id(t):
                self._never_beat_since.pop(trial_id(t), None)
                if now - float(beat[1]) > grace:
                    stale.append(trial_id(t))
                continue
            first = self._never_beat_since.setdefault(trial_id(t), seen)
            if seen - first > ORPHAN_GRACE_FACTOR * grace:
                stale.append(trial_id(t))
        alive = {trial_id(t) for t in running}
        for gone in [i for i in self._never_beat_since if i not in alive]:
            del self._never_beat_since[gone]
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def check_grpc_installed() -> None:
    """Raise ``ImportError`` unless gRPC and Optuna's generated protobuf modules import."""
    import grpc  # noqa: F401  (optional: the grpc extra)
