"""One inner study: the step locations of one model at one NFE budget.

:func:`tune_steps` reads top-down: open (or resume) the study with its starting points (among
them the schedules of the published methods of ``inner.peers``, computed once for the model
and stored on the study), run the search to its budget of trials on the search seeds, then
re-score the best schedule, the fair baselines and the peers on held-out seeds, and return the
:class:`~sigmatune.study.records.InnerRecord`.

The trial's value is ln FID: the FIDs of a search span orders of magnitude (a bad schedule
is thousands of times worse than a good one), which a Gaussian process on the FID itself
cannot model near the optimum; the FID is kept in the trial's user attrs. With
``inner.objective = "paired"`` it is the ln of the paired bound instead
(``study.scoring.paired_score``: the discretisation error against a many-step reference run
from the same noise over the schedule's own sigma range, with that reference run's FID for
the range), the FID on the search seeds still kept beside it; held-out FID stays the verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from sigmatune.models.placement import PLACEMENT_METHODS, Placement
from sigmatune.models.progress import Progress
from sigmatune.models.samplers import DenoiserFn
from sigmatune.models.schedules import from_density, karras, loglinear
from sigmatune.objectives.densities import Density
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records, spaces
from sigmatune.study.context import RunContext
from sigmatune.study.records import InnerRecord, Peer, Schedule
from sigmatune.study.schedules import DEFAULT_SETTINGS, compute_schedule, costs
from sigmatune.study.scoring import held_out, paired_score, references, score_schedule

FID_FLOOR = 1e-12  # ln FID of a (clamped) zero distance
# the held-out baseline of the model's training density drawn as steps on the tuned range
TRAINING_DENSITY = "training_density"


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
    transfer: Mapping[str, InnerRecord] | None = None,
    training: Density | None = None,
) -> InnerRecord:
    """Create or resume one inner study, run it to ``inner_trials`` finished trials, and
    return its record with held-out figures (computed once, stored on the study).
    ``transfer``: records of this model's other budgets (and of other models) by label, whose
    sigma ranges and step densities are tried as starting points (:func:`transfer_schedules`).
    ``training``: the model's training density p(sigma), whose quantiles are a starting point
    and a held-out baseline ("sample where you trained", :func:`training_schedules`)."""
    study = open_inner_study(
        ctx,
        D,
        study_name,
        nfe,
        link=link,
        warm_start=warm_start,
        transfer=transfer,
        training=training,
    )
    run_search(ctx, study, D, nfe)
    return summarise(ctx, study, D, nfe, training=training)


# --------------------------------------------------------------------------------------------
# Opening


def starting_points(
    ctx: RunContext,
    nfe: int,
    peers: Mapping[str, Peer] | None = None,
    transfer: Mapping[str, InnerRecord] | None = None,
    training: Density | None = None,
) -> dict[str, spaces.InnerChoice]:
    """The first trials of every inner study, by name, in the order they are enqueued: the
    baselines (karras rho=7 and loglinear over the run's range), what the model's other
    budgets found (:func:`transfer_schedules`), the peers' schedules, and the further
    starting points of ``spaces.starting_schedules`` (spread sigma ranges)."""
    own = {k: v for k, v in (transfer or {}).items() if k.startswith("nfe")}
    others = {k: v for k, v in (transfer or {}).items() if not k.startswith("nfe")}
    return {
        **spaces.baseline_schedules(ctx.config, nfe),
        **transfer_schedules(ctx, nfe, own),
        **{
            name: spaces.InnerChoice(
                peer.schedule.sampler,
                torch.tensor(peer.schedule.sigmas, dtype=torch.float64),
                dict(peer.schedule.sampler_kwargs),
            )
            for name, peer in (peers or {}).items()
        },
        **training_schedules(ctx, nfe, training),
        **spaces.starting_schedules(ctx.config, nfe),
        **transfer_schedules(ctx, nfe, others),
    }


def training_schedules(
    ctx: RunContext, nfe: int, training: Density | None
) -> dict[str, spaces.InnerChoice]:
    """The model's training density turned into steps (``models.schedules.from_density``)
    over the run's sigma range: the starting point ``training_density_full_range``."""
    if training is None:
        return {}
    sampler = ctx.config.inner.samplers[0]
    n = spaces._steps(sampler, nfe)
    smin, smax = float(ctx.config.sigma_min), float(ctx.config.sigma_max)
    return {
        "training_density_full_range": spaces.InnerChoice(
            sampler, from_density(training, n, smin, smax), {}
        )
    }


def resample_schedule(sigmas: Sequence[float], n: int) -> torch.Tensor:
    """A schedule's step density drawn at ``n`` steps: its positive sigmas as a piecewise
    linear function of the step's fraction of the way (in ln sigma, so the same spacing in
    logSNR), read at ``n`` equally spaced fractions; the ends are kept, then 0."""
    positive = [float(s) for s in sigmas if s > 0]
    if n == 1 or len(positive) == 1:
        return torch.tensor([positive[0], 0.0], dtype=torch.float64)
    logs = torch.tensor([math.log(s) for s in positive], dtype=torch.float64)
    where = torch.linspace(0, len(positive) - 1, n, dtype=torch.float64)
    low = where.floor().long().clamp(max=len(positive) - 2)
    frac = where - low
    out = (logs[low] * (1 - frac) + logs[low + 1] * frac).exp()
    out[0], out[-1] = positive[0], positive[-1]
    return torch.cat([out, out.new_zeros(1)])


def density_at(sigmas: Sequence[float], n: int) -> torch.Tensor:
    """A schedule's step density drawn at ``n`` steps: the density of ``spaces.density_sigmas``
    where the schedule is one of that family (a search in ``inner.space = "density"``, karras,
    loglinear), else :func:`resample_schedule`."""
    s = torch.tensor([float(x) for x in sigmas], dtype=torch.float64)
    a, c, error = spaces.fit_density_error(s)
    if error <= spaces.DENSITY_RTOL:
        return spaces.density_sigmas(n, float(s[-2]), float(s[0]), a, c)
    return resample_schedule(sigmas, n)


def transfer_schedules(
    ctx: RunContext, nfe: int, sources: Mapping[str, InnerRecord]
) -> dict[str, spaces.InnerChoice]:
    """What other inner studies found, at this budget: for each source (label -> record),
    karras rho=7 and loglinear on its tuned schedule's sigma range (``karras_rho7_range_of_
    LABEL``, ``loglinear_range_of_LABEL``) and its tuned schedule's step density drawn at
    this NFE (``density_of_LABEL``), so a schedule that wins at one NFE is tried at every
    other. A schedule already listed (the same sigmas) is left out."""
    sampler = ctx.config.inner.samplers[0]
    n = spaces._steps(sampler, nfe)
    out: dict[str, spaces.InnerChoice] = {}
    seen: list[torch.Tensor] = []
    for label, record in sources.items():
        tuned = record.tuned
        smin, smax = tuned.sigma_range
        candidates = {
            f"karras_rho7_range_of_{label}": karras(n, smin, smax, spaces.KARRAS_RHO),
            f"loglinear_range_of_{label}": loglinear(n, smin, smax),
            f"density_of_{label}": density_at(tuned.sigmas, n),
        }
        for name, sigmas in candidates.items():
            if any(
                len(other) == len(sigmas) and torch.allclose(other, sigmas, rtol=1e-9, atol=0)
                for other in seen
            ):
                continue
            seen.append(sigmas)
            out[name] = spaces.InnerChoice(sampler, sigmas, {})
    return out


def compute_peer(
    ctx: RunContext, D: DenoiserFn, name: str, nfe: int, done: Mapping[str, Peer]
) -> Peer:
    """One published method's schedule (``models.placement``: GITS, Chen et al. 2024; LD3,
    Tong et al. 2025, started from GITS's schedule, reused from ``done`` when there) for the
    model at ``nfe``, with the inner study's sampler over the run's sigma range."""
    config = ctx.config
    sampler = config.inner.samplers[0]
    start = None
    origin = PLACEMENT_METHODS[name].starts_from  # LD3 starts from GITS
    if origin is not None and origin in done:
        stored = done[origin]
        start = Placement(
            origin,
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
    transfer: Mapping[str, InnerRecord] | None = None,
    training: Density | None = None,
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
        what = "paired bound" if config.inner.objective == "paired" else "FID"
        adapter.set_metric_names(study, [f"ln {what} (search seeds, NFE {nfe})"])
    peers = peer_schedules(ctx, study, D, nfe)
    if created or not study.get_trials(deepcopy=False):
        enqueue_starting_points(ctx, study, nfe, peers, warm_start, transfer, training)
    return study


def enqueue_starting_points(
    ctx: RunContext,
    study: optuna.Study,
    nfe: int,
    peers: Mapping[str, Peer],
    warm_start: Sequence[Mapping[str, Any]],
    transfer: Mapping[str, InnerRecord] | None = None,
    training: Density | None = None,
) -> None:
    """Enqueue the baselines always; then, in the order of :func:`starting_points` with the
    warm starts (the best params of other outer trials at this NFE) after the model's own
    other budgets and the peers, the other starting points fill at most the budget left,
    keeping a third of it (at least one trial) for the search itself. A schedule the search
    space cannot express (a narrowed space) is left out quietly."""
    config = ctx.config
    budget = config.inner.inner_trials
    room = max(0, budget - len(spaces.BASELINES) - max(1, budget // 3))
    points = starting_points(ctx, nfe, peers, transfer, training)
    spread = set(spaces.starting_schedules(config, nfe))  # the warm starts go before these
    names = list(points)
    cut = next((i for i, name in enumerate(names) if name in spread), len(names))
    entries: list[tuple[str, dict[str, Any] | None, spaces.InnerChoice | None]] = [
        *((name, None, points[name]) for name in names[:cut]),
        *(("warm_start", dict(p), None) for p in warm_start),
        *((name, None, points[name]) for name in names[cut:]),
    ]
    known: list[dict[str, Any]] = []
    for name, params, choice in entries:
        baseline = name in spaces.BASELINES
        if not baseline and room <= 0:
            break
        if params is None:
            try:
                params = spaces.schedule_params(
                    choice.sigmas, choice.sampler, choice.sampler_kwargs, config=config, nfe=nfe
                )
            except ValueError:  # outside a narrowed space: the search starts without it
                continue
        if params in known:
            continue
        known.append(params)
        study.enqueue_trial(params, user_attrs=records.start_attrs(name), skip_if_exists=True)
        room -= 0 if baseline else 1


def best_so_far_by_nfe(ctx: RunContext, exclude_prefix: str = "") -> dict[int, list[InnerRecord]]:
    """The inner records of the study's complete outer trials by NFE, best (held-out) first,
    leaving out inner studies whose name starts with ``exclude_prefix`` (one read of the
    outer study for every budget)."""
    try:
        outer = optuna.load_study(study_name=ctx.config.name, storage=ctx.storage)
    except KeyError:
        return {}
    found: dict[int, list[InnerRecord]] = {}
    for ft in outer.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for nfe, record in records.read_trial(ft).inner.items():
            if not (exclude_prefix and record.study_name.startswith(exclude_prefix)):
                found.setdefault(nfe, []).append(record)
    return {nfe: sorted(rs, key=lambda r: r.value) for nfe, rs in found.items()}


def best_so_far(ctx: RunContext, nfe: int, exclude_prefix: str = "") -> list[InnerRecord]:
    """The inner records at this NFE of the study's complete outer trials, best first."""
    return best_so_far_by_nfe(ctx, exclude_prefix).get(nfe, [])


def warm_start_params(found: Sequence[InnerRecord]) -> list[dict[str, Any]]:
    """The params of the best inner records found so far at an NFE in other outer trials
    (``found``, their held-out order), at most three, each once."""
    unique: list[dict[str, Any]] = []
    for record in found:
        if record.params and record.params not in unique:
            unique.append(record.params)
    return unique[:3]


# --------------------------------------------------------------------------------------------
# Searching


def sample_trial(trial: optuna.trial.Trial, ctx: RunContext, D: DenoiserFn, nfe: int) -> float:
    """Inner objective: suggest step locations, generate with the search seeds, return ln FID
    (or, with ``inner.objective = "paired"``, the ln of the paired bound)."""
    try:
        choice = spaces.suggest_schedule(trial, ctx.config, nfe)
        schedule = Schedule(
            choice.sampler, tuple(float(s) for s in choice.sigmas), dict(choice.sampler_kwargs)
        )
        records.write_schedule(trial, schedule)
        if ctx.config.inner.objective == "paired":
            score = paired_score(ctx, D, schedule, ctx.seeds.search, references(ctx))
            records.write_inner_fid(trial, score.fid)
            records.write_inner_paired(trial, score.to_dict())
            return math.log(max(score.value, FID_FLOOR))
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
            prune=pruning and records.start_of(trial) is None,
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

    budget = ctx.config.inner.inner_trials
    with Progress(budget, f"  nfe {nfe} inner trials", enabled=ctx.progress, leave=False) as bar:
        bar.update(adapter.count_finished(study.get_trials(deepcopy=False)))

        def on_trial(st: optuna.Study, ft: FrozenTrial) -> None:
            bar.update(1)
            best = best_trial(st)
            if best is not None:
                bar.set_postfix(best_fid=f"{records.inner_fid(best) or math.nan:.4g}")

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
            study.enqueue_trial(params, user_attrs=records.start_attrs(name))
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


def peer_search_scores(
    ctx: RunContext, study: optuna.Study, D: DenoiserFn, peers: Mapping[str, Peer]
) -> tuple[dict[str, float], dict[str, float]]:
    """The search-seed FID of each peer that is not a complete trial of the study (it did
    not fit the trial budget), and what it is ranked by (the same FID, or with
    ``inner.objective = "paired"`` its paired bound): scored once, beside the trials, and
    stored on the study, so the tuned schedule is chosen among everything the study scored."""
    as_trials = {
        records.start_of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    paired = ctx.config.inner.objective == "paired"
    stored = records.read_peer_search_fids(study)
    values = records.read_peer_search_paired(study) if paired else dict(stored)
    missing = [
        name
        for name in peers
        if name not in as_trials and (name not in stored or name not in values)
    ]
    for name in missing:
        if paired:
            score = paired_score(ctx, D, peers[name].schedule, ctx.seeds.search, references(ctx))
            stored[name], values[name] = score.fid, score.value
        else:
            stored[name] = values[name] = score_schedule(
                ctx, D, peers[name].schedule, ctx.seeds.search
            )
    if missing:
        records.write_peer_search_fids(study, stored)
        if paired:
            records.write_peer_search_paired(study, values)
    keep = [name for name in stored if name in peers and name not in as_trials]
    return {name: stored[name] for name in keep}, {name: values[name] for name in keep}


def summarise(
    ctx: RunContext,
    study: optuna.Study,
    D: DenoiserFn,
    nfe: int,
    *,
    training: Density | None = None,
) -> InnerRecord:
    """The inner study's record: the schedule with the least FID on the search seeds among
    every one the study scored (its trials, and the peers that did not fit the budget; its
    ``origin`` says which), the fair baselines, the peers (with their costs), and their
    held-out figures (computed once and stored on the study; recomputed if the chosen
    schedule changed)."""
    best = best_trial(study)
    if best is None:
        raise RuntimeError(
            f"inner study {study.study_name!r} has no complete trial; see its failed trials' "
            f"user attr {records.FAIL_REASON!r}"
        )
    peers = peer_schedules(ctx, study, D, nfe)
    outside, outside_values = peer_search_scores(ctx, study, D, peers)
    search_fid = float(records.inner_fid(best))  # type: ignore[arg-type]
    best_value = records.inner_objective_value(best)
    origin = records.start_of(best) or "search"
    tuned, trial_number, params = records.read_inner_schedule(best), best.number, dict(best.params)
    at_bound = params_at_bound(best)
    if outside_values and min(outside_values.values()) < (
        math.inf if best_value is None else best_value
    ):
        origin = min(outside_values, key=outside_values.__getitem__)
        search_fid, tuned = outside[origin], peers[origin].schedule
        trial_number, params, at_bound = -1, {}, ()
    schedules = {
        "tuned": tuned,
        **fair_baselines(ctx, tuned, nfe),
        **{name: peer.schedule for name, peer in peers.items()},
    }
    if training is not None:  # "sample where you trained", on the tuned range (fair)
        n = len(tuned.sigmas) - 1
        smin, smax = tuned.sigma_range
        sigmas = from_density(training, n, smin, smax)
        schedules[TRAINING_DENSITY] = Schedule(tuned.sampler, tuple(float(s) for s in sigmas))
    held = records.read_held_out(study)
    if (
        held is None
        or held.tuned_trial != trial_number
        or (held.tuned_origin or origin) != origin
        or set(schedules) - set(held.scores)
    ):
        held = held_out(ctx, D, schedules, tuned_trial=trial_number)
        held = dataclasses.replace(held, tuned_origin=origin)
        records.write_held_out(study, held)
    search_baselines = {
        str(records.start_of(t)): float(records.inner_fid(t))  # type: ignore[arg-type]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if records.start_of(t) and records.inner_fid(t) is not None
    }
    search_baselines.update(outside)
    return InnerRecord(
        nfe=nfe,
        study_name=study.study_name,
        search_fid=search_fid,
        search_trial=trial_number,
        params=params,
        schedules=schedules,
        search_baselines=search_baselines,
        held_out=held,
        at_bound=at_bound,
        costs={name: dict(peer.costs) for name, peer in peers.items()},
        origin=origin,
    )
