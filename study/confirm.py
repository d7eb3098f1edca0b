"""Confirm an outer study's leaders against the training seed.

Every outer trial trains one model with the run's seed, and its held-out spread is the spread
over *sampling* seeds only. Two configurations whose models differ by less than the spread
over *training* seeds cannot be told apart by one model each: on the gmm32 preset a proposed
configuration scored 0.72x the best literature one, and both trained again with two unused
seeds reversed the order (``benchmarks/outer_check.py``). So before a winner is claimed,
:func:`confirm_study` trains each leading configuration again with seeds the study never used
(``config.seed + 1``, ``+ 2``, ...; every outer trial trains with ``config.seed``), draws each
new model with the trial's tuned schedule at the primary NFE and scores it on every held-out
seed set. A trial's confirmed figure is the mean over its models (the study's and the
retrained ones) of their held-out FIDs, its spread the standard deviation over those models.
The schedule was tuned on the study's model, not on the retrained ones: the study's model
keeps a small advantage over its replicates, alike for every trial, so the ranking of
configurations is fair while a trial's mean leans slightly towards its study model's score.

Each (trial, seed) result is stored as a study user attribute the moment it is measured, and
training resumes its own checkpoints, so a killed ``sigmatune confirm`` resumes with the same
command and never measures a stored pair again.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.training import train
from sigmatune.objectives.loss import objective_from_description
from sigmatune.study import records
from sigmatune.study.artifacts import checkpoint_uploader, fetch_checkpoint
from sigmatune.study.context import RunContext
from sigmatune.study.outer import train_settings
from sigmatune.study.records import StudyRecord, TrialRecord
from sigmatune.study.scoring import score_schedule
from sigmatune.study.storage import short_hash

DEFAULT_TOP = 3
DEFAULT_SEEDS = 2


class ConfirmError(ValueError):
    """A confirmation that cannot be made (bad arguments or study): one paragraph."""


def confirm_seeds(base_seed: int, n: int) -> list[int]:
    """The training seeds of a confirmation: ``base_seed + 1 ... base_seed + n`` (the study
    trains every outer trial with ``base_seed``)."""
    return [int(base_seed) + k for k in range(1, n + 1)]


def pick_trials(study: StudyRecord, top: int, numbers: Sequence[int] | None = None) -> list[int]:
    """The trials to confirm: ``numbers`` when given (each checked), else the ``top`` complete
    trials by their held-out score at the primary NFE, plus the best literature configuration
    and the best proposed trial when those are not among them (the comparison a winner needs).
    """
    nfe = study.primary_nfe
    scored = [t for t in study.complete if nfe in t.inner and t.objective]
    if numbers:
        by_number = {t.number: t for t in study.trials}
        picked = []
        for n in numbers:
            t = by_number.get(int(n))
            if t is None or t not in scored:
                allowed = ", ".join(str(s.number) for s in scored) or "none"
                raise ConfirmError(
                    f"--trials: trial {n} of study {study.name!r} is not a complete trial "
                    f"with a trained model and a tuned schedule at NFE {nfe}; complete "
                    f"trials: {allowed}"
                )
            if t.number not in picked:
                picked.append(t.number)
        return picked
    if top < 1:
        raise ConfirmError(f"--top: {top} is not allowed; give a whole number >= 1")
    ranked = sorted(scored, key=lambda t: (t.inner[nfe].value, t.number))
    picked = [t.number for t in ranked[:top]]
    for group in ([t for t in ranked if t.name], [t for t in ranked if not t.name]):
        if group and group[0].number not in picked:
            picked.append(group[0].number)
    return picked


@dataclass(frozen=True)
class ModelScore:
    """One model of a trial: its training seed, its held-out FIDs (one per seed set)."""

    seed: int
    values: tuple[float, ...]
    retrained: bool

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.values))


@dataclass(frozen=True)
class Confirmation:
    """A trial's models (the study's and the retrained ones) and its confirmed figure."""

    trial: TrialRecord
    nfe: int
    models: tuple[ModelScore, ...]

    @property
    def mean(self) -> float:
        return float(statistics.fmean(m.mean for m in self.models))

    @property
    def spread(self) -> float:
        """The standard deviation of the models' means: the training seed's spread."""
        means = [m.mean for m in self.models]
        return float(statistics.stdev(means)) if len(means) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial.number,
            "name": self.trial.name,
            "label": self.trial.label,
            "nfe": self.nfe,
            "mean": self.mean,
            "spread": self.spread,
            "models": [
                {"seed": m.seed, "retrained": m.retrained, "values": list(m.values)}
                for m in self.models
            ],
        }


def study_model(study: StudyRecord, trial: TrialRecord, nfe: int) -> ModelScore:
    """The trial's own model: its held-out FIDs of the tuned schedule at ``nfe``."""
    held = trial.inner[nfe].held_out
    values = tuple(held.scores["tuned"]) if held is not None else (trial.inner[nfe].value,)
    return ModelScore(int(study.config.seed), tuple(float(v) for v in values), False)


def retrain(ctx: RunContext, study: StudyRecord, trial: TrialRecord, seed: int) -> torch.nn.Module:
    """The trial's configuration trained again as the run trains it, with ``seed``: its own
    checkpoints (resumed after a kill) under the trial's folder, ``confirm-seed-S``."""
    config = study.config
    description = trial.objective
    assert description is not None
    objective = objective_from_description(description)
    torch.manual_seed(seed)
    net = make_network(config.network.name, dict(config.network.params), ctx.shape)
    folder = ctx.run_dir(study.uid) / f"trial-{trial.original_trial:04d}" / f"confirm-seed-{seed}"
    checkpoint_dir = folder / "checkpoints"
    fetch_checkpoint(ctx.artifacts, checkpoint_dir)
    run_key = short_hash(
        study.uid, trial.original_trial, "confirm", seed, config.to_dict()["network"],
        config.dataset, description,
    )  # fmt: skip
    result = train(
        net,
        objective,
        ctx.data.x,
        train_settings(config, seed=seed),
        checkpoint_dir=checkpoint_dir,
        run_key=run_key,
        callback=checkpoint_uploader(ctx.artifacts, checkpoint_dir),
        device=ctx.device,
        progress=ctx.progress,
        desc=f"confirm trial {trial.number}, seed {seed}",
        log=ctx.log,
    )
    return result.ema


def confirm_study(
    ctx: RunContext,
    storage: optuna.storages.BaseStorage,
    study: StudyRecord,
    trials: Sequence[int],
    seeds: Sequence[int],
    *,
    log: Callable[[str], None] = print,
) -> list[Confirmation]:
    """Train each of ``trials`` again with each of ``seeds`` (those stored already are read,
    not measured again), score the trial's tuned schedule at the primary NFE on every held-out
    seed set, store each result at once; the confirmations, best first."""
    if study.kind != "bilevel":
        raise ConfirmError(
            f"study {study.name!r} is a {study.kind!r} study of a given model: there is no "
            "training to confirm (confirm reads the outer study of a `sigmatune run`)"
        )
    nfe = study.primary_nfe
    stored = records.read_confirmations(storage, study.study_id)
    out = []
    for number in trials:
        trial = study.trial(int(number))
        schedule = trial.inner[nfe].tuned
        models = [study_model(study, trial, nfe)]
        for seed in seeds:
            found = stored.get(trial.number, {}).get(int(seed))
            if found is not None and int(found.get("nfe", -1)) == nfe:
                values = tuple(float(v) for v in found["values"])
            else:
                ema = retrain(ctx, study, trial, int(seed))
                D = Denoiser(
                    ema.to(ctx.device), trial.objective["parameterisation"], ctx.sigma_data
                )
                values = tuple(
                    score_schedule(ctx, D.eval(), schedule, ctx.seeds.held_out(k))
                    for k in range(ctx.seeds.held_out_sets)
                )
                records.write_confirmation(
                    storage, study.study_id, trial.number, int(seed), {"nfe": nfe, "values": values}
                )
            models.append(ModelScore(int(seed), values, True))
            log(
                f"confirm: trial {trial.number} ({trial.name or 'proposed'}), training seed "
                f"{seed}: held-out FID {statistics.fmean(values):.4g} at NFE {nfe}"
            )
        out.append(Confirmation(trial, nfe, tuple(models)))
    return sorted(out, key=lambda c: (c.mean, c.trial.number))


def beats(a: Confirmation, b: Confirmation) -> bool:
    """Whether ``a`` is below ``b`` by more than both training-seed spreads added."""
    return a.mean + a.spread + b.spread < b.mean


def verdict(confirmed: Sequence[Confirmation]) -> dict[str, Any]:
    """The best trial after confirmation, and whether the best proposed trial beats the best
    literature configuration by more than both spreads (``None``: one of them is missing)."""
    best = confirmed[0] if confirmed else None
    lit = next((c for c in confirmed if c.trial.name), None)
    proposed = next((c for c in confirmed if not c.trial.name), None)
    return {
        "best": None if best is None else best.trial.number,
        "best_literature": None if lit is None else lit.trial.number,
        "best_proposed": None if proposed is None else proposed.trial.number,
        "proposed_beats_literature": None
        if lit is None or proposed is None
        else beats(proposed, lit),
    }


def _fmt(mean: float, spread: float) -> str:
    return f"{records.fid_text(mean)} ± {records.fid_text(spread, 2)}"


def format_confirmations(
    study: StudyRecord, confirmed: Sequence[Confirmation], seeds: Sequence[int]
) -> str:
    """A table (one row per trial, best first) and the verdict, for people."""
    nfe = study.primary_nfe
    lines = [
        f"study {study.name}: the tuned schedule at NFE {nfe} of each trial, drawn by its "
        f"model (training seed {study.config.seed}) and by the configuration trained again "
        f"with seed(s) {', '.join(str(s) for s in seeds)}; held-out FID, mean ± spread over "
        f"{study.seeds.held_out_sets} seed sets per model, and over the models",
    ]
    head = ["trial", "name", "study's model", *(f"seed {s}" for s in seeds), "all models"]
    rows = []
    for c in confirmed:
        cells = [str(c.trial.number), c.trial.name or "proposed"]
        for m in c.models:
            spread = statistics.stdev(m.values) if len(m.values) > 1 else 0.0
            cells.append(_fmt(m.mean, spread))
        cells.append(_fmt(c.mean, c.spread))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    v = verdict(confirmed)
    if v["best"] is not None:
        best = confirmed[0]
        lines.append(
            f"best after confirmation: trial {best.trial.number} "
            f"({best.trial.name or 'proposed'}) {_fmt(best.mean, best.spread)}"
        )
    if v["proposed_beats_literature"] is not None:
        by = {c.trial.number: c for c in confirmed}
        p, lit = by[v["best_proposed"]], by[v["best_literature"]]
        says = "beats" if v["proposed_beats_literature"] else "does not beat"
        lines.append(
            f"the best proposed trial {p.trial.number} {says} the best literature "
            f"configuration (trial {lit.trial.number}, {lit.trial.name}) by more than both "
            "spreads over models"
        )
    return "\n".join(lines)


def confirmations_json(confirmed: Sequence[Confirmation]) -> dict[str, Any]:
    return {"trials": [c.to_dict() for c in confirmed], "verdict": verdict(confirmed)}
