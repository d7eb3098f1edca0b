"""Optuna and its storage per inner trial: a real inner study (``study.inner.open_inner_study``
and ``run_search``: the preset's sampler with the baselines enqueued, ``sample_trial`` with its
records) on a fresh SQLite file (``study.storage.make_storage``, heartbeats as a run has them),
against a direct loop that scores the same schedules on the same seeds
(``study.scoring.score_schedule`` with ``ctx.seeds.search``) without Optuna.

overhead per trial = (study time - direct time) / trials, the two interleaved round by round,
medians. It is split by timing the Optuna sampler's methods (through ``make_context``'s
``inner_sampler`` hook) and the storage's (the storage object passed to ``make_context``),
counting the database commits; the rest is Optuna's and sigmatune's bookkeeping. Target: the
overhead <= 5% of a full-size trial (the preset's ``fid_num_images`` at its primary NFE,
whose compute the scoring measurement times).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from benchmarks._common import paired_ratio
from benchmarks.overhead.setup import Setup, Sizes
from sigmatune.study import inner, records, spaces
from sigmatune.study.config import Config
from sigmatune.study.context import RunContext, make_context
from sigmatune.study.scoring import score_schedule
from sigmatune.study.storage import make_storage

TARGET = 0.05
SAMPLER_METHODS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


@dataclass(frozen=True)
class OptunaRow:
    preset: str
    inner_sampler: str
    inner_trials: int
    num_images: int
    trial_seconds: float  # the study's wall time per finished trial
    direct_seconds: float  # the same schedules scored without Optuna, per trial
    overhead_seconds: float  # median over rounds of trial - direct
    sampler_seconds: float  # of which the Optuna sampler's methods
    storage_seconds: float  # of which the storage's methods
    commits_per_trial: float
    overhead_fraction: float  # overhead / trial at this benchmark's image count
    full_trial_images: int
    full_trial_compute_seconds: float | None  # the scoring measurement's generate + score
    overhead_fraction_full_trial: float | None  # overhead / (overhead + full trial compute)
    target: float = TARGET

    @property
    def headline(self) -> float:
        full = self.overhead_fraction_full_trial
        return self.overhead_fraction if full is None else full

    @property
    def met(self) -> bool:
        return self.headline <= self.target


class Attribution:
    """Exclusive wall time per category of the wrapped calls made on the main thread: a call
    inside another wrapped call counts for its own category and not for its caller's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []
        self._main = threading.get_ident()

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._main:  # the heartbeat thread
                return fn(*args, **kwargs)
            child = [0.0]
            self._stack.append(child)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self._stack.pop()
                self.seconds[category] += elapsed - child[0]
                if self._stack:
                    self._stack[-1][0] += elapsed

        return timed

    def timed_methods(self, obj: Any, category: str, names: list[str] | tuple[str, ...]) -> Any:
        """``obj`` (one this benchmark made) with those of its methods timed."""
        for name in names:
            setattr(obj, name, self.wrap(category, getattr(obj, name)))
        return obj


def storage_methods(storage: optuna.storages.BaseStorage) -> list[str]:
    """The public methods of an Optuna storage (those of ``BaseStorage`` it has)."""
    return [
        name
        for name in dir(optuna.storages.BaseStorage)
        if not name.startswith("_") and callable(getattr(storage, name, None))
    ]


@contextlib.contextmanager
def counted_commits(storage: Any) -> Iterator[list[int]]:
    """Count the database transactions committed on the storage's engine inside."""
    from sqlalchemy import event

    count = [0]
    engine = getattr(storage, "engine", None)

    def on_commit(_connection: Any) -> None:
        count[0] += 1

    if engine is None:
        yield count
        return
    event.listen(engine, "commit", on_commit)
    try:
        yield count
    finally:
        event.remove(engine, "commit", on_commit)


def study_config(setup: Setup, directory: Path, cache_dir: Path, sizes: Sizes) -> Config:
    return setup.config.replace(
        {
            "name": f"overhead-{setup.preset}",
            "storage": f"sqlite:///{directory / 'inner.db'}",
            "artifact_dir": str(cache_dir),
            "device": "cpu",
            "inner.nfe_budgets": [setup.config.inner.nfe_budgets[0]],
            "inner.fid_num_images": sizes.optuna_images[setup.preset],
            "inner.inner_trials": sizes.optuna_trials[setup.preset],
            "inner.peers": [],  # GITS and LD3 are computed once per study: not per trial
        }
    )


@dataclass
class StudyRun:
    seconds: float
    finished: int
    sampler_seconds: float
    storage_seconds: float
    commits: int
    schedules: list[records.Schedule]
    ctx: RunContext


def run_inner_study(setup: Setup, sizes: Sizes, cache_dir: Path) -> StudyRun:
    """One real inner study on a fresh SQLite file, timed; the schedules its trials scored."""
    attribution = Attribution()

    def timed_sampler(config: Config, seed: int) -> optuna.samplers.BaseSampler:
        sampler = spaces.make_inner_sampler(config, seed)
        return attribution.timed_methods(sampler, "sampler", SAMPLER_METHODS)

    with tempfile.TemporaryDirectory(prefix="sigmatune-overhead-") as tmp:
        config = study_config(setup, Path(tmp), cache_dir, sizes)
        storage = make_storage(config.storage)  # heartbeats and lock timeout, as a run has
        attribution.timed_methods(storage, "storage", storage_methods(storage))
        ctx = make_context(
            config,
            storage=storage,
            progress=False,
            log=lambda _m: None,
            inner_sampler=timed_sampler,
        )
        nfe = config.inner.nfe_budgets[0]
        D = setup.denoiser()
        with warnings.catch_warnings(), counted_commits(storage) as commits:
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            t0 = time.perf_counter()
            study = inner.open_inner_study(ctx, D, inner.inner_study_name(config.name, nfe), nfe)
            inner.run_search(ctx, study, D, nfe)
            seconds = time.perf_counter() - t0
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        schedules = [records.read_inner_schedule(t) for t in done]
        finished = sum(t.state.is_finished() for t in trials)
        storage.remove_session()
        storage.engine.dispose()
    return StudyRun(
        seconds=seconds,
        finished=finished,
        sampler_seconds=attribution.seconds["sampler"],
        storage_seconds=attribution.seconds["storage"],
        commits=commits[0],
        schedules=schedules,
        ctx=ctx,
    )


def direct_compute(setup: Setup, ctx: RunContext, schedules: list[records.Schedule]) -> float:
    """The trials' compute without Optuna: the same schedules on the same search seeds
    (``ctx.seeds``, the SeedPlan), scored as a trial scores them; the wall time."""
    D = setup.denoiser()
    t0 = time.perf_counter()
    for schedule in schedules:
        score_schedule(ctx, D, schedule, ctx.seeds.search)
    return time.perf_counter() - t0


def measure(
    setup: Setup,
    sizes: Sizes,
    cache_dir: Path,
    full_trial_compute_seconds: float | None,
    log: Callable[[str], None],
) -> OptunaRow:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as sigmatune.study.commands.cli does
    n_images = sizes.optuna_images[setup.preset]
    n_trials = sizes.optuna_trials[setup.preset]
    log(
        f"optuna: {setup.preset}, inner studies of {n_trials} trials x {n_images} images, "
        f"{sizes.optuna_repeats} rounds"
    )
    warm = run_inner_study(setup, sizes, cache_dir)  # warm-up (and the schedules to compare)
    runs: list[StudyRun] = []
    direct: list[float] = []
    for r in range(sizes.optuna_repeats):
        for name in ("study", "direct") if r % 2 == 0 else ("direct", "study"):
            if name == "study":
                runs.append(run_inner_study(setup, sizes, cache_dir))
            else:
                direct.append(direct_compute(setup, warm.ctx, warm.schedules) / len(warm.schedules))
    trial = [run.seconds / run.finished for run in runs]
    overhead = [t - d for t, d in zip(trial, direct, strict=True)]
    full_images = setup.config.inner.fid_num_images
    med_overhead = statistics.median(overhead)
    fraction_full = (
        None
        if full_trial_compute_seconds is None
        else med_overhead / (med_overhead + full_trial_compute_seconds)
    )
    return OptunaRow(
        preset=setup.preset,
        inner_sampler=setup.config.inner.sampler,
        inner_trials=n_trials,
        num_images=n_images,
        trial_seconds=statistics.median(trial),
        direct_seconds=statistics.median(direct),
        overhead_seconds=med_overhead,
        sampler_seconds=statistics.median(run.sampler_seconds / run.finished for run in runs),
        storage_seconds=statistics.median(run.storage_seconds / run.finished for run in runs),
        commits_per_trial=statistics.median(run.commits / run.finished for run in runs),
        overhead_fraction=paired_ratio(overhead, trial),
        full_trial_images=full_images,
        full_trial_compute_seconds=full_trial_compute_seconds,
        overhead_fraction_full_trial=fraction_full,
    )
