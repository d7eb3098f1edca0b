"""Scoring schedules of one model: on the search seeds, and on held-out seed sets.

Every image of a figure comes from ``models.samplers.generate`` with one seed per image
(:class:`~sigmatune.study.records.SeedPlan`), and every score from the run's scorer, which
clamps image samples to the data set's range (what a user would save) before its features. A
latent model's samples are decoded first (``RunContext.decode``: its VAE's decoder).

The inner search ranks by ``inner.objective``: the FID on the search seeds
(:func:`score_schedule`), or the *paired bound* (:func:`paired_score`). The paired bound of a
schedule over the sigma range ``[smin, smax]`` is

    B = (sqrt(FID_ref) + sqrt(P))^2,   P = sum_i |f(x_i) - f(r_i)|^2 / (N - 1),

where ``x_i`` is the schedule's sample from seed ``i`` and ``r_i`` the sample of the reference
run over the same range from the same initial noise ``smax * eps_i`` (karras rho=7,
:data:`REFERENCE_STEPS` Heun steps: the ODE solved to well below the errors searched), ``f``
the scorer's features and ``FID_ref`` the reference run's FID on the same seeds. ``P`` is the
discretisation error the step placement controls, far less noisy than a FID (the seeds'
noise is common to both samples) and with no floor; ``FID_ref`` is what the sigma range
itself gives (the start distribution ``smax * eps`` and the end ``smin`` change the sample,
which a paired distance cannot see: two good samplers over different ranges pair the same
noise with different samples). ``B`` bounds the schedule's own FID on those seeds: the
Fréchet distance is the 2-Wasserstein distance between Gaussians, a metric, so
``sqrt(FID) <= sqrt(FID_ref) + d(x, r)``, and ``d(x, r)^2`` (the Gaussians of the two
feature sets, unbiased covariances as the FID takes them) is at most ``P`` (Gelbrich's bound
by the coupling of the seeds, times ``N / (N - 1)``). Within one range the ranking is that of
``P``; across ranges ``FID_ref`` carries the range's quality. References are computed once per
(denoiser, scorer, range, seeds) and kept in :class:`ReferenceCache`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from sigmatune.models.samplers import DenoiserFn, generate
from sigmatune.models.schedules import karras
from sigmatune.study.context import RunContext
from sigmatune.study.records import HeldOut, Schedule

# Prefix fractions at which an inner trial's FID is reported, for pruning at equal image counts.
REPORT_FRACTIONS = (0.25, 0.5, 1.0)


def score_schedule(
    ctx: RunContext,
    D: DenoiserFn,
    schedule: Schedule,
    seeds: Sequence[int],
    *,
    trial: optuna.trial.Trial | None = None,
    prune: bool = False,
) -> float:
    """Generate one image per seed with ``schedule`` and score them; with ``trial``, report
    the FID of prefixes of the stream (and prune when asked)."""
    batches = _batches(ctx, D, schedule, seeds)
    fractions = REPORT_FRACTIONS if trial is not None else (1.0,)
    fid = math.nan
    for n_images, fid in ctx.scorer.score(batches, checkpoints=fractions, num_images=len(seeds)):
        if trial is not None and n_images < len(seeds):
            trial.report(fid, n_images)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"FID {fid:.5g} after {n_images} images")
    if not math.isfinite(fid):
        raise ValueError(f"the score is not finite (fid={fid}); the schedule is broken")
    return float(fid)


# The paired objective's reference: karras rho=7 over the candidate's own range, Heun (second
# order whatever the candidate's sampler), this many steps. Measured (benchmarks/
# paired_objective.py, "reference_steps": the paired distance of a reference to one of 512
# steps): on the run's full range [0.002, 80], 64 steps are 1.7e-3 to 2.1e-3 off on the ring
# and the toy MLP, 15% of the least paired distance an inner study scored there (0.011 to
# 0.013); 128 steps 9e-5 to 1.1e-4, under 1% (on a short range, [0.05, 3], 20x less again).
REFERENCE_STEPS = 128
REFERENCE_SAMPLER = "heun"
REFERENCE_RHO = 7.0
REFERENCE_CACHE_SIZE = 8  # distinct ranges kept (features [N, F] float64 each)


@dataclass(frozen=True)
class PairedScore:
    """One schedule's paired bound on a seed set (see the module docstring): ``value`` (what
    the search ranks), its parts ``paired`` (P) and ``reference_fid`` (FID_ref), and the
    schedule's own ``fid`` on the same seeds (from the same features, at no extra cost)."""

    value: float
    fid: float
    paired: float
    reference_fid: float

    def to_dict(self) -> dict[str, float]:
        return {
            "value": self.value,
            "fid": self.fid,
            "paired": self.paired,
            "reference_fid": self.reference_fid,
        }


@dataclass(frozen=True)
class Reference:
    """The reference run over one sigma range on one seed set: its features and FID."""

    sigmas: tuple[float, ...]
    features: torch.Tensor  # [N, F] float64
    fid: float


class ReferenceCache:
    """The paired objective's references, computed once per (denoiser, scorer, sigma range,
    seeds) and kept for the last ``size`` of them (least recently used out): the inner
    studies of one model share the ranges their starting points transfer between budgets."""

    def __init__(self, size: int = REFERENCE_CACHE_SIZE) -> None:
        self.size = int(size)
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, Any, Reference]] = OrderedDict()
        self.computed = 0  # references computed (not read from the cache)

    def get(
        self,
        ctx: RunContext,
        D: DenoiserFn,
        sigma_min: float,
        sigma_max: float,
        seeds: Sequence[int],
        steps: int = REFERENCE_STEPS,
    ) -> Reference:
        seeds = tuple(int(s) for s in seeds)
        key = (id(D), id(ctx.scorer), float(sigma_min), float(sigma_max), seeds, int(steps))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is D and entry[1] is ctx.scorer:
            self._entries.move_to_end(key)
            return entry[2]
        reference = reference_run(ctx, D, sigma_min, sigma_max, seeds, steps)
        self.computed += 1
        self._entries[key] = (D, ctx.scorer, reference)  # (the identities checked above)
        while len(self._entries) > max(self.size, 1):
            self._entries.popitem(last=False)
        return reference

    def __len__(self) -> int:
        return len(self._entries)


def references(ctx: RunContext) -> ReferenceCache:
    """The run's :class:`ReferenceCache` (made on first use, shared by its inner studies)."""
    if ctx.paired_references is None:
        ctx.paired_references = ReferenceCache()
    return ctx.paired_references


def reference_schedule(
    sigma_min: float, sigma_max: float, steps: int = REFERENCE_STEPS
) -> Schedule:
    """The paired objective's reference over ``[sigma_min, sigma_max]``."""

    sigmas = karras(int(steps), float(sigma_min), float(sigma_max), REFERENCE_RHO)
    return Schedule(REFERENCE_SAMPLER, tuple(float(s) for s in sigmas))


def _batches(
    ctx: RunContext, D: DenoiserFn, schedule: Schedule, seeds: Sequence[int]
) -> Iterator[torch.Tensor]:
    """One sample per seed with ``schedule``, in batches; a latent pipeline's decoded
    (``RunContext.decode``: its images are scored, not its latents)."""
    batches = generate(
        D,
        torch.tensor(schedule.sigmas, dtype=torch.float64),
        schedule.sampler,
        seeds,
        ctx.shape,
        ctx.config.inner.batch_size,
        device=ctx.device,
        **schedule.sampler_kwargs,
    )
    if ctx.decode is None:
        return iter(batches)
    return (ctx.decode(batch) for batch in batches)


def _samples(ctx: RunContext, D: DenoiserFn, schedule: Schedule, seeds: Sequence[int]) -> Any:
    return torch.cat([b.cpu() for b in _batches(ctx, D, schedule, seeds)])


def reference_run(
    ctx: RunContext,
    D: DenoiserFn,
    sigma_min: float,
    sigma_max: float,
    seeds: Sequence[int],
    steps: int = REFERENCE_STEPS,
) -> Reference:
    """The reference run over one range (:func:`reference_schedule`) from the seeds' noise:
    its features and its FID on those seeds."""
    schedule = reference_schedule(sigma_min, sigma_max, steps)
    features = ctx.scorer.features(_samples(ctx, D, schedule, seeds))
    fid = ctx.scorer.score_features(features).fid
    if not math.isfinite(fid):
        raise ValueError(f"the reference run's FID is not finite (fid={fid})")
    return Reference(schedule.sigmas, features, float(fid))


def paired_score(
    ctx: RunContext,
    D: DenoiserFn,
    schedule: Schedule,
    seeds: Sequence[int],
    cache: ReferenceCache,
) -> PairedScore:
    """The paired bound of ``schedule`` on ``seeds`` (the module docstring): its samples'
    features against those of the reference over its own sigma range, from the same noise."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"the paired objective needs at least 2 seeds, but got {len(seeds)}")
    smin, smax = schedule.sigma_range
    features = ctx.scorer.features(_samples(ctx, D, schedule, seeds))
    fid = float(ctx.scorer.score_features(features).fid)
    reference = cache.get(ctx, D, smin, smax, seeds)
    paired = float(((features - reference.features) ** 2).sum()) / (len(seeds) - 1)
    value = (math.sqrt(max(reference.fid, 0.0)) + math.sqrt(paired)) ** 2
    if not (math.isfinite(value) and math.isfinite(fid)):
        raise ValueError(f"the score is not finite (fid={fid}, paired={paired}); broken schedule")
    return PairedScore(value, fid, paired, reference.fid)


def floors(ctx: RunContext) -> dict[str, Any] | None:
    """The scorer's real-vs-real floor and noise-vs-real FID over the held-out set count (computed
    once per data set and extractor, cached beside the reference statistics); None where the
    scorer has none (a reference given as statistics: the floor is unknown, never made up)."""
    if not ctx.floors_available:
        return None
    return ctx.scorer.floors(sets=ctx.seeds.held_out_sets).to_dict()


def held_out(
    ctx: RunContext,
    D: DenoiserFn,
    schedules: Mapping[str, Schedule],
    *,
    tuned_trial: int | None = None,
) -> HeldOut:
    """Every schedule scored on each held-out seed set (the same sets for all of them; a
    schedule listed under two names is scored once)."""
    scores: dict[str, list[float]] = {name: [] for name in schedules}
    for k in range(ctx.seeds.held_out_sets):
        seeds = ctx.seeds.held_out(k)
        done: dict[tuple[Any, ...], float] = {}
        for name, schedule in schedules.items():
            if schedule.key not in done:
                done[schedule.key] = score_schedule(ctx, D, schedule, seeds)
            scores[name].append(done[schedule.key])
    floor = floors(ctx)
    return HeldOut(
        seeds=tuple(ctx.seeds.export()),  # type: ignore[arg-type]
        scores={k: tuple(v) for k, v in scores.items()},
        floor=None if floor is None else float(floor["floor"]),
        floor_spread=None if floor is None else float(floor["floor_spread"]),
        tuned_trial=tuned_trial,
    )
