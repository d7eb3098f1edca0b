"""Creating, resuming and running the bilevel study.

Outer study ``NAME`` (one trial = one training weighting, one trained model); inner studies
``NAME/trial-NNNN/nfe-K`` (one trial = one set of step locations for that model). Both are
plain Optuna studies in one storage, linked both ways through user attrs. Any number of
``run`` processes may point at the same storage: each claims trials until the configured
counts are reached, and a trial whose process died is failed by its stale heartbeat and
retried (the retry resumes the original's checkpoint and inner studies).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from sigmatune.models.data import Dataset, load_dataset
from sigmatune.objectives.fid import Scorer
from sigmatune.study import spaces, trials
from sigmatune.study.config import Config
from sigmatune.study.storage import artifact_store_for, make_storage

SCHEMA = trials.SCHEMA
ROLE = "sigmatune:role"
CONFIG_ATTR = "sigmatune:config"


class StudyConfigMismatch(ValueError):
    """The stored study was made with another configuration."""


@dataclass
class RunContext:
    """What every trial of one run process shares (built once per process)."""

    config: Config
    storage: optuna.storages.BaseStorage
    artifact_store: Any
    work_dir: Path
    data: Dataset
    scorer: Scorer
    device: torch.device
    progress: bool = True
    log: Callable[[str], None] = print
    poll_seconds: float = 2.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def sigma_data(self) -> float:
        return float(self.data.sigma_data)


@dataclass
class InnerResult:
    study_name: str
    nfe: int
    best_fid: float
    best_params: dict[str, Any]
    best_sigmas: list[float]
    best_sampler: str
    baseline_fid: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be 'auto' or 'cpu' on this machine, but got {name!r}")
    return device


def make_context(
    config: Config,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> RunContext:
    """Open the storage, load the data set and build the scorer (reference stats cached)."""
    kwargs = {}
    if heartbeat_interval is not None:
        kwargs["heartbeat_interval"] = heartbeat_interval
    if grace_period is not None:
        kwargs["grace_period"] = grace_period
    if storage is None:
        storage = make_storage(config.storage, **kwargs)
    artifact_store, artifact_dir = artifact_store_for(config.storage, config.artifact_dir)
    work_dir = Path(artifact_dir) / "runs" / safe_name(config.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, root=config.data_root or None, seed=config.seed)
    scorer = Scorer(
        data.x,
        data.labels,
        extractor=config.inner.fid_extractor,
        fid_num_images=config.inner.fid_num_images,
        cache_dir=Path(artifact_dir) / "fid-cache",
        dataset_name=config.dataset,
        inception_weights=config.inner.fid_inception_weights or None,
        seed=config.seed,
        kid=config.inner.kid,
        device=device,
    )
    return RunContext(
        config=config,
        storage=storage,
        artifact_store=artifact_store,
        work_dir=work_dir,
        data=data,
        scorer=scorer,
        device=device,
        progress=progress,
        log=log,
    )


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def inner_study_name(prefix: str, nfe: int) -> str:
    return f"{prefix}/nfe-{nfe}"


def create_or_load(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
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
            direction="minimize",
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        return study, False


def retried_numbers(all_trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that a later trial retries."""
    out: set[int] = set()
    for t in all_trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def count_finished(all_trials: list[FrozenTrial]) -> int:
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


ORPHAN_GRACE_FACTOR = 5


def fail_orphans(study: optuna.Study) -> list[int]:
    """Fail (and retry) RUNNING trials that never recorded a heartbeat, long after they began.

    Optuna records a trial's first heartbeat only after ``study.ask()`` returns, and ask runs
    the sampler (a GP fit): a process killed in that window leaves a RUNNING trial that
    ``fail_stale_trials`` never sees, and a study waiting for it would wait forever. Such a
    trial is failed once it is ``ORPHAN_GRACE_FACTOR`` grace periods old (SQL storages only).
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        return []
    interval = storage.get_heartbeat_interval()
    if interval is None:
        return []
    grace = backend.grace_period if backend.grace_period is not None else 2 * interval
    from datetime import datetime, timedelta

    from optuna.storages._rdb import models

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    session = backend.scoped_session()
    try:
        alive = {
            row[0]
            for row in session.query(models.TrialHeartbeatModel.trial_id)
            .filter(models.TrialHeartbeatModel.trial_id.in_([t._trial_id for t in running]))
            .all()
        }
    finally:
        session.close()
    cutoff = datetime.now() - timedelta(seconds=ORPHAN_GRACE_FACTOR * grace)
    failed = []
    for t in running:
        if t._trial_id in alive or t.datetime_start is None or t.datetime_start > cutoff:
            continue
        try:
            changed = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process was first
            continue
        if changed:
            failed.append(t.number)
            callback = storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(study, storage.get_trial(t._trial_id))
    return failed


def optimize_until(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], float],
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


def best_of(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return min(done, key=lambda t: t.value) if done else None


def warm_start_params(ctx: RunContext, nfe: int, exclude_prefix: str) -> list[dict[str, Any]]:
    """Best inner params found so far at this NFE in other outer trials of this run."""
    try:
        outer = optuna.load_study(study_name=ctx.config.name, storage=ctx.storage)
    except KeyError:
        return []
    found: list[tuple[float, dict[str, Any]]] = []
    for t in outer.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = t.user_attrs.get("inner:best_params", {}).get(str(nfe))
        fid = t.user_attrs.get("inner:best_fid", {}).get(str(nfe))
        studies = t.user_attrs.get("inner:studies", {})
        if (
            best
            and fid is not None
            and not str(studies.get(str(nfe), "")).startswith(exclude_prefix)
        ):
            found.append((float(fid), best))
    found.sort(key=lambda x: x[0])
    unique: list[dict[str, Any]] = []
    for _, params in found:
        if params not in unique:
            unique.append(params)
    return unique[:3]


def run_inner_study(
    ctx: RunContext,
    denoiser: Any,
    study_name: str,
    nfe: int,
    *,
    outer_link: dict[str, Any] | None = None,
    warm_start: list[dict[str, Any]] | None = None,
) -> InnerResult:
    """Create or resume one inner study and run it to ``inner_trials`` finished trials."""
    config = ctx.config
    sampler = spaces.make_inner_sampler(config, seed=config.seed + nfe)
    pruner = spaces.make_inner_pruner(config)
    study, created = create_or_load(study_name, ctx.storage, sampler=sampler, pruner=pruner)
    if created:
        study.set_user_attr("sigmatune:schema", SCHEMA)
        study.set_user_attr(ROLE, "inner")
        study.set_user_attr("nfe", nfe)
        for key, value in (outer_link or {}).items():
            study.set_user_attr(key, value)
        for name, choice in spaces.baseline_schedules(config, nfe).items():
            params = spaces.schedule_params(
                choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
            )
            study.enqueue_trial(params, user_attrs={"baseline": name})
        # Starting points and warm starts fill at most the budget left after the baselines,
        # keeping one trial for the search itself.
        room = max(0, config.inner.inner_trials - len(spaces.BASELINES) - 1)
        for name, choice in list(spaces.starting_schedules(config, nfe).items())[:room]:
            try:
                params = spaces.schedule_params(
                    choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
                )
            except ValueError:  # outside a narrowed space: the search starts without it
                continue
            study.enqueue_trial(params, user_attrs={"start": name}, skip_if_exists=True)
            room -= 1
        for params in (warm_start or [])[:room]:
            study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)

    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.inner.inner_trials, desc=f"  nfe {nfe} inner trials", leave=False)
        bar.update(count_finished(study.get_trials(deepcopy=False)))

    def on_trial(st: optuna.Study, ft: FrozenTrial) -> None:
        if bar is not None:
            bar.update(1)
            best = best_of(st)
            if best is not None:
                bar.set_postfix(best_fid=f"{best.value:.4g}")

    objective = functools.partial(trials.sample_trial, ctx=ctx, denoiser=denoiser, nfe=nfe)
    try:
        optimize_until(
            study,
            objective,
            config.inner.inner_trials,
            poll_seconds=ctx.poll_seconds,
            on_trial=on_trial,
        )
    finally:
        if bar is not None:
            bar.close()
    return summarize_inner(study, nfe)


def summarize_inner(study: optuna.Study, nfe: int) -> InnerResult:
    best = best_of(study)
    if best is None:
        raise RuntimeError(
            f"inner study {study.study_name!r} has no complete trial; see its failed trials' "
            "user attr 'sigmatune:fail_reason'"
        )
    baselines: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.user_attrs.get("baseline")
        if name is not None:
            baselines[name] = float(t.value)
    return InnerResult(
        study_name=study.study_name,
        nfe=nfe,
        best_fid=float(best.value),
        best_params=dict(best.params),
        best_sigmas=list(best.user_attrs.get("sigmas", [])),
        best_sampler=str(best.user_attrs.get("sampler", "")),
        baseline_fid=baselines,
    )


def run_inner_studies(
    ctx: RunContext,
    denoiser: Any,
    *,
    prefix: str,
    outer_trial: optuna.trial.Trial | None = None,
) -> dict[int, InnerResult]:
    """One inner study per NFE budget for ``denoiser``; returns the best of each."""
    results: dict[int, InnerResult] = {}
    for nfe in ctx.config.inner.nfe_budgets:
        link = {}
        if outer_trial is not None:
            link = {
                "outer:study": ctx.config.name,
                "outer:trial": int(outer_trial.number),
                "outer:original_trial": trials.original_trial_number(outer_trial),
            }
        results[nfe] = run_inner_study(
            ctx,
            denoiser,
            inner_study_name(prefix, nfe),
            nfe,
            outer_link=link,
            warm_start=warm_start_params(ctx, nfe, exclude_prefix=prefix),
        )
    return results


def check_stored_config(study: optuna.Study, config: Config) -> None:
    """A resumed study must be resumed with the configuration it was made with."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return
    ours = config.to_dict()
    ignore = {"outer.outer_trials", "storage", "artifact_dir", "device"}
    diffs = []
    for key in sorted(set(flatten(stored)) | set(flatten(ours))):
        if key in ignore:
            continue
        a, b = flatten(stored).get(key), flatten(ours).get(key)
        if a != b:
            diffs.append(f"{key}: stored {a!r}, given {b!r}")
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


def open_outer_study(ctx: RunContext) -> optuna.Study:
    """Create (enqueueing EDM's defaults first) or resume the outer study."""
    config = ctx.config
    study, created = create_or_load(
        config.name,
        ctx.storage,
        sampler=spaces.make_outer_sampler(config),
        pruner=spaces.make_outer_pruner(config),
    )
    if created:
        study.set_user_attr("sigmatune:schema", SCHEMA)
        study.set_user_attr(ROLE, "outer")
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
        if config.outer.enqueue_baseline:
            desc = spaces.edm_defaults_description(config)
            study.enqueue_trial(spaces.objective_params(desc), user_attrs={"baseline": "edm"})
    else:
        check_stored_config(study, config)
    return study


def describe_objective(desc: dict[str, Any] | None) -> str:
    """A short, readable name of a training weighting, e.g. ``edm unit lognormal(-1.2,1.2)``."""
    if not desc:
        return "?"

    def fam(d: dict[str, Any]) -> str:
        params = d.get("params") or {}
        vals = []
        for v in params.values():
            if isinstance(v, list):
                vals.append("[" + ",".join(f"{x:.3g}" for x in v) + "]")
            else:
                vals.append(f"{v:.3g}")
        return f"{d['name']}({','.join(vals)})" if vals else d["name"]

    adaptive = desc.get("adaptive")
    extra = f" +{adaptive['name']}" if adaptive else ""
    return f"{desc['parameterisation']} {fam(desc['weighting'])} {fam(desc['density'])}{extra}"


def summary_line(trial: FrozenTrial, primary: int) -> str:
    """One line per finished outer trial: configuration, best FID per NFE, baseline, ratio."""
    desc = trial.user_attrs.get("sigmatune:objective")
    head = f"trial {trial.number:>3} {trial.state.name:<8} {describe_objective(desc)}"
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get(trials.FAIL_REASON) or trial.user_attrs.get(
            trials.PRUNE_REASON, ""
        )
        return head + (f"  ({reason})" if reason else "")
    best = trial.user_attrs.get("inner:best_fid", {})
    base = trial.user_attrs.get("inner:baseline_fid", {})
    parts = []
    for nfe, fid in best.items():
        karras = base.get(nfe, {}).get("karras_rho7")
        if karras:
            parts.append(f"nfe {nfe}: {fid:.4g} (karras {karras:.4g}, x{fid / karras:.3g})")
        else:
            parts.append(f"nfe {nfe}: {fid:.4g}")
    return head + "  " + "  ".join(parts)


@dataclass
class RunSummary:
    study_name: str
    storage_url: str
    best_trial: int | None
    best_fid: float | None
    baseline_fid: float | None
    lines: list[str]


def run(
    config: Config,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    context: RunContext | None = None,
) -> RunSummary:
    """Create or resume the bilevel study and run it to ``outer.outer_trials`` trials."""
    ctx = context or make_context(
        config,
        progress=progress,
        log=log,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    study = open_outer_study(ctx)
    primary = config.inner.nfe_budgets[0]
    lines: list[str] = []

    def on_trial(st: optuna.Study, ft: FrozenTrial) -> None:
        line = summary_line(ft, primary)
        lines.append(line)
        log(line)
        after_outer_trial(ctx, st, ft)

    waited: set[int] = set()

    def on_wait(running: list[FrozenTrial]) -> None:
        fresh = [t.number for t in running if t.number not in waited]
        if fresh:
            waited.update(fresh)
            log(
                f"waiting for outer trial(s) {fresh}: running elsewhere, or their process "
                "died and their heartbeat has not gone stale yet"
            )

    objective = functools.partial(trials.train_trial, ctx=ctx)
    optimize_until(
        study,
        objective,
        config.outer.outer_trials,
        poll_seconds=ctx.poll_seconds,
        on_trial=on_trial,
        on_wait=on_wait,
    )
    after_run(ctx, study)
    best = best_of(study)
    baseline = None
    if best is not None:
        baseline = (
            best.user_attrs.get("inner:baseline_fid", {}).get(str(primary), {}).get("karras_rho7")
        )
    return RunSummary(
        study_name=config.name,
        storage_url=config.storage,
        best_trial=None if best is None else best.number,
        best_fid=None if best is None else float(best.value),
        baseline_fid=baseline,
        lines=lines,
    )


def after_outer_trial(ctx: RunContext, study: optuna.Study, trial: FrozenTrial) -> None:
    """Hook run after each outer trial (figures and notes for optuna-dashboard).

    A figure that cannot be drawn is reported and the study goes on: the results are in the
    storage either way, and the next trial (or ``dashboards.publish.publish_study``) redraws.
    """
    from sigmatune.dashboards.publish import publish_after_trial

    try:
        publish_after_trial(ctx.storage, study.study_name, trial.number)
    except Exception as exc:
        ctx.log(
            f"warning: figures and notes for optuna-dashboard not updated after trial "
            f"{trial.number} ({type(exc).__name__}: {exc})"
        )


def after_run(ctx: RunContext, study: optuna.Study) -> None:
    """Hook run when the study is finished (the best trial's export as an artifact)."""
    from sigmatune.study.export import attach_export

    try:
        record = attach_export(
            ctx.storage, ctx.artifact_store, study.study_name, ctx.work_dir / "export"
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
            f"{', '.join(record['files'].values())}"
        )
