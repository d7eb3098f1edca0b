"""``sigmatune tune-sampling``: inner studies alone, for a model you already have.

The model is a sigmatune model file (``--checkpoint``), any k-diffusion-style denoiser
``D(x, sigma) -> x0_hat`` returned by a ``module:function`` (called with no arguments), or a
local diffusers model folder (``diffusers:PATH``; its sample shape and sigma range are its own,
a latent pipeline's samples are decoded by its VAE before scoring, and the study stores its
scheduler config for ``export --format diffusers``). The
studies are stored like a ``run``'s: an outer study ``PREFIX`` of kind ``"sampling"`` whose
trials (one per invocation) hold the inner records of ``PREFIX/nfe-K``, so ``status``,
``export``, ``report`` and ``dashboard`` read them like any other study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from sigmatune.models.samplers import DenoiserFn, generate
from sigmatune.models.schedules import karras
from sigmatune.objectives.distances import sliced_wasserstein
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records, spaces
from sigmatune.study.config import Config
from sigmatune.study.context import STATS_PREFIX, RunContext, make_context, resolve_device
from sigmatune.study.denoisers import (
    CheckedDenoiser,
    is_diffusers_spec,
    load_denoiser_spec,
    load_diffusers,
    model_info,
    model_sigma_range,
    probe_denoiser,
)
from sigmatune.study.errors import USER_ERRORS
from sigmatune.study.inner import inner_study_name, tune_steps
from sigmatune.study.modelfile import load_model_file, read_model_file
from sigmatune.study.records import InnerRecord, Schedule
from sigmatune.study.run import check_stored_config, wait_until_initialised
from sigmatune.study.schedules import density_record
from sigmatune.study.scoring import floors, score_schedule


def _no_trial_completed(ctx: RunContext, study_name: str) -> ValueError | None:
    """Why an inner study has no complete trial (its search ended with every trial failed or
    pruned), as one paragraph with the first failure's reason; None when that is not so (the
    error was another one)."""
    study = optuna.load_study(study_name=study_name, storage=ctx.storage)
    trials = study.get_trials(deepcopy=False)
    ended = (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    if not trials or any(t.state not in ended for t in trials):
        return None
    reasons = [
        str(records.fail_reason(t))
        for t in trials
        if t.state == optuna.trial.TrialState.FAIL and records.fail_reason(t)
    ]
    others = len(set(reasons)) - 1
    return ValueError(
        f"no trial of inner study {study_name!r} completed (it has {len(trials)}); "
        + (f"the first failed with {reasons[0]}" if reasons else "none stored a reason")
        + (f" ({others} other reason(s) in its trials' user attrs)" if others > 0 else "")
        + ". Check the denoiser over the config's sigma range at inner.batch_size samples, "
        "then run the same command again"
    )


def gap_closed(baseline: float | None, tuned: float | None, reference: float | None) -> float:
    """``(baseline - tuned) / (baseline - reference)``; nan where the baseline is already at
    the reference (no gap to close) or a figure is missing or not finite."""
    if baseline is None or tuned is None or reference is None:
        return math.nan
    gap = baseline - reference
    if not (math.isfinite(gap) and gap > 0 and math.isfinite(tuned)):
        return math.nan
    return (baseline - tuned) / gap


@dataclass
class GapFigures:
    """How much of the way from a baseline to a many-step reference the tuned schedule
    goes, on held-out seeds: ``gap_closed = (baseline - tuned) / (baseline - reference)``,
    against karras rho=7 on the full range (``gap_closed``) and on the tuned schedule's own
    range (``placement_gap_closed``: what step placement alone did); in the study's score
    and, for data with a known distribution, in sliced Wasserstein distance."""

    reference_steps: int
    score: dict[str, float]
    sliced_wasserstein: dict[str, float] | None = None


@dataclass
class TuneSummary:
    prefix: str
    results: dict[int, InnerRecord]
    lines: list[str]
    gaps: dict[int, GapFigures] = field(default_factory=dict)


# Seeds of the sliced-Wasserstein check: far from the study's (1e6 * seed onwards).
CHECK_SEED_OFFSET = 10**9


def _gaps(values: dict[str, float | None]) -> dict[str, float]:
    out = {k: (math.nan if v is None else float(v)) for k, v in values.items()}
    out["gap_closed"] = gap_closed(values["karras_rho7"], values["tuned"], values["reference"])
    out["placement_gap_closed"] = gap_closed(
        values["karras_rho7_same_range"], values["tuned"], values["reference"]
    )
    return out


def measure_gaps(
    ctx: RunContext,
    D: DenoiserFn,
    record: InnerRecord,
    *,
    reference_steps: int,
    num_samples: int = 4000,
) -> GapFigures:
    """Score a ``reference_steps``-step karras schedule of the tuned sampler on the held-out
    sets, and, where the data set has an analytic distribution, compare the schedules with
    true samples in sliced Wasserstein distance on fresh seeds."""

    config = ctx.config
    tuned = record.tuned
    reference = Schedule(
        tuned.sampler,
        tuple(
            float(s)
            for s in karras(reference_steps, config.sigma_min, config.sigma_max, spaces.KARRAS_RHO)
        ),
    )
    held = record.held_out
    assert held is not None
    ref = [score_schedule(ctx, D, reference, ctx.seeds.held_out(k)) for k in range(held.seeds[2])]
    score = _gaps(
        {
            "karras_rho7": held.mean("karras_rho7"),
            "karras_rho7_same_range": held.mean("karras_rho7_same_range"),
            "tuned": held.mean("tuned"),
            "reference": sum(ref) / len(ref),
        }
    )
    truth = getattr(ctx.data, "analytic", None)
    if truth is None:
        return GapFigures(reference_steps, score)
    g = torch.Generator().manual_seed(CHECK_SEED_OFFSET + config.seed)
    true_a = truth.sample(num_samples, generator=g)
    true_b = truth.sample(num_samples, generator=g)
    seeds = range(CHECK_SEED_OFFSET, CHECK_SEED_OFFSET + num_samples)
    sw: dict[str, float | None] = {"true_vs_true": sliced_wasserstein(true_a, true_b)}
    schedules = {
        **{k: record.schedules[k] for k in ("tuned", "karras_rho7", "karras_rho7_same_range")},
        "reference": reference,
    }
    for name, sched in schedules.items():
        x = torch.cat(
            list(
                generate(
                    D,
                    torch.tensor(sched.sigmas, dtype=torch.float64),
                    sched.sampler,
                    seeds,
                    ctx.shape,
                    config.inner.batch_size,
                    device=ctx.device,
                    **sched.sampler_kwargs,
                )
            )
        )
        sw[name] = sliced_wasserstein(x.cpu(), true_a)
    return GapFigures(reference_steps, score, _gaps(sw))


def format_gaps(nfe: int, gaps: GapFigures) -> str:
    sc = gaps.score
    line = (
        f"nfe {nfe}: on held-out seeds, the gap to a {gaps.reference_steps}-step reference is "
        f"closed {sc['gap_closed']:.1%} from karras ρ=7 and {sc['placement_gap_closed']:.1%} "
        f"from karras ρ=7 on the tuned σ range, in FID (karras {sc['karras_rho7']:.4g}, same "
        f"range {sc['karras_rho7_same_range']:.4g}, tuned {sc['tuned']:.4g}, reference "
        f"{sc['reference']:.4g})"
    )
    sw = gaps.sliced_wasserstein
    if sw is not None:
        line += (
            f"; {sw['gap_closed']:.1%} and {sw['placement_gap_closed']:.1%} in sliced "
            f"Wasserstein to true samples (karras {sw['karras_rho7']:.4g}, same range "
            f"{sw['karras_rho7_same_range']:.4g}, tuned {sw['tuned']:.4g}, reference "
            f"{sw['reference']:.4g}, true vs true {sw['true_vs_true']:.4g})"
        )
    return line


def _check_reference_steps(reference_steps: Any) -> int:
    if (
        isinstance(reference_steps, bool)
        or int(reference_steps) != reference_steps
        or not (reference_steps == 0 or reference_steps >= 2)
    ):
        raise ValueError(
            f"reference_steps must be 0 (no reference) or an integer >= 2, "
            f"but got reference_steps={reference_steps}"
        )
    return int(reference_steps)


def open_sampling_study(
    ctx: RunContext, prefix: str, source: str, info: dict[str, Any] | None = None
) -> optuna.Study:
    """The outer study of kind "sampling" that holds a tune-sampling's results (``info``: a
    diffusers model's, :func:`sigmatune.study.denoisers.model_info`)."""
    scorer_floors = floors(ctx)
    study, created = adapter.create_or_load(
        prefix,
        ctx.storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )
    if created:
        config = ctx.config.replace(name=prefix)
        adapter.set_metric_names(study, [f"FID (held-out, NFE {ctx.config.inner.nfe_budgets[0]})"])
        if info is not None:
            records.write_model_info(study, info)
        records.init_outer_study(
            study, config, kind="sampling", floors=scorer_floors, source=source
        )
    else:
        wait_until_initialised(study, ctx.poll_seconds)
        check_stored_config(study, ctx.config.replace(name=prefix))
    return study


def tune_sampling(
    config: Config,
    *,
    checkpoint: str | None = None,
    denoiser: str | DenoiserFn | None = None,
    study_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    context: RunContext | None = None,
    reference_steps: int = 256,
    diffusers_options: dict[str, Any] | None = None,
    sigma_range_from_model: Sequence[str] = ("sigma_min", "sigma_max"),
) -> TuneSummary:
    """Run (or resume) one inner study per NFE budget of ``config`` for one model, re-score
    on held-out seeds, and, unless ``reference_steps`` is 0, measure the gap closed to a
    ``reference_steps``-step reference (:func:`measure_gaps`). The model is checked before
    any expensive work (the FID reference is built only for a model that loads); a user's
    denoiser is tried on the data set's shape (:func:`probe_denoiser`) before anything is
    created, and every later call of it is checked (:class:`CheckedDenoiser`).

    A diffusers model (``denoiser="diffusers:PATH"``, with ``diffusers_options``: labels,
    guidance_scale, null_label, timestep_mode) gives the sample shape; the config keys in
    ``sigma_range_from_model`` (those the user did not set) take the model's own sigma range,
    and a range outside the model's is refused before anything is written. With a reference
    given as statistics (dataset ``stats:PATH``) there is no floor: it is stored and printed
    as unknown. Progress lines (unless ``progress`` is False) say what runs, per budget."""
    reference_steps = _check_reference_steps(reference_steps)
    if (checkpoint is None) == (denoiser is None):
        raise ValueError(
            "give exactly one of checkpoint (a model file) or denoiser ('module:function')"
        )
    prefix = study_name or f"{config.name}-sampling"
    config.replace(name=prefix)  # a name that is too long or has a '/' fails here
    device = context.device if context is not None else resolve_device(config.device)
    diffusers_model = None
    if checkpoint is not None:
        source = str(checkpoint)
        payload = read_model_file(checkpoint)
    else:
        source = denoiser if isinstance(denoiser, str) else getattr(denoiser, "__name__", "D")
    if is_diffusers_spec(denoiser):
        diffusers_model = load_diffusers(str(denoiser), device, diffusers_options)
        config = model_sigma_range(config, diffusers_model, sigma_range_from_model)
        D = diffusers_model
    elif diffusers_options and any(v is not None for v in diffusers_options.values()):
        raise ValueError(
            "class labels, guidance scale and null label are options of a diffusers model "
            f"(--denoiser diffusers:PATH), but the model is {source!r}"
        )
    else:
        D = load_denoiser_spec(denoiser) if isinstance(denoiser, str) else denoiser
    say = log if progress and (context is None or context.progress) else (lambda _: None)

    def check_model(data: Any) -> None:
        if diffusers_model is not None:
            image_shape = tuple(diffusers_model.image_shape)
            if tuple(data.shape) != image_shape:
                raise ValueError(
                    f"the diffusers model {source!r} makes images of shape {image_shape}, but "
                    f"dataset {config.dataset!r} has shape {tuple(data.shape)}; give a data "
                    "set (or FID statistics, stats:PATH) of the model's images"
                )
            probe_denoiser(
                D,
                source,
                diffusers_model.shape,
                sigma_min=float(config.sigma_min),
                sigma_max=float(config.sigma_max),
                device=device,
                x0=data.x if diffusers_model.vae is None else None,
            )
            return
        if checkpoint is not None and tuple(payload["shape"]) != tuple(data.shape):
            raise ValueError(
                f"checkpoint {source!r} makes samples of shape {tuple(payload['shape'])}, but "
                f"dataset {config.dataset!r} has shape {tuple(data.shape)}"
            )
        if checkpoint is None:  # a user's denoiser, tried before anything is created
            probe_denoiser(
                D,
                source,
                data.shape,
                sigma_min=float(config.sigma_min),
                sigma_max=float(config.sigma_max),
                device=device,
                x0=data.x,
            )

    if diffusers_model is not None:
        dm = diffusers_model
        say(
            f"tune-sampling: diffusers model {source} ({dm.kind.upper()}, prediction "
            f"{dm.prediction_type}, samples {tuple(dm.shape)}"
            + (f" decoded to images {tuple(dm.image_shape)}" if dm.vae is not None else "")
            + f"), sigma range [{float(config.sigma_min):.6g}, {float(config.sigma_max):.6g}]"
        )
    say(
        f"tune-sampling: preparing the FID reference of {config.dataset!r} "
        f"({config.inner.fid_extractor} features"
        + (
            "; read from the statistics file)"
            if config.dataset.startswith(STATS_PREFIX)
            else "; computed once, then cached)"
        )
    )
    model_kwargs: dict[str, Any] = {}
    if diffusers_model is not None:
        model_kwargs = {
            "image_shape": tuple(diffusers_model.image_shape),
            "sample_shape": tuple(diffusers_model.shape),
            "decode": diffusers_model.decode if diffusers_model.vae is not None else None,
        }
    ctx = context or make_context(
        config, progress=progress, log=log, check_data=check_model, **model_kwargs
    )
    if context is not None:
        if diffusers_model is not None:  # (a caller's context: the model's shape and decoder)
            context.sample_shape = model_kwargs["sample_shape"]
            context.decode = model_kwargs["decode"]
        check_model(ctx.data)
    if checkpoint is not None:
        D, _ = load_model_file(checkpoint, device=ctx.device)
    else:
        D = CheckedDenoiser(D, source)
    info = model_info(diffusers_model) if diffusers_model is not None else None
    study = open_sampling_study(ctx, prefix, source, info)
    inner = config.inner
    held_sets, held_images = ctx.seeds.held_out_sets, len(ctx.seeds.held_out(0))
    say(
        f"tune-sampling: study {prefix!r}; NFE budgets {list(inner.nfe_budgets)}, "
        f"{inner.inner_trials} inner trials each on {len(ctx.seeds.search)} images, then "
        f"held-out scoring on {held_sets} set(s) of {held_images} images; floor "
        + ("unknown (the reference is statistics)" if not ctx.floors_available else "known")
    )
    results: dict[int, InnerRecord] = {}
    lines: list[str] = []
    for i, nfe in enumerate(config.inner.nfe_budgets):
        name = inner_study_name(prefix, nfe)
        say(
            f"nfe {nfe} ({i + 1}/{len(config.inner.nfe_budgets)}): searching "
            f"{inner.inner_trials} inner trials over {', '.join(inner.samplers)}, then the "
            "held-out scoring"
        )
        try:
            record = tune_steps(
                ctx,
                D,
                name,
                nfe,
                link={records.OUTER_STUDY: prefix},
                transfer={f"nfe{k}": r for k, r in results.items()},  # the budgets before
            )
        except RuntimeError as exc:  # (inner.summarise: every trial of the search failed)
            failed = None if isinstance(exc, USER_ERRORS) else _no_trial_completed(ctx, name)
            if failed is None:
                raise
            raise failed from None
        results[nfe] = record
        line = f"nfe {nfe}: {record.tuned.sampler}, held-out FID {records.held_out_line(record)}"
        line += f"; search minimum {record.search_fid:.4g} on the search seeds"
        if record.at_bound:
            line += f"; best trial on a bound of the space: {', '.join(record.at_bound)}"
        lines.append(line)
        log(line)
    for warning in records.worse_budgets(results):
        lines.append(f"warning: {warning}")
        log(f"warning: {warning}")
    gaps: dict[int, GapFigures] = {}
    if reference_steps:
        for nfe, record in results.items():
            say(f"nfe {nfe}: scoring the {reference_steps}-step reference on held-out seeds")
            gaps[nfe] = measure_gaps(ctx, D, record, reference_steps=reference_steps)
            line = format_gaps(nfe, gaps[nfe])
            lines.append(line)
            log(line)
    records.add_sampling_trial(
        study, results, gaps={k: vars(v) for k, v in gaps.items()}, density=density_record(results)
    )
    return TuneSummary(prefix=prefix, results=results, lines=lines, gaps=gaps)
