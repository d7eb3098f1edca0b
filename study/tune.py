"""Inner studies alone: tune sampling step locations for a model you already have.

The model is a sigmatune model file (``--checkpoint``) or any k-diffusion-style denoiser
``D(x, sigma) -> x0_hat`` returned by a ``module:function`` (called with no arguments).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from sigmatune.study import bilevel
from sigmatune.study.config import Config
from sigmatune.study.trials import load_model_file


def load_denoiser_spec(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` and call the function; it must return ``D(x, sigma)``."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"denoiser must be 'module:function' (e.g. 'mypkg.models:load_denoiser'), "
            f"but got {spec!r}"
        )
    module_name, func_name = spec.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} of denoiser {spec!r}: {exc}"
        ) from exc
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise ValueError(
            f"module {module_name!r} has no callable {func_name!r} (denoiser {spec!r})"
        )
    denoiser = func()
    if not callable(denoiser):
        raise ValueError(
            f"{spec!r} returned {type(denoiser).__name__}, which is not callable as D(x, sigma)"
        )
    return denoiser


@dataclass
class GapFigures:
    """How much of the way from ``karras`` rho = 7 to a many-step reference the tuned
    schedule goes, in the study's score and (with a known true distribution) in sliced
    Wasserstein distance on fresh seeds: ``gap_closed = (karras - tuned) / (karras - ref)``."""

    reference_steps: int
    score: dict[str, float]  # karras_rho7, tuned, reference, gap_closed
    sliced_wasserstein: dict[str, float] | None = None  # the same, plus true_vs_true


@dataclass
class TuneSummary:
    prefix: str
    results: dict[int, bilevel.InnerResult]
    lines: list[str]
    gaps: dict[int, GapFigures] = field(default_factory=dict)


def gap_closed(baseline: float, tuned: float, reference: float) -> float:
    """``(baseline - tuned) / (baseline - reference)``; nan where the baseline is already at
    the reference (no gap to close) or a figure is not finite."""
    gap = baseline - reference
    if not (math.isfinite(gap) and gap > 0 and math.isfinite(tuned)):
        return math.nan
    return (baseline - tuned) / gap


# Seeds for the independent check: far from the study's (1e6 * seed onwards), so the
# tuned schedule is judged on noise it was not tuned on.
CHECK_SEED_OFFSET = 10**9


def measure_gaps(
    ctx: bilevel.RunContext,
    D: Callable[..., Any],
    result: bilevel.InnerResult,
    sampler_kwargs: dict[str, Any],
    *,
    reference_steps: int,
    num_samples: int = 4000,
) -> GapFigures:
    """Score a ``reference_steps``-step karras schedule of the tuned sampler, and, where the
    data set has an analytic distribution, compare karras, tuned and reference samples with
    true samples in sliced Wasserstein distance on fresh seeds."""
    from sigmatune.models.samplers import generate
    from sigmatune.models.schedules import karras
    from sigmatune.objectives.distances import sliced_wasserstein
    from sigmatune.study import spaces
    from sigmatune.study.trials import score_schedule

    config = ctx.config
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    base = spaces.baseline_schedules(config, result.nfe)["karras_rho7"]
    ref_sigmas = karras(reference_steps, smin, smax, spaces.KARRAS_RHO)
    schedules = {
        "karras_rho7": (base.sampler, base.sigmas, dict(base.sampler_kwargs)),
        "tuned": (result.best_sampler, torch.tensor(result.best_sigmas), sampler_kwargs),
        "reference": (result.best_sampler, ref_sigmas, {}),
    }
    score = {
        "karras_rho7": float(result.baseline_fid["karras_rho7"]),
        "tuned": float(result.best_fid),
        "reference": score_schedule(ctx, D, result.best_sampler, ref_sigmas),
    }
    score["gap_closed"] = gap_closed(score["karras_rho7"], score["tuned"], score["reference"])
    sw = None
    truth = getattr(ctx.data, "analytic", None)
    if truth is not None:
        g = torch.Generator().manual_seed(CHECK_SEED_OFFSET + config.seed)
        true_a = truth.sample(num_samples, generator=g)
        true_b = truth.sample(num_samples, generator=g)
        seeds = range(CHECK_SEED_OFFSET, CHECK_SEED_OFFSET + num_samples)
        sw = {"true_vs_true": sliced_wasserstein(true_a, true_b)}
        for name, (sampler, sigmas, kwargs) in schedules.items():
            x = torch.cat(
                list(
                    generate(
                        D,
                        sigmas,
                        sampler,
                        seeds,
                        ctx.shape,
                        config.inner.batch_size,
                        device=ctx.device,
                        **kwargs,
                    )
                )
            )
            sw[name] = sliced_wasserstein(x.cpu(), true_a)
        sw["gap_closed"] = gap_closed(sw["karras_rho7"], sw["tuned"], sw["reference"])
    return GapFigures(reference_steps=reference_steps, score=score, sliced_wasserstein=sw)


def format_gaps(nfe: int, gaps: GapFigures) -> str:
    sc = gaps.score
    line = (
        f"nfe {nfe}: gap to a {gaps.reference_steps}-step reference closed "
        f"{sc['gap_closed']:.1%} in FID (karras {sc['karras_rho7']:.4g}, tuned "
        f"{sc['tuned']:.4g}, reference {sc['reference']:.4g})"
    )
    sw = gaps.sliced_wasserstein
    if sw is not None:
        line += (
            f"; {sw['gap_closed']:.1%} in sliced Wasserstein to true samples on fresh seeds "
            f"(karras {sw['karras_rho7']:.4g}, tuned {sw['tuned']:.4g}, reference "
            f"{sw['reference']:.4g}, true vs true {sw['true_vs_true']:.4g})"
        )
    return line


def tune_sampling(
    config: Config,
    *,
    checkpoint: str | None = None,
    denoiser: str | Callable[..., Any] | None = None,
    study_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    context: bilevel.RunContext | None = None,
    reference_steps: int = 256,
) -> TuneSummary:
    """Run (or resume) one inner study per NFE budget of ``config`` for one model; then,
    unless ``reference_steps`` is 0, measure how much of the gap between ``karras`` rho = 7
    and a ``reference_steps``-step reference the tuned schedule closes (:func:`measure_gaps`)."""
    if (
        isinstance(reference_steps, bool)
        or int(reference_steps) != reference_steps
        or not (reference_steps == 0 or reference_steps >= 2)
    ):
        raise ValueError(
            f"reference_steps must be 0 (no reference) or an integer >= 2, "
            f"but got reference_steps={reference_steps}"
        )
    if (checkpoint is None) == (denoiser is None):
        raise ValueError(
            "give exactly one of checkpoint (a model file) or denoiser ('module:function')"
        )
    if checkpoint is not None:
        source = str(checkpoint)
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"checkpoint {source!r} does not exist; pass a model file written by "
                "`sigmatune run` (see `sigmatune status`) or use --denoiser module:function"
            )
    else:
        source = denoiser if isinstance(denoiser, str) else getattr(denoiser, "__name__", "D")
    D = load_denoiser_spec(denoiser) if isinstance(denoiser, str) else denoiser
    ctx = context or bilevel.make_context(config, progress=progress, log=log)
    if checkpoint is not None:
        D, payload = load_model_file(checkpoint, device=ctx.device)
        if tuple(payload["shape"]) != ctx.shape:
            raise ValueError(
                f"checkpoint {source!r} makes samples of shape {tuple(payload['shape'])}, but "
                f"dataset {config.dataset!r} has shape {ctx.shape}"
            )
    prefix = study_name or f"{config.name}-sampling"
    results: dict[int, bilevel.InnerResult] = {}
    lines: list[str] = []
    for nfe in config.inner.nfe_budgets:
        result = bilevel.run_inner_study(
            ctx,
            D,
            bilevel.inner_study_name(prefix, nfe),
            nfe,
            outer_link={"sigmatune:source": source},
        )
        results[nfe] = result
        karras = result.baseline_fid.get("karras_rho7")
        loglin = result.baseline_fid.get("loglinear")
        line = f"nfe {nfe}: best {result.best_fid:.4g} ({result.best_sampler})"
        if karras:
            line += f"  karras_rho7 {karras:.4g} (x{result.best_fid / karras:.3g})"
        if loglin:
            line += f"  loglinear {loglin:.4g}"
        lines.append(line)
        log(line)
    gaps: dict[int, GapFigures] = {}
    if reference_steps:
        for nfe, result in results.items():
            study = optuna.load_study(study_name=result.study_name, storage=ctx.storage)
            best = bilevel.best_of(study)
            kwargs = dict(best.user_attrs.get("sampler_kwargs", {})) if best else {}
            gaps[nfe] = measure_gaps(ctx, D, result, kwargs, reference_steps=reference_steps)
            study.set_user_attr(
                "tune:gaps",
                {
                    "reference_steps": reference_steps,
                    "score": gaps[nfe].score,
                    "sliced_wasserstein": gaps[nfe].sliced_wasserstein,
                },
            )
            line = format_gaps(nfe, gaps[nfe])
            lines.append(line)
            log(line)
    return TuneSummary(prefix=prefix, results=results, lines=lines, gaps=gaps)
