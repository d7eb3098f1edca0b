"""Scoring schedules of one model: on the search seeds, and on held-out seed sets.

Every image of a figure comes from ``models.samplers.generate`` with one seed per image
(:class:`~sigmatune.study.records.SeedPlan`), and every score from the run's scorer, which
clamps image samples to the data set's range (what a user would save) before its features. A
latent model's samples are decoded first (``RunContext.decode``: its VAE's decoder).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch

from sigmatune.models.samplers import DenoiserFn, generate
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
    if ctx.decode is not None:  # a latent pipeline: its images are scored, not its latents
        batches = (ctx.decode(batch) for batch in batches)
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
