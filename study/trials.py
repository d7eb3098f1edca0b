"""The two Optuna objectives: ``train_trial`` (outer) and ``sample_trial`` (inner).

Both take a :class:`~study.bilevel.RunContext` (data set, scorer, storage, config) through
``functools.partial``; neither holds state of its own. A broken trial fails with its reason
in the user attr ``"sigmatune:fail_reason"``; a pruned one raises ``optuna.TrialPruned``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial

from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.samplers import generate
from sigmatune.models.training import train
from sigmatune.objectives.loss import objective_from_description
from sigmatune.study import spaces

if TYPE_CHECKING:
    from sigmatune.study.bilevel import RunContext

SCHEMA = 1
FAIL_REASON = "sigmatune:fail_reason"
PRUNE_REASON = "sigmatune:prune_reason"
# What every inner trial's schedule is scored at, for pruning at equal image counts.
REPORT_FRACTIONS = (0.25, 0.5, 1.0)


def original_trial_number(trial: optuna.trial.BaseTrial) -> int:
    """The number of the trial this one retries (itself when it is no retry)."""
    if isinstance(trial, FrozenTrial):
        attrs = trial.system_attrs
    else:  # a live Trial keeps its system attributes in the storage only
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    failed = attrs.get("failed_trial")
    return int(failed) if failed is not None else int(trial.number)


def record_failure(trial: optuna.trial.BaseTrial, exc: BaseException) -> None:
    """Store why a trial failed, where optuna-dashboard and ``sigmatune status`` show it."""
    try:
        trial.set_user_attr(FAIL_REASON, f"{type(exc).__name__}: {exc}")
    except Exception:  # the storage itself may be what failed
        pass


def generation_seeds(ctx: RunContext, num_images: int | None = None) -> range:
    """The fixed seeds every inner trial of a run generates with (common random numbers)."""
    n = ctx.config.inner.fid_num_images if num_images is None else num_images
    base = 1_000_000 * int(ctx.config.seed)
    return range(base, base + n)


def score_schedule(
    ctx: RunContext,
    denoiser: Any,
    sampler: str,
    sigmas: torch.Tensor,
    sampler_kwargs: dict[str, Any] | None = None,
    *,
    num_images: int | None = None,
    trial: optuna.trial.Trial | None = None,
    prune: bool = False,
) -> float:
    """Generate with the run's fixed seeds and score; report prefixes to ``trial``."""
    seeds = generation_seeds(ctx, num_images)
    batches = generate(
        denoiser,
        sigmas,
        sampler,
        seeds,
        ctx.shape,
        ctx.config.inner.batch_size,
        device=ctx.device,
        **(sampler_kwargs or {}),
    )
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


def sample_trial(trial: optuna.trial.Trial, ctx: RunContext, denoiser: Any, nfe: int) -> float:
    """Inner objective: suggest step locations, generate with fixed seeds, return FID."""
    try:
        choice = spaces.suggest_schedule(trial, ctx.config, nfe)
        trial.set_user_attr("sigmatune:schema", SCHEMA)
        trial.set_user_attr("sampler", choice.sampler)
        trial.set_user_attr("sampler_kwargs", dict(choice.sampler_kwargs))
        trial.set_user_attr("sigmas", [float(s) for s in choice.sigmas])
        is_baseline = trial.user_attrs.get("baseline") is not None
        # Prefix scores are reported (each costs a score and a storage write) only where a
        # pruner reads them; baselines report them too, for the median, but are never pruned.
        pruning = spaces.inner_pruning(ctx.config)
        return score_schedule(
            ctx,
            denoiser,
            choice.sampler,
            choice.sigmas,
            choice.sampler_kwargs,
            trial=trial if pruning else None,
            prune=pruning and not is_baseline,
        )
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        record_failure(trial, exc)
        raise


def save_model_file(
    path: Path,
    *,
    net: torch.nn.Module,
    network: str,
    network_params: dict[str, Any],
    shape: tuple[int, ...],
    parameterisation: str,
    sigma_data: float,
    dataset: str,
    nimg: int,
) -> None:
    """A self-describing model file: weights plus what rebuilds the denoiser.

    Loadable with ``torch.load(weights_only=True)`` (tensors and plain Python values only).
    """
    payload = {
        "sigmatune:schema": SCHEMA,
        "network": network,
        "network_params": dict(network_params),
        "shape": list(shape),
        "parameterisation": parameterisation,
        "sigma_data": float(sigma_data),
        "dataset": dataset,
        "nimg": int(nimg),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[Denoiser, dict]:
    """Rebuild the denoiser a model file describes; raise ``FileNotFoundError`` clearly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass a model file written by "
            "`sigmatune run` (exported with the trial's artifacts) or a module:function denoiser"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "network" not in payload:
        raise ValueError(
            f"{str(path)!r} is not a sigmatune model file (it lacks 'network' and 'state_dict')"
        )
    shape = tuple(int(s) for s in payload["shape"])
    net = make_network(payload["network"], payload["network_params"], shape)
    net.load_state_dict(payload["state_dict"])
    net.eval().to(device)
    denoiser = Denoiser(net, payload["parameterisation"], payload["sigma_data"])
    return denoiser, payload


def train_trial(trial: optuna.trial.Trial, ctx: RunContext) -> float:
    """Outer objective: suggest a training weighting, train, tune sampling, return best FID."""
    from sigmatune.study import bilevel  # bilevel imports this module

    config = ctx.config
    original = original_trial_number(trial)
    try:
        objective = spaces.suggest_objective(trial, config, ctx.sigma_data)
        description = objective.describe()
        trial.set_user_attr("sigmatune:schema", SCHEMA)
        trial.set_user_attr("sigmatune:objective", description)
        trial.set_user_attr("sigmatune:original_trial", original)
        # Rebuilt from its description so that what is stored is exactly what is trained.
        objective = objective_from_description(description)

        torch.manual_seed(config.seed)
        net = make_network(config.network.name, dict(config.network.params), ctx.shape)
        trial_dir = ctx.work_dir / f"trial-{original:04d}"
        primary = config.inner.nfe_budgets[0]
        baseline = spaces.baseline_schedules(config, primary)["karras_rho7"]
        interim_images = max(2, config.inner.fid_num_images // 2)

        def at_checkpoint(nimg: int, ema: torch.nn.Module, *_: Any, **__: Any) -> None:
            if nimg >= config.train.train_nimg:
                return  # the final model is scored by the inner studies
            den = Denoiser(ema, description["parameterisation"], ctx.sigma_data).eval()
            fid = score_schedule(
                ctx,
                den,
                baseline.sampler,
                baseline.sigmas,
                baseline.sampler_kwargs,
                num_images=interim_images,
            )
            trial.report(fid, nimg)
            if trial.should_prune():
                why = (
                    f"pruned: interim FID {fid:.4g} (karras_rho7, {interim_images} images) "
                    f"after {nimg} training images, worse than the median of earlier trials"
                )
                trial.set_user_attr(PRUNE_REASON, why)
                raise optuna.TrialPruned(why)

        result = train(
            net,
            objective,
            ctx.data.x,
            train_nimg=config.train.train_nimg,
            batch_size=config.train.batch_size,
            lr=config.train.lr,
            ema_halflife_nimg=config.train.ema_halflife_nimg,
            seed=config.seed,
            checkpoint_dir=trial_dir / "checkpoints",
            checkpoint_nimg=config.train.checkpoint_nimg,
            callback=at_checkpoint,
            device=ctx.device,
            progress=ctx.progress,
            grad_clip=config.train.grad_clip or None,
            desc=f"trial {trial.number} train",
        )
        trial.set_user_attr("train:resumed_from_nimg", int(result.resumed_from_nimg))
        trial.set_user_attr(
            "train:nimg_this_process", int(result.nimg) - int(result.resumed_from_nimg)
        )

        model_path = trial_dir / "model.pt"
        save_model_file(
            model_path,
            net=result.ema,
            network=config.network.name,
            network_params=dict(config.network.params),
            shape=ctx.shape,
            parameterisation=description["parameterisation"],
            sigma_data=ctx.sigma_data,
            dataset=config.dataset,
            nimg=result.nimg,
        )
        if "sigmatune:model_artifact" not in trial.user_attrs:
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=ctx.artifact_store,
                file_path=str(model_path),
                study_or_trial=trial,
                mimetype="application/octet-stream",
            )
            trial.set_user_attr("sigmatune:model_artifact", artifact_id)

        denoiser = Denoiser(
            result.ema.to(ctx.device), description["parameterisation"], ctx.sigma_data
        ).eval()
        results = bilevel.run_inner_studies(
            ctx, denoiser, prefix=f"{config.name}/trial-{original:04d}", outer_trial=trial
        )
        trial.set_user_attr("inner:studies", {str(k): r.study_name for k, r in results.items()})
        trial.set_user_attr("inner:best_fid", {str(k): r.best_fid for k, r in results.items()})
        trial.set_user_attr(
            "inner:baseline_fid", {str(k): r.baseline_fid for k, r in results.items()}
        )
        trial.set_user_attr(
            "inner:best_params", {str(k): r.best_params for k, r in results.items()}
        )
        trial.set_user_attr(
            "inner:best_sigmas", {str(k): r.best_sigmas for k, r in results.items()}
        )
        trial.set_user_attr(
            "inner:best_sampler", {str(k): r.best_sampler for k, r in results.items()}
        )
        return results[primary].best_fid
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        record_failure(trial, exc)
        raise
