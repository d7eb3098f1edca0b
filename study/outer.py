"""One outer trial, top-down: configuration -> trained model -> inner studies -> held-out
scores -> stored record.

:func:`train_trial` is the outer study's objective. A retried trial (a worker died) keeps
the number of the trial it retries as its *original*: it resumes that trial's checkpoint and
its inner studies ``NAME/trial-NNNN/nfe-K`` (NNNN the original number).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from sigmatune.models.capacity import LamErrors, denoising_error_by_lam, lam_edges
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.placement import gits
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import karras
from sigmatune.models.training import TrainSettings, train
from sigmatune.objectives.densities import Density
from sigmatune.objectives.loss import objective_from_description, same_effective_weighting
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records, spaces
from sigmatune.study.artifacts import checkpoint_uploader, fetch_checkpoint
from sigmatune.study.config import INTERIM_GITS_GRID, Config
from sigmatune.study.context import RunContext
from sigmatune.study.inner import (
    best_so_far,
    best_so_far_by_nfe,
    inner_study_name,
    tune_steps,
    warm_start_params,
)
from sigmatune.study.modelfile import save_model_file
from sigmatune.study.records import InnerRecord, ObjectiveDescription
from sigmatune.study.schedules import density_record
from sigmatune.study.scoring import score_schedule
from sigmatune.study.storage import short_hash


def train_trial(trial: optuna.trial.Trial, ctx: RunContext, study_uid: str) -> float | list[float]:
    """Outer objective: suggest a training weighting, train a model, tune its step locations
    per NFE budget, and return the held-out FID of the tuned schedule at the study's NFE (one
    per NFE of ``outer.objectives`` in a multi-objective study)."""
    config = ctx.config
    original = adapter.original_trial_number(trial)
    try:
        description = spaces.suggest_objective_description(trial, config, ctx.sigma_data)
        records.begin_outer_trial(trial, description, original, records.name_of(trial))
        note_same_objective(trial, description)
        trial_dir = ctx.run_dir(study_uid) / f"trial-{original:04d}"
        ema, nimg = train_model(ctx, trial, description, trial_dir, study_uid, original)
        upload_model(ctx, trial, ema, description, trial_dir / "model.pt", nimg)
        denoiser = Denoiser(ema.to(ctx.device), description["parameterisation"], ctx.sigma_data)
        records.write_lam_errors(trial, capacity(ctx, denoiser.eval()).to_dict())
        training = objective_from_description(description).density
        inner = tune_all_budgets(ctx, denoiser.eval(), trial, original, training)
        records.write_inner_records(trial, inner)
        records.write_density(trial, density_record(inner))  # export --nfe K at any K
        values = [inner[k].value for k in spaces.outer_objectives(config)]
        return values[0] if len(values) == 1 else values
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        records.write_failure(trial, exc)
        raise


CAPACITY_BINS = 16  # lam bins of the per-lam denoising error, over the run's range
CAPACITY_PER_BIN = 256  # examples per bin


def capacity(ctx: RunContext, denoiser: Denoiser) -> LamErrors:
    """Where the trained model spends its capacity: its denoising error per lam bin
    (``models.capacity``), exact (excess over the true denoiser, on fresh samples of the true
    distribution) where the data set has one, else its denoising loss on the data set's
    examples (the training set: the run holds no images out of training)."""
    config = ctx.config
    edges = lam_edges(float(config.sigma_min), float(config.sigma_max), CAPACITY_BINS)
    analytic = ctx.data.analytic
    if analytic is not None:
        generator = torch.Generator().manual_seed(config.seed + 1)
        x0 = analytic.sample(CAPACITY_BINS * CAPACITY_PER_BIN, generator=generator)
        exact = analytic.denoise
    else:
        x0, exact = ctx.data.x, None
    return denoising_error_by_lam(
        denoiser,
        x0.to(torch.float32),
        edges,
        exact=exact,
        per_bin=CAPACITY_PER_BIN,
        seed=config.seed,
        batch_size=config.inner.batch_size,
        device=ctx.device,
    )


def train_settings(
    config: Config, *, seed: int | None = None, checkpoint_nimg: int | None = None
) -> TrainSettings:
    """The training settings of ``config``'s ``[train]`` table (its seed and checkpoint
    spacing unless given)."""
    every = config.train.checkpoint_nimg if checkpoint_nimg is None else checkpoint_nimg
    return TrainSettings(
        train_nimg=config.train.train_nimg,
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        ema_halflife_nimg=config.train.ema_halflife_nimg,
        seed=config.seed if seed is None else seed,
        checkpoint_nimg=every,
        grad_clip=config.train.grad_clip or None,
    )


def train_model(
    ctx: RunContext,
    trial: optuna.trial.Trial,
    description: ObjectiveDescription,
    trial_dir: Path,
    study_uid: str,
    original: int,
) -> tuple[torch.nn.Module, int]:
    """Train the trial's model (resuming its own checkpoint, never another's), reporting an
    interim FID at each checkpoint for the pruner. Returns the EMA network and its images."""
    config = ctx.config
    objective = objective_from_description(description)  # exactly what is stored is trained
    torch.manual_seed(config.seed)
    net = make_network(config.network.name, dict(config.network.params), ctx.shape)
    settings = train_settings(config)
    # A checkpoint belongs to one study (its unique id), one original trial, one network, data
    # set and objective (the trajectory settings are checked by train itself): anything else in
    # the folder is ignored, never resumed. train_nimg is left out so a longer run continues.
    run_key = short_hash(
        study_uid, original, config.to_dict()["network"], config.dataset, description
    )
    # the store holds every checkpoint: a retry on another machine resumes the newest
    checkpoint_dir = trial_dir / "checkpoints"
    fetch_checkpoint(ctx.artifacts, checkpoint_dir)
    result = train(
        net,
        objective,
        ctx.data.x,
        settings,
        checkpoint_dir=checkpoint_dir,
        run_key=run_key,
        callback=checkpoint_uploader(
            ctx.artifacts, checkpoint_dir, then=interim_pruning(ctx, trial, description)
        ),
        device=ctx.device,
        progress=ctx.progress,
        desc=f"trial {trial.number} train",
        log=ctx.log,
    )
    records.write_training(
        trial, result.resumed_from_nimg, int(result.nimg) - int(result.resumed_from_nimg)
    )
    return result.ema, int(result.nimg)


# The GITS fit behind the "gits" interim score: a fit, not a measurement, so fewer noises and a
# coarser teacher grid than GITS's defaults (256, 100) do; its cost is O(grid^2) calls.
INTERIM_GITS_NOISES = 32


@dataclass(frozen=True)
class InterimScore:
    """The interim score of a model at a checkpoint: the FID of one schedule on each held-out
    seed set, their mean (what the pruner reads) and seed-to-seed spread (sample std)."""

    schedule: records.Schedule
    values: tuple[float, ...]

    @property
    def fid(self) -> float:
        return float(statistics.fmean(self.values))

    @property
    def spread(self) -> float:
        return float(statistics.stdev(self.values)) if len(self.values) > 1 else 0.0


def interim_sigma_range(config: Config) -> tuple[float, float]:
    """The "karras" interim's sigma range: ``outer.interim_sigma_range``, else, with
    ``inner.tune_sigma_range``, the shortest range of the inner search's range space (its
    ``karras_rho7_range_short`` starting point: on the toy preset every literature model's
    tuned schedule at NFE 5, where the interim on it ranked the final models exactly and one
    reaching down to sigma_min = 0.002 ranked them in reverse; benchmarks/outer_study.py), and
    the run's range when the inner studies keep it."""
    if config.outer.interim_sigma_range:
        low, high = config.outer.interim_sigma_range
        return float(low), float(high)
    if config.inner.tune_sigma_range:
        min_space, max_space = spaces.sigma_range_space(config)
        return float(min_space.high), float(max_space.low)
    return float(config.sigma_min), float(config.sigma_max)


def karras_interim(ctx: RunContext, D: Denoiser, nfe: int, sampler: str) -> records.Schedule:
    """karras rho=7 at ``nfe`` on :func:`interim_sigma_range`: the same schedule for every
    model and checkpoint, so the interim compares models, not what a fit found for each."""
    smin, smax = interim_sigma_range(ctx.config)
    sigmas = karras(steps_for_nfe(sampler, nfe), smin, smax, spaces.KARRAS_RHO)
    return records.Schedule(sampler, tuple(float(s) for s in sigmas))


def gits_interim(ctx: RunContext, D: Denoiser, nfe: int, sampler: str) -> records.Schedule:
    """Step locations fitted to this model by GITS (Chen et al. 2024; seconds, no FID search)
    over the sigma range of the best tuned schedule found so far at this NFE (the run's range
    before there is one)."""
    best = best_so_far(ctx, nfe)
    smin, smax = (
        best[0].tuned.sigma_range
        if best
        else (float(ctx.config.sigma_min), float(ctx.config.sigma_max))
    )
    placement = gits(
        D,
        ctx.shape,
        nfe,
        sampler,
        sigma_min=smin,
        sigma_max=smax,
        seed=ctx.config.seed,
        num_noises=INTERIM_GITS_NOISES,
        teacher_steps=INTERIM_GITS_GRID,
        device=ctx.device,
    )
    return records.Schedule(sampler, tuple(float(s) for s in placement.sigmas))


# outer.interim -> the schedule the interim score samples with (config.OUTER_INTERIMS)
INTERIM_SCHEDULES = {"karras": karras_interim, "gits": gits_interim}


def interim_score(
    ctx: RunContext, D: Denoiser, nfe: int, interim: str | None = None
) -> InterimScore:
    """A cheap score meant to rank models as the final held-out FID does: the FID at ``nfe``
    of the ``outer.interim`` schedule (or ``interim``), on every held-out seed set (its mean
    and spread). Its rank agreement with the final score is measured by
    ``benchmarks/outer_study.py`` over the literature configurations."""
    sampler = ctx.config.inner.samplers[0]
    schedule = INTERIM_SCHEDULES[interim or ctx.config.outer.interim](ctx, D, nfe, sampler)
    values = tuple(
        score_schedule(ctx, D, schedule, ctx.seeds.held_out(k))
        for k in range(ctx.seeds.held_out_sets)
    )
    return InterimScore(schedule, values)


def interim_pruning(
    ctx: RunContext, trial: optuna.trial.Trial, description: ObjectiveDescription
) -> Any:
    """The training callback that reports the interim score (:func:`interim_score` at the
    primary NFE; its spread stored beside it) at each checkpoint before the end, and prunes
    when the pruner says so, storing why. A study that cannot be pruned (multi-objective)
    reports nothing."""
    config = ctx.config
    nfe = spaces.outer_objectives(config)[0]
    if len(spaces.outer_objectives(config)) > 1 or config.outer.pruner == "none":
        return None

    def at_checkpoint(nimg: int, ema: torch.nn.Module, *_: Any, **__: Any) -> None:
        if nimg >= config.train.train_nimg:
            return  # the final model is scored by the inner studies
        den = Denoiser(ema, description["parameterisation"], ctx.sigma_data).eval()
        score = interim_score(ctx, den, nfe)
        records.write_interim(trial, nimg, score.spread)
        trial.report(score.fid, nimg)
        if trial.should_prune():
            cut = records.prune_cuts(trial).get(nimg)
            against = "" if cut is None else f" against the cut {cut['cut']:.4g}"
            why = (
                f"pruned: interim FID {score.fid:.4g} ± {score.spread:.2g} (NFE {nfe}, "
                f"{config.outer.interim} schedule, {len(score.values)} held-out seed sets) "
                f"after {nimg} training images, behind the other trials at this rung"
                f"{against} ({config.outer.pruner})"
            )
            records.write_prune_reason(trial, why)
            raise optuna.TrialPruned(why)

    return at_checkpoint


def note_same_objective(trial: optuna.trial.Trial, description: ObjectiveDescription) -> None:
    """Note on the trial when an earlier trial has the same effective weighting W(lambda):
    the same objective up to gradient variance (Kingma & Gao 2023)."""

    study_trials = trial.study.get_trials(deepcopy=False)
    for other in study_trials:
        if other.number >= trial.number:
            continue
        desc = records.objective_of(other)
        if desc and desc != description and same_effective_weighting(desc, description):
            name = records.name_of(other)
            records.write_note(
                trial,
                f"same W(λ) as trial {other.number}{f' ({name})' if name else ''}: the same "
                "objective up to gradient variance",
            )
            return


def upload_model(
    ctx: RunContext,
    trial: optuna.trial.Trial,
    ema: torch.nn.Module,
    description: ObjectiveDescription,
    path: Path,
    nimg: int,
) -> None:
    """Write the trained model's file and attach it to the trial as an Optuna artifact."""
    config = ctx.config
    save_model_file(
        path,
        net=ema,
        network=config.network.name,
        network_params=dict(config.network.params),
        shape=ctx.shape,
        parameterisation=description["parameterisation"],
        sigma_data=ctx.sigma_data,
        dataset=config.dataset,
        nimg=nimg,
    )
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=ctx.artifact_store,
        file_path=str(path),
        study_or_trial=trial,
        mimetype="application/octet-stream",
    )
    records.write_model_artifact(trial, artifact_id)


def tune_all_budgets(
    ctx: RunContext,
    denoiser: Denoiser,
    trial: optuna.trial.Trial,
    original: int,
    training: Density | None = None,
) -> dict[int, InnerRecord]:
    """One inner study per NFE budget (named by the original trial, so a retry resumes
    them), in the config's order, each started from what the budgets before it found for
    this model and what the study's other trials found (``inner.transfer_schedules``), and
    warm-started with the best params of the other trials at the same NFE."""
    prefix = f"{ctx.config.name}/trial-{original:04d}"
    link = records.outer_link(ctx.config.name, trial.number, original)
    found = best_so_far_by_nfe(ctx, exclude_prefix=prefix)
    # the best of the other trials at each budget: their sigma ranges and densities are tried
    # by every new inner study, whatever its NFE
    others = {f"best_nfe{k}": found[k][0] for k in ctx.config.inner.nfe_budgets if found.get(k)}
    done: dict[int, InnerRecord] = {}
    for nfe in ctx.config.inner.nfe_budgets:
        done[nfe] = tune_steps(
            ctx,
            denoiser,
            inner_study_name(prefix, nfe),
            nfe,
            link=link,
            warm_start=warm_start_params(found.get(nfe, [])),
            transfer={**{f"nfe{k}": r for k, r in done.items()}, **others},
            training=training,
        )
    return done
