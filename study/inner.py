"""One inner study: the step locations of one model at one NFE budget.

:func:`tune_steps` reads top-down: open (or resume) the study with its starting points (among
them the schedules of the published methods of ``inner.peers``, computed once for the model
and stored on the study), run the search to its budget of trials on the search seeds, then
re-score the best schedule, the fair baselines and the peers on held-out seeds, and return the
:class:`~sigmatune.study.records.InnerRecord`.

The trial's value is ln FID: the FIDs of a search span orders of magnitude (a bad schedule
is thousands of times worse than a good one), which a Gaussian process on the FID itself
cannot model near the optimum; the FID is kept in the trial's user attrs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from sigmatune.models.placement import Placement
from sigmatune.models.samplers import DenoiserFn
from sigmatune.models.schedules import karras, loglinear
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records, spaces
from sigmatune.study.context import RunContext
from sigmatune.study.records import InnerRecord, Peer, Schedule
from sigmatune.study.schedule import DEFAULT_SETTINGS, LD3_START, compute_schedule, costs
from sigmatune.study.scoring import held_out, score_schedule

FID_FLOOR = 1e-12  # ln FID of a (clamped) zero distance


def inner_study_name(prefix: str, nfe: int) -> str:
    return f"{prefix}/nfe-{nfe}"


def tune_steps(
    ctx: RunContext,
    D: DenoiserFn,
    study_name: str,
    nfe: int,
    *,
    link: Mapping[str, Any] | None = None,
    warm_start: Sequence[Mapping[str, Any]] = (),
) -> InnerRecord:
    """Create or resume one inner study, run it to ``inner_trials`` finished trials, and
    return its record with held-out figures (computed once, stored on the study)."""
    study = open_inner_study(ctx, D, study_name, nfe, link=link, warm_start=warm_start)
    run_search(ctx, study, D, nfe)
    return summarise(ctx, study, D, nfe)


# --------------------------------------------------------------------------------------------
# Opening


def starting_points(
    ctx: RunContext, nfe: int, peers: Mapping[str, Peer] | None = None
) -> dict[str, spaces.InnerChoice]:
    """The first trials of every inner study, by name: the baselines (karras rho=7 and
    loglinear over the run's range), the peers' schedules, and karras with other rho."""
    return {
        **spaces.baseline_schedules(ctx.config, nfe),
        **{
            name: spaces.InnerChoice(
                peer.schedule.sampler,
                torch.tensor(peer.schedule.sigmas, dtype=torch.float64),
                dict(peer.schedule.sampler_kwargs),
            )
            for name, peer in (peers or {}).items()
        },
        **spaces.starting_schedules(ctx.config, nfe),
    }


def compute_peer(
    ctx: RunContext, D: DenoiserFn, name: str, nfe: int, done: Mapping[str, Peer]
) -> Peer:
    """One published method's schedule (``models.placement``: GITS, Chen et al. 2024; LD3,
    Tong et al. 2025, started from GITS's schedule, reused from ``done`` when there) for the
    model at ``nfe``, with the inner study's sampler over the run's sigma range."""
    config = ctx.config
    sampler = config.inner.samplers[0]
    start = None
    if name == "ld3" and LD3_START in done:
        stored = done[LD3_START]
        start = Placement(
            LD3_START,
            torch.tensor(stored.schedule.sigmas, dtype=torch.float64),
            int(stored.costs["denoiser_calls"]),
            int(stored.costs["denoiser_evaluations"]),
            float(stored.costs["seconds"]),
            dict(stored.info),
        )
    placement = compute_schedule(
        name,
        D,
        ctx.shape,
        nfe,
        sampler,
        sigma_min=float(config.sigma_min),
        sigma_max=float(config.sigma_max),
        seed=config.seed,
        device=ctx.device,
        settings=DEFAULT_SETTINGS,
        start=start,
    )
    schedule = Schedule(sampler, tuple(float(s) for s in placement.sigmas))
    return Peer(schedule, costs(placement), dict(placement.info))


def peer_schedules(
    ctx: RunContext, study: optuna.Study, D: DenoiserFn, nfe: int
) -> dict[str, Peer]:
    """The schedules of the methods of ``inner.peers`` for this inner study: computed the
    first time (each stored on the study as soon as it is done) and read back on a resume."""
    peers = records.read_peers(study)
    for name in ctx.config.inner.peers:
        if name not in peers:
            peers[name] = compute_peer(ctx, D, name, nfe, peers)
            records.write_peer(study, name, peers[name])
    return {name: peers[name] for name in ctx.config.inner.peers}


def open_inner_study(
    ctx: RunContext,
    D: DenoiserFn,
    study_name: str,
    nfe: int,
    *,
    link: Mapping[str, Any] | None = None,
    warm_start: Sequence[Mapping[str, Any]] = (),
) -> optuna.Study:
    """Create or load an inner study; a new one (or one whose process died before it had any
    trial) gets its starting points enqueued, the peers' schedules among them."""
    config = ctx.config
    study, created = adapter.create_or_load(
        study_name,
        ctx.storage,
        sampler=ctx.inner_sampler(config, config.seed + nfe),
        pruner=spaces.make_inner_pruner(config),
    )
    if created:
        records.init_inner_study(study, nfe, link)
        adapter.set_metric_names(study, [f"ln FID (search seeds, NFE {nfe})"])
    peers = peer_schedules(ctx, study, D, nfe)
    if created or not study.get_trials(deepcopy=False):
        enqueue_starting_points(ctx, study, nfe, peers, warm_start)
    return study


def enqueue_starting_points(
    ctx: RunContext,
    study: optuna.Study,
    nfe: int,
    peers: Mapping[str, Peer],
    warm_start: Sequence[Mapping[str, Any]],
) -> None:
    """Enqueue the baselines always; the peers, further starting points and warm starts fill
    at most the budget left after them, keeping one trial for the search itself. A schedule
    the search space cannot express (a narrowed space) is left out quietly."""
    config = ctx.config
    room = max(0, config.inner.inner_trials - len(spaces.BASELINES) - 1)
    for name, choice in starting_points(ctx, nfe, peers).items():
        baseline = name in spaces.BASELINES
        if not baseline and room <= 0:
            break
        try:
            params = spaces.schedule_params(
                choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
            )
        except ValueError:  # outside a narrowed space: the search starts without it
            continue
        study.enqueue_trial(params, user_attrs={records.START: name}, skip_if_exists=True)
        room -= 0 if baseline else 1
    for params in list(warm_start)[:room]:
        study.enqueue_trial(
            dict(params), user_attrs={records.START: "warm_start"}, skip_if_exists=True
        )


def best_so_far(ctx: RunContext, nfe: int, exclude_prefix: str = "") -> list[InnerRecord]:
    """The inner records at this NFE of the study's complete outer trials, best (held-out)
    first, leaving out inner studies whose name starts with ``exclude_prefix``."""
    try:
        outer = optuna.load_study(study_name=ctx.config.name, storage=ctx.storage)
    except KeyError:
        return []
    found = []
    for ft in outer.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = records.read_trial(ft).inner.get(nfe)
        if record is not None and not (
            exclude_prefix and record.study_name.startswith(exclude_prefix)
        ):
            found.append(record)
    return sorted(found, key=lambda r: r.value)


def warm_start_params(ctx: RunContext, nfe: int, exclude_prefix: str) -> list[dict[str, Any]]:
    """The best inner params found so far at this NFE in other outer trials of the study
    (their held-out order), at most three."""
    unique: list[dict[str, Any]] = []
    for record in best_so_far(ctx, nfe, exclude_prefix):
        if record.params and record.params not in unique:
            unique.append(record.params)
    return unique[:3]


# --------------------------------------------------------------------------------------------
# Searching


def sample_trial(trial: optuna.trial.Trial, ctx: RunContext, D: DenoiserFn, nfe: int) -> float:
    """Inner objective: suggest step locations, generate with the search seeds, return ln FID."""
    try:
        choice = spaces.suggest_schedule(trial, ctx.config, nfe)
        schedule = Schedule(
            choice.sampler, tuple(float(s) for s in choice.sigmas), dict(choice.sampler_kwargs)
        )
        records.write_schedule(trial, schedule)
        # Prefix scores are reported (each costs a score and a storage write) only where a
        # pruner reads them; the starting points report them too, for the median, but are
        # never pruned.
        pruning = spaces.inner_pruning(ctx.config)
        fid = score_schedule(
            ctx,
            D,
            schedule,
            ctx.seeds.search,
            trial=trial if pruning else None,
            prune=pruning and trial.user_attrs.get(records.START) is None,
        )
        records.write_inner_fid(trial, fid)
        return math.log(max(fid, FID_FLOOR))
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        records.write_failure(trial, exc)
        raise


def run_search(ctx: RunContext, study: optuna.Study, D: DenoiserFn, nfe: int) -> None:
    """Run the study until ``inner_trials`` of its trials are finished (shared with other
    processes working on it), with a progress bar."""
    from sigmatune.models.progress import Progress

    budget = ctx.config.inner.inner_trials
    with Progress(budget, f"  nfe {nfe} inner trials", enabled=ctx.progress, leave=False) as bar:
        bar.update(adapter.count_finished(study.get_trials(deepcopy=False)))

        def on_trial(st: optuna.Study, ft: FrozenTrial) -> None:
            bar.update(1)
            best = best_trial(st)
            if best is not None:
                bar.set_postfix(best_fid=f"{best.user_attrs.get(records.FID, math.nan):.4g}")

        objective = functools.partial(sample_trial, ctx=ctx, D=D, nfe=nfe)
        polish = ctx.config.inner.tune_sigma_range and budget >= 8
        target = budget - len(POLISH) if polish else budget
        while True:
            adapter.optimize_until(
                study, objective, target, poll_seconds=ctx.poll_seconds, on_trial=on_trial
            )
            trials = study.get_trials(deepcopy=False)
            finished = adapter.count_finished(trials)
            if finished >= budget:
                return
            # the polish of the best so far (or, in a resumed study, the polish waiting), or
            # where it is in the study already one more search trial, and again, so that the
            # last trials polish the final best
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            added = waiting or enqueue_polish(ctx, study, nfe, budget - finished)
            target = finished + max(1, added)


# The last trials of a search that tunes the sigma range: the fair baselines on the best
# range so far. Range and gaps are searched together, and in many dimensions the search can
# end on a good range with poor gaps (held-out FID 1.5-2x karras rho=7 on its own range on
# the exact mixtures: benchmarks/quality_analytic.py); so step placement is never worse than
# the baselines it is judged against.
POLISH = ("karras_rho7_same_range", "loglinear_same_range")


def enqueue_polish(ctx: RunContext, study: optuna.Study, nfe: int, room: int) -> int:
    """Enqueue at most ``room`` of :data:`POLISH` on the best trial's sigma range, those not
    in the study yet; how many were enqueued."""
    best = best_trial(study)
    if best is None:
        return 0
    trials = study.get_trials(deepcopy=False)
    known_params = [t.params for t in trials]
    # the same schedule from other params (the gaps are ratios: equal gaps are loglinear)
    known = [records.read_inner_schedule(t) for t in trials if t.state == TrialState.COMPLETE]
    schedules = fair_baselines(ctx, records.read_inner_schedule(best), nfe)
    enqueued = 0
    for name in POLISH:
        sched = schedules[name]
        try:
            params = spaces.schedule_params(
                sched.sigmas, sched.sampler, sched.sampler_kwargs, config=ctx.config, nfe=nfe
            )
        except ValueError:  # outside the space (a gap ratio below its bound)
            continue
        same = any(
            k.sampler == sched.sampler
            and len(k.sigmas) == len(sched.sigmas)
            and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(k.sigmas, sched.sigmas))
            for k in known
        )
        if enqueued < room and params not in known_params and not same:
            study.enqueue_trial(params, user_attrs={records.START: name})
            enqueued += 1
    return enqueued


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: (t.value, t.number)) if done else None


# --------------------------------------------------------------------------------------------
# Summarising


def params_at_bound(trial: FrozenTrial, rtol: float = 1e-6) -> tuple[str, ...]:
    """Float params of a trial that sit on a bound of their range (a result to check: the
    space may be cutting the optimum off, or the optimum is a truncation)."""
    out = []
    for name, dist in trial.distributions.items():
        if not isinstance(dist, optuna.distributions.FloatDistribution):
            continue
        value = float(trial.params[name])
        for bound in (dist.low, dist.high):
            scale = abs(math.log(bound)) if dist.log and bound > 0 else 1.0
            near = (
                abs(math.log(value) - math.log(bound)) <= rtol * max(scale, 1.0)
                if dist.log and bound > 0 and value > 0
                else abs(value - bound) <= rtol * max(abs(bound), 1.0)
            )
            if near:
                out.append(f"{name}={'low' if bound == dist.low else 'high'}")
    return tuple(out)


def fair_baselines(ctx: RunContext, tuned: Schedule, nfe: int) -> dict[str, Schedule]:
    """The schedules a tuned one is judged against (same sampler, same number of steps):
    karras rho=7 over the run's range, and karras rho=7 and loglinear over the tuned
    schedule's own sigma range, so a gain splits into "sigma range" and "step placement"."""
    n = len(tuned.sigmas) - 1
    smin, smax = tuned.sigma_range
    full_min, full_max = float(ctx.config.sigma_min), float(ctx.config.sigma_max)

    def sched(sigmas: torch.Tensor) -> Schedule:
        return Schedule(tuned.sampler, tuple(float(s) for s in sigmas))

    return {
        "karras_rho7": sched(karras(n, full_min, full_max, spaces.KARRAS_RHO)),
        "karras_rho7_same_range": sched(karras(n, smin, smax, spaces.KARRAS_RHO)),
        "loglinear_same_range": sched(loglinear(n, smin, smax)),
    }


def summarise(ctx: RunContext, study: optuna.Study, D: DenoiserFn, nfe: int) -> InnerRecord:
    """The inner study's record: its best trial, the fair baselines, the peers (with their
    costs), and their held-out figures (computed once and stored on the study; recomputed if
    the best trial changed)."""
    best = best_trial(study)
    if best is None:
        raise RuntimeError(
            f"inner study {study.study_name!r} has no complete trial; see its failed trials' "
            f"user attr {records.FAIL_REASON!r}"
        )
    tuned = records.read_inner_schedule(best)
    peers = peer_schedules(ctx, study, D, nfe)
    schedules = {
        "tuned": tuned,
        **fair_baselines(ctx, tuned, nfe),
        **{name: peer.schedule for name, peer in peers.items()},
    }
    held = records.read_held_out(study)
    if held is None or held.tuned_trial != best.number or set(schedules) - set(held.scores):
        held = held_out(ctx, D, schedules, tuned_trial=best.number)
        records.write_held_out(study, held)
    search_baselines = {
        str(t.user_attrs[records.START]): float(t.user_attrs[records.FID])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(records.START) and t.user_attrs.get(records.FID) is not None
    }
    return InnerRecord(
        nfe=nfe,
        study_name=study.study_name,
        search_fid=float(best.user_attrs[records.FID]),
        search_trial=best.number,
        params=dict(best.params),
        schedules=schedules,
        search_baselines=search_baselines,
        held_out=held,
        at_bound=params_at_bound(best),
        costs={name: dict(peer.costs) for name, peer in peers.items()},
    )
