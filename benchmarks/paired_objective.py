"""The paired objective against FID on the search seeds: which one ranks the schedules of an
inner study as held-out FID does (Spearman), what the paired one costs, and what a search
ranked by each one finds.

For each model (the exact 8-mode ring and 64-D Gaussian mixtures of ``benchmarks.peers``, and
the ``toy`` preset's MLP trained on gmm2d with EDM's defaults) and NFE budget, one inner study
is run as the product runs it (``study.inner``: the toy preset's search, ``inner.objective =
"fid"``, the σ range tuned, the budgets before it transferred, as ``study.outer`` does). Every
schedule that study scored is then scored three ways: its FID on the search seeds (what it
was ranked by), its paired bound on the search seeds (``study.scoring.paired_score``: the
discretisation error against a many-step reference run over its own σ range from the same
noise, with that reference's FID for the range) and its held-out FID (mean over the SeedPlan's
held-out sets, the verdict). The table gives the rank agreement (Spearman's ρ) of each search
objective with the held-out FID over those schedules, per study and per model (the studies
pooled), and the rank agreement of the paired distance alone (no range term).

A second inner study per budget, ranked by the paired bound (``inner.objective = "paired"``,
same seeds, space, starting points and trial budget), gives the held-out FID of the schedule
each objective picks and the denoiser evaluations each search took (the paired one's include
its reference runs, computed once per σ range).

``reference_steps``: the reference's own error, the paired distance between references of 16
to 256 Heun steps and one of 512, on the run's full range and a short one, beside the least
paired distance of any schedule scored; the product's ``study.scoring.REFERENCE_STEPS`` is
chosen from it.

    python -m benchmarks.paired_objective     # ring, gmm64, toy: 9 min on 2 CPUs (13 busy)
    python -m benchmarks.paired_objective --study-images 256 --out bench-out/paired-256.json
    python -m benchmarks.paired_objective --models ring       # one model: about 3 min
    python -m benchmarks.paired_objective --quick --out /tmp/paired.json     # a smoke run
    python -m benchmarks.paired_objective --models ring --nfe 5 9
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from benchmarks._common import (
    BENCH_OUT,
    apply_sizes,
    benchmark_parser,
    fmt,
    format_table,
    limited_threads,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
)
from benchmarks.peers import Counted
from sigmatune.study import inner, records, scoring, spaces
from sigmatune.study.config import Config, load_config
from sigmatune.study.context import RunContext, make_context
from sigmatune.study.records import InnerRecord, Schedule

NAME = "paired_objective"
MODELS = ("ring", "gmm64", "toy")
TOY_NIMG = 128_000  # the toy preset's training budget
REFERENCE_CHECK = (16, 32, 64, 128, 256)
GRID_A = (0.0, 1 / 12, 1 / 7, 0.25, 0.5, 1.0)  # within_range: the densities' Box-Cox a ...
GRID_C = (0.6, 1.0, 1.6)  # ... and warp c
REFERENCE_TRUTH = 512
SHORT_RANGE = (0.05, 3.0)
FULL = {"nfe": [5, 9, 15], "trials": 16, "study_images": None, "toy_nimg": TOY_NIMG}
QUICK = {"nfe": [5, 9], "trials": 8, "study_images": 128, "toy_nimg": 8192}


# ----------------------------------------------------------------------------- contexts


def study_config(args: argparse.Namespace, model: str, objective: str, url: str) -> Config:
    overrides: dict[str, Any] = {
        "name": f"paired-{model}-{objective}",
        "storage": url,
        "seed": args.seed,
        "device": "cpu",
        "inner.nfe_budgets": list(args.nfe),
        "inner.inner_trials": args.trials,
        "inner.tune_sigma_range": True,
        "inner.objective": objective,
    }
    if args.study_images is not None:
        overrides["inner.fid_num_images"] = args.study_images
        overrides["inner.batch_size"] = args.study_images
    return load_config("toy", overrides)


def model_context(
    args: argparse.Namespace, model: str, config: Config, study_log: Callable[[str], None]
) -> tuple[RunContext, Any, str]:
    """The run context, the denoiser and a description of one model."""
    if model == "toy":
        from benchmarks.digits_model import train_digits_model

        cache = BENCH_OUT / f"paired-toy-model-{args.toy_nimg}"
        D, nimg = train_digits_model(load_config("toy"), args.toy_nimg, cache, log=log)
        ctx = make_context(config, progress=False, log=study_log)
        return ctx, D, f"toy preset MLP on gmm2d, EDM defaults, {nimg:,} images"
    from benchmarks.quality_analytic import DESCRIPTIONS, mixture_context, mixture_of

    return mixture_context(config, model, study_log), mixture_of(model), DESCRIPTIONS[model]


# ----------------------------------------------------------------------------- measuring


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties: mean ranks); None under 3 points or a constant."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def run_study(
    ctx: RunContext, D: Any, nfe: int, transfer: Mapping[str, InnerRecord]
) -> tuple[InnerRecord, float, optuna.Study]:
    """One inner study as ``study.inner.tune_steps`` runs it; its record, the denoiser
    evaluations of its search (starting points' peers excluded) and the study."""
    name = inner.inner_study_name(ctx.config.name, nfe)
    counted = Counted(D)
    study = inner.open_inner_study(ctx, counted, name, nfe, transfer=transfer)
    before = counted.evaluations
    inner.run_search(ctx, study, counted, nfe)
    searched = counted.evaluations - before
    return inner.summarise(ctx, study, D, nfe), float(searched), study


def scored_schedules(study: optuna.Study) -> dict[str, tuple[Schedule, float]]:
    """Every distinct schedule a study scored on the search seeds, with that FID."""
    out: dict[str, tuple[Schedule, float]] = {}
    seen: set[tuple[Any, ...]] = set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        schedule = records.read_inner_schedule(t)
        if schedule.key in seen:
            continue
        seen.add(schedule.key)
        out[f"trial{t.number}"] = (schedule, float(t.user_attrs[records.FID]))
    return out


def agreement_rows(
    ctx: RunContext, D: Any, study: optuna.Study, cache: scoring.ReferenceCache
) -> list[dict[str, Any]]:
    """Each scored schedule of a study: its search FID, paired bound and held-out FID."""
    schedules = scored_schedules(study)
    held = scoring.held_out(ctx, D, {k: s for k, (s, _) in schedules.items()})
    rows = []
    for name, (schedule, fid) in schedules.items():
        paired = scoring.paired_score(ctx, D, schedule, ctx.seeds.search, cache)
        rows.append(
            {
                "trial": name,
                "sigma_range": list(schedule.sigma_range),
                "search_fid": fid,
                "paired": paired.to_dict(),
                "held_out_fid": held.mean(name),
                "held_out_spread": held.spread(name),
            }
        )
    return rows


def rank_agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Spearman's ρ of each search objective with held-out FID over ``rows``, and over the
    better half of them by held-out FID (``top_half``: where the search's choice is made; a
    study's few bad schedules otherwise make any objective look good)."""

    def rho(rs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        held = [r["held_out_fid"] for r in rs]
        return {
            "n": len(rs),
            "fid": spearman([r["search_fid"] for r in rs], held),
            "paired": spearman([r["paired"]["value"] for r in rs], held),
            "paired_distance_alone": spearman([r["paired"]["paired"] for r in rs], held),
        }

    best = sorted(rows, key=lambda r: r["held_out_fid"])[: max(len(rows) // 2, 1)]
    return {**rho(rows), "top_half": rho(best)}


def within_range(
    ctx: RunContext, D: Any, tuned: Schedule, cache: scoring.ReferenceCache
) -> dict[str, Any]:
    """Placement alone: the step densities of a grid (:data:`GRID_A` x :data:`GRID_C`, karras
    of every rho and loglinear among them) over one sigma range, the tuned schedule's, scored
    by both objectives and held out; within one range the paired bound ranks as the paired
    distance does (its range term is common to all)."""
    smin, smax = tuned.sigma_range
    n = len(tuned.sigmas) - 1
    schedules = {
        f"a{a:.3g}_c{c:g}": Schedule(
            tuned.sampler, tuple(spaces.density_sigmas(n, smin, smax, a, c).tolist())
        )
        for a in GRID_A
        for c in GRID_C
    }
    held = scoring.held_out(ctx, D, schedules)
    rows = []
    for name, schedule in schedules.items():
        paired = scoring.paired_score(ctx, D, schedule, ctx.seeds.search, cache)
        other = scoring.paired_score(ctx, D, schedule, ctx.seeds.held_out(0), cache)
        rows.append(
            {
                "trial": name,
                "sigma_range": [smin, smax],
                "search_fid": paired.fid,
                "paired": paired.to_dict(),
                "paired_other_seeds": other.to_dict(),
                "held_out_fid": held.mean(name),
                "held_out_spread": held.spread(name),
            }
        )
    # noise: each objective on the search seeds against itself on other seeds (held-out set 0)
    self_agreement = {
        "fid": spearman(
            [r["search_fid"] for r in rows], [r["paired_other_seeds"]["fid"] for r in rows]
        ),
        "paired": spearman(
            [r["paired"]["value"] for r in rows], [r["paired_other_seeds"]["value"] for r in rows]
        ),
    }
    return {
        "range": [smin, smax],
        "schedules": rows,
        "spearman": rank_agreement(rows),
        "self_agreement": self_agreement,
    }


def reference_steps(ctx: RunContext, D: Any) -> list[dict[str, Any]]:
    """The reference's own error: paired distance of references of :data:`REFERENCE_CHECK`
    steps to one of :data:`REFERENCE_TRUTH`, on the run's full range and a short one."""
    full = (float(ctx.config.sigma_min), float(ctx.config.sigma_max))
    out = []
    seeds = ctx.seeds.search
    for rng in (full, SHORT_RANGE):
        truth = scoring.reference_run(ctx, D, *rng, seeds, REFERENCE_TRUTH)
        for steps in REFERENCE_CHECK:
            ref = scoring.reference_run(ctx, D, *rng, seeds, steps)
            distance = float(((ref.features - truth.features) ** 2).sum()) / (len(seeds) - 1)
            out.append({"range": list(rng), "steps": steps, "paired_to_truth": distance})
    return out


def run_model(
    args: argparse.Namespace, model: str, url: str, study_log: Callable[[str], None]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = study_config(args, model, "fid", url)
    ctx, D, description = model_context(args, model, config, study_log)
    paired_ctx = dataclasses.replace(
        ctx, config=study_config(args, model, "paired", url), paired_references=None
    )
    cache = scoring.ReferenceCache(size=64)
    studies = []
    by_objective: dict[str, dict[int, InnerRecord]] = {"fid": {}, "paired": {}}
    for nfe in args.nfe:
        entry: dict[str, Any] = {"nfe": nfe}
        for objective, c in (("fid", ctx), ("paired", paired_ctx)):
            done = by_objective[objective]
            transfer = {f"nfe{k}": r for k, r in done.items()}
            t = time.perf_counter()
            record, evaluations, study = run_study(c, D, nfe, transfer)
            done[nfe] = record
            entry[objective] = {
                "tuned_held_out": record.held_out.mean("tuned"),
                "tuned_spread": record.held_out.spread("tuned"),
                "tuned_origin": record.origin,
                "tuned_sigmas": list(record.tuned.sigmas),
                "search_evaluations": evaluations,
                "search_seconds": time.perf_counter() - t,
            }
            if objective == "fid":
                rows = agreement_rows(ctx, D, study, cache)
                entry["schedules"] = rows
                entry["spearman"] = rank_agreement(rows)
                entry["within_range"] = within_range(ctx, D, record.tuned, cache)
        entry["floor"] = record.held_out.floor
        entry["floor_spread"] = record.held_out.floor_spread
        s = entry["spearman"]
        w = entry["within_range"]["spearman"]
        own = entry["within_range"]["self_agreement"]
        log(
            f"{model} NFE {nfe} within the range {entry['within_range']['range']}: Spearman "
            f"fid {fmt(w['fid'])} paired {fmt(w['paired'])} (n={w['n']}; best half: fid "
            f"{fmt(w['top_half']['fid'])} paired {fmt(w['top_half']['paired'])}); each with "
            f"itself on other seeds: fid {fmt(own['fid'])} paired {fmt(own['paired'])}"
        )
        log(
            f"{model} NFE {nfe}: Spearman fid {fmt(s['fid'])} paired {fmt(s['paired'])} "
            f"(n={s['n']}; best half: fid {fmt(s['top_half']['fid'])} paired "
            f"{fmt(s['top_half']['paired'])}); tuned held-out: fid-ranked "
            f"{fmt(entry['fid']['tuned_held_out'])}, "
            f"paired-ranked {fmt(entry['paired']['tuned_held_out'])}"
        )
        studies.append(entry)
    pooled = rank_agreement([r for e in studies for r in e["schedules"]])
    within = [e["within_range"]["spearman"] for e in studies]
    least = min(r["paired"]["paired"] for e in studies for r in e["schedules"])
    return {
        "description": description,
        "studies": studies,
        "spearman_pooled": pooled,
        "spearman_within_range": within,
        "reference_steps": reference_steps(ctx, D),
        "least_paired_distance_scored": least,
        "floors": {"floor": studies[0]["floor"], "floor_spread": studies[0]["floor_spread"]},
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- rendering


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    order = {name: k for k, name in enumerate(MODELS)}  # the run's order, not the JSON's keys'
    for model in sorted(payload["models"], key=lambda name: order.get(name, len(order))):
        m = payload["models"][model]
        for e in m["studies"]:
            s, w = e["spearman"], e["within_range"]["spearman"]
            fid, paired = e["fid"], e["paired"]
            rows.append(
                [
                    model,
                    e["nfe"],
                    s["n"],
                    s["fid"],
                    s["paired"],
                    s["top_half"]["fid"],
                    s["top_half"]["paired"],
                    w["fid"],
                    w["paired"],
                    e["within_range"]["self_agreement"]["fid"],
                    e["within_range"]["self_agreement"]["paired"],
                    fid["tuned_held_out"],
                    paired["tuned_held_out"],
                    f"{paired['search_evaluations'] / max(fid['search_evaluations'], 1):.1f}x",
                ]
            )
        p = m["spearman_pooled"]
        h = p["top_half"]
        rows.append([model, "all", p["n"], p["fid"], p["paired"], h["fid"], h["paired"]] + [""] * 7)
    table = format_table(
        [
            "model",
            "NFE",
            "schedules",
            "ρ FID",
            "ρ paired",
            "ρ FID, best half",
            "ρ paired, best half",
            "ρ FID, one range",
            "ρ paired, one range",
            "noise: ρ FID, two seed sets",
            "noise: ρ paired, two seed sets",
            "tuned, FID-ranked",
            "tuned, paired-ranked",
            "paired cost",
        ],
        rows,
    )
    caption = (
        "Spearman's ρ between each search objective (FID on the search seeds; the paired "
        "bound) and held-out FID: over the schedules an inner study ranked by FID scored (and "
        "the better half of them by held-out FID), and over a grid of 18 step densities on "
        "the tuned schedule's σ range (placement alone); noise: on that grid, each objective "
        "on the search seeds against itself on other seeds. Tuned: held-out FID of the schedule "
        "an inner study ranked by each objective picks. Paired cost: that study's denoiser "
        "evaluations over the FID-ranked one's (its reference runs included)."
    )
    return {"paired": f"{caption}\n\n{table}\n\n{machine_line(payload['machine'])}"}


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser(NAME, __doc__)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets (default {FULL['nfe']})")
    p.add_argument("--trials", type=int, help=f"trials per inner study ({FULL['trials']})")
    p.add_argument("--study-images", type=int, help="images per FID (default the preset's)")
    p.add_argument("--toy-nimg", type=int, help=f"toy training images ({TOY_NIMG:,})")
    p.add_argument("--seed", type=int, default=0, help="the studies' seed (their SeedPlan)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--verbose", action="store_true", help="the studies' own lines")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    args.nfe = sorted(set(args.nfe))
    if min(args.nfe) < 3 or args.trials < 1:
        p.error("--nfe must be >= 3, --trials >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_log: Callable[[str], None] = log if args.verbose else (lambda _m: None)
    t0 = time.perf_counter()
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "settings": {k: getattr(args, k) for k in ("nfe", "trials", "toy_nimg", "seed")},
        "reference_steps_used": scoring.REFERENCE_STEPS,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="sigmatune-paired-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for model in args.models:
            url = f"sqlite:///{Path(tmp) / f'{model}.db'}"
            log(f"{model}: NFE {args.nfe}")
            payload["models"][model] = run_model(args, model, url, study_log)
    payload["spearman"] = {model: m["spearman_pooled"] for model, m in payload["models"].items()}
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
