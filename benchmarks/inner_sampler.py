"""The inner search's sampler, measured: Optuna's GPSampler (the default), CMA-ES started at
the best starting point (``inner.sampler = "cmaes"``: ``study.spaces.WarmCmaEsSampler``) and
TPE (multivariate, grouped), at equal denoiser evaluations.

For each exact mixture of ``benchmarks.peers`` (the 8-mode ring, the 64-D mixture), NFE
budget and seed, one inner study per sampler is run as the product runs it
(``study.inner``: the toy preset's space, the σ range tuned, the same starting points), with
the same trial budget and no pruning, so every sampler spends the same denoiser evaluations
(checked: they are counted). The table gives the held-out FID of the schedule each study
reports (mean over seeds), how often the search's own trial is that schedule (rather than a
starting point) and the best search-seed FID the search itself found.

    python -m benchmarks.inner_sampler --models ring      # about 6 min a model
    python -m benchmarks.inner_sampler --quick --out /tmp/sampler.json      # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from benchmarks._common import (
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
from sigmatune.study import inner, records
from sigmatune.study.config import Config, load_config

NAME = "inner_sampler"
MODELS = ("ring", "gmm64")
SAMPLERS = ("gp", "cmaes", "tpe")
FULL = {"nfe": [5, 9], "trials": 20, "seeds": [0, 1, 2, 3], "study_images": None}
QUICK = {"nfe": [5], "trials": 10, "seeds": [0], "study_images": 128}


def study_config(args: argparse.Namespace, model: str, sampler: str, seed: int, url: str) -> Config:
    overrides: dict[str, Any] = {
        "name": f"sampler-{model}-{sampler}-{seed}",
        "storage": url,
        "seed": seed,
        "device": "cpu",
        "inner.nfe_budgets": list(args.nfe),
        "inner.inner_trials": args.trials,
        "inner.tune_sigma_range": True,
        "inner.sampler": sampler,
        "inner.prune": False,  # equal evaluations: no trial stops early
        "inner.peers": [],  # the same starting points for all, without GITS/LD3's cost
    }
    if args.study_images is not None:
        overrides["inner.fid_num_images"] = args.study_images
        overrides["inner.batch_size"] = args.study_images
    return load_config("toy", overrides)


def one_study(args: argparse.Namespace, model: str, sampler: str, seed: int, nfe: int, url: str):
    from benchmarks.quality_analytic import mixture_context, mixture_of

    config = study_config(args, model, sampler, seed, url)
    ctx = mixture_context(config, model, lambda _m: None)
    D = Counted(mixture_of(model))
    name = inner.inner_study_name(config.name, nfe)
    t0 = time.perf_counter()
    study = inner.open_inner_study(ctx, D, name, nfe)
    inner.run_search(ctx, study, D, nfe)
    evaluations, seconds = D.evaluations, time.perf_counter() - t0
    record = inner.summarise(ctx, study, D.D, nfe)
    own = [
        float(t.user_attrs[records.FID])
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not t.user_attrs.get(records.START)
    ]
    return {
        "model": model,
        "sampler": sampler,
        "seed": seed,
        "nfe": nfe,
        "held_out": record.held_out.mean("tuned"),
        "held_out_spread": record.held_out.spread("tuned"),
        "origin": record.origin,
        "search_fid": record.search_fid,
        "best_own_search_fid": min(own) if own else None,
        "own_trials": len(own),
        "denoiser_evaluations": evaluations,
        "seconds": seconds,
        "floor": record.held_out.floor,
    }


def summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["model"], r["nfe"]) for r in rows})
    for model, nfe in keys:
        for sampler in SAMPLERS:
            rs = [r for r in rows if (r["model"], r["nfe"], r["sampler"]) == (model, nfe, sampler)]
            if not rs:
                continue
            own = [r["best_own_search_fid"] for r in rs if r["best_own_search_fid"] is not None]
            out.append(
                {
                    "model": model,
                    "nfe": nfe,
                    "sampler": sampler,
                    "held_out": statistics.fmean(r["held_out"] for r in rs),
                    "search_wins": sum(r["origin"] == "search" for r in rs),
                    "studies": len(rs),
                    "best_own_search_fid": statistics.fmean(own) if own else None,
                    "denoiser_evaluations": statistics.fmean(r["denoiser_evaluations"] for r in rs),
                    "seconds": statistics.fmean(r["seconds"] for r in rs),
                }
            )
    return out


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = [
        [
            s["model"],
            s["nfe"],
            s["sampler"],
            s["held_out"],
            f"{s['search_wins']} of {s['studies']}",
            s["best_own_search_fid"],
            s["denoiser_evaluations"],
            s["seconds"],
        ]
        for s in payload["summary"]
    ]
    table = format_table(
        [
            "model",
            "NFE",
            "sampler",
            "tuned (held-out)",
            "search's own trial wins",
            "best own trial (search seeds)",
            "denoiser evaluations",
            "seconds",
        ],
        rows,
    )
    caption = (
        f"The inner sampler at equal denoiser evaluations ({payload['settings']['trials']} "
        f"trials, no pruning, seeds {payload['settings']['seeds']}, means over seeds)."
    )
    return {"sampler": f"{caption}\n\n{table}\n\n{machine_line(payload['machine'])}"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser(NAME, __doc__)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets (default {FULL['nfe']})")
    p.add_argument("--trials", type=int, help=f"trials per inner study ({FULL['trials']})")
    p.add_argument("--seeds", nargs="+", type=int, help=f"study seeds ({FULL['seeds']})")
    p.add_argument("--study-images", type=int, help="images per FID (default the preset's)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "settings": {k: getattr(args, k) for k in ("nfe", "trials", "seeds", "samplers")},
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="sigmatune-sampler-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for model in args.models:
            url = f"sqlite:///{Path(tmp) / f'{model}.db'}"
            for seed in args.seeds:
                for nfe in args.nfe:
                    for sampler in args.samplers:
                        r = one_study(args, model, sampler, seed, nfe, url)
                        payload["rows"].append(r)
                        log(
                            f"{model} NFE {nfe} seed {seed} {sampler}: held-out "
                            f"{fmt(r['held_out'])} ({r['origin']}), own best "
                            f"{fmt(r['best_own_search_fid'])}, "
                            f"{r['denoiser_evaluations']:,} evaluations"
                        )
    payload["summary"] = summary(payload["rows"])
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
