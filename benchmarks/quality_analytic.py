"""Ground truth for tuned step locations: analytic Gaussian mixtures with their exact denoiser.

With ``models.analytic.GaussianMixture``'s exact denoiser ``E[x0 | x0 + sigma*eps]`` in place
of a network, a sampler's error is discretisation error alone. For each mixture and NFE budget
the product's own inner study (``study.inner.tune_steps`` on a context from
``study.context.make_context``, the ``toy`` preset: GPSampler on ln FID of random-Fourier
features, the sigma range tuned) finds a schedule, and its record gives the held-out FIDs
(``SeedPlan``: seed sets disjoint from the search's) of:

- ``tuned``: the search's best schedule;
- ``karras ρ=7, same range`` and ``loglinear, same range``: on the tuned schedule's own
  [sigma_min, sigma_max], so "step placement" = tuned / karras same range;
- ``karras ρ=7, full range``: on the run's [0.002, 80], so "σ range" = karras same / full.

Beside the scorer's floor (true vs true) and noise vs true (a reference point: a poor schedule
scores above it), and a 256-step karras ρ=7 reference. The independent check
(``benchmarks/independent.py``: numpy denoiser, Heun sampler and sliced 2-Wasserstein distance,
sharing no code with the product) scores the same schedules against true samples on its own
seed sets.

Mixtures: ``ring`` is the mixture behind the ``gmm2d`` data set (8 modes on a circle of radius
0.6, std 0.1); ``gmm64`` is ``GaussianMixture.random(d=64, K=8, seed=0)``, which no data set
spec names: its context is the ``toy`` preset's with the data set and scorer replaced by
20,000 samples of the mixture (``study.context.make_scorer``).

    python -m benchmarks.quality_analytic            # the full default, ~10 min on 2 CPUs
    python -m benchmarks.quality_analytic --quick --out /tmp/qa.json      # smoke run
    python -m benchmarks.quality_analytic --mixtures ring --nfe 5 9 --trials 32
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

import numpy as np
import torch

from benchmarks import independent
from benchmarks._common import (
    apply_sizes,
    benchmark_parser,
    fmt,
    fmt_spread,
    limited_threads,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
)
from benchmarks.quality import fid_table, floor_text, held_out_scores, row_from_record, sw_table
from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.data import Dataset, gmm2d_mixture
from sigmatune.models.samplers import generate
from sigmatune.models.schedules import karras
from sigmatune.study import spaces
from sigmatune.study.config import Config, load_config
from sigmatune.study.context import RunContext, make_context, make_scorer
from sigmatune.study.inner import inner_study_name, tune_steps
from sigmatune.study.records import Schedule

NAME = "quality_analytic"
MIXTURES = ("ring", "gmm64")
DESCRIPTIONS = {
    "ring": "the `gmm2d` ring (2-D, 8 modes, radius 0.6, std 0.1)",
    "gmm64": "`GaussianMixture.random(d=64, K=8, seed=0)`",
}
GMM64 = {"d": 64, "K": 8, "seed": 0}
GMM64_DATA_SIZE = 20_000  # as gmm2d's 20,000 samples
SW_SEED = 20_261_127  # the independent check's numpy seed (its own stream)

FULL = {
    "nfe": [5, 7, 9, 15],
    "trials": 24,
    "study_images": None,  # the preset's fid_num_images (1,000)
    "sw_samples": 4000,
    "ref_steps": 256,
}
QUICK = {"nfe": [5], "trials": 7, "study_images": 128, "sw_samples": 200, "ref_steps": 16}


def mixture_of(name: str) -> GaussianMixture:
    return gmm2d_mixture() if name == "ring" else GaussianMixture.random(**GMM64)


def study_config(args: argparse.Namespace, name: str, storage_url: str) -> Config:
    """The ``toy`` preset with this benchmark's budgets and storage."""
    overrides: dict[str, Any] = {
        "name": f"qa-{name}",
        "storage": storage_url,
        "seed": args.seed,
        "device": "cpu",
        "inner.samplers": [args.sampler],
        "inner.nfe_budgets": list(args.nfe),
        "inner.inner_trials": args.trials,
    }
    if args.study_images is not None:
        overrides["inner.fid_num_images"] = args.study_images
        overrides["inner.batch_size"] = args.study_images
    return load_config("toy", overrides)


def mixture_context(config: Config, name: str, log: Callable[[str], None]) -> RunContext:
    """The run context of one mixture: ``make_context`` for the ring (the ``gmm2d`` data set);
    for the 64-D mixture, the same context with its data set and scorer replaced."""
    ctx = make_context(config, progress=False, log=log)
    if name == "ring":
        return ctx
    mixture = mixture_of(name)
    x = mixture.sample(
        GMM64_DATA_SIZE, generator=torch.Generator().manual_seed(config.seed), dtype=torch.float32
    )
    data = Dataset(
        name=name,
        x=x,
        shape=(mixture.dim,),
        sigma_data=float(x.double().std()),
        value_range=None,
        analytic=mixture,
    )
    scorer = make_scorer(config, data, ctx.artifact_dir / "fid-cache", ctx.device)
    return dataclasses.replace(ctx, data=data, scorer=scorer)


def agreement(ctx: RunContext, mixture: GaussianMixture, sigmas: Sequence[float]) -> float:
    """Max |product - numpy| of the samples of one schedule from the same noise: the product's
    ``generate`` (heun, float64) against the independent numpy Heun on the exact denoiser."""
    seeds = range(64)
    x = torch.cat(
        list(generate(mixture, sigmas, "heun", seeds, ctx.shape, 64, dtype=torch.float64))
    )
    eps = torch.cat(
        [
            torch.randn(
                1, *ctx.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64
            )
            for s in seeds
        ]
    )
    y = independent.heun(
        independent.Mixture.of(mixture), float(sigmas[0]) * eps.numpy(), list(sigmas)
    )
    return float(np.abs(x.numpy() - y).max())


def run_mixture(
    args: argparse.Namespace,
    name: str,
    storage_url: str,
    log: Callable[[str], None],
    study_log: Callable[[str], None],
) -> dict[str, Any]:
    config = study_config(args, name, storage_url)
    ctx = mixture_context(config, name, study_log)
    mixture = mixture_of(name)
    floors = ctx.scorer.floors(sets=ctx.seeds.held_out_sets)
    ref = Schedule(
        args.sampler,
        tuple(
            float(s)
            for s in karras(args.ref_steps, config.sigma_min, config.sigma_max, spaces.KARRAS_RHO)
        ),
    )
    ref_fid = held_out_scores(ctx, mixture, ref)
    rows = []
    for nfe in args.nfe:
        t0 = time.perf_counter()
        record = tune_steps(ctx, mixture, inner_study_name(config.name, nfe), nfe)
        sw = independent.sw_of_schedules(
            independent.Mixture.of(mixture),
            {**{k: s.sigmas for k, s in record.schedules.items()}, "reference": ref.sigmas},
            num_samples=args.sw_samples,
            sets=ctx.seeds.held_out_sets,
            seed=SW_SEED + nfe,
        )
        row = row_from_record(
            name, record, floors, extra_fid={"reference": ref_fid}, sliced_wasserstein=sw
        )
        rows.append({**row.to_dict(), "seconds": time.perf_counter() - t0})
        log(
            f"{name} NFE {nfe}: held-out FID tuned {row.fid['tuned'].text()}, karras same range "
            f"{row.fid['karras_rho7_same_range'].text()}, full range "
            f"{row.fid['karras_rho7'].text()}; SW tuned {row.sliced_wasserstein['tuned'].text()}"
            f", karras same range {row.sliced_wasserstein['karras_rho7_same_range'].text()}"
        )
    tuned = rows[0]["tuned_sigmas"]
    return {
        "description": DESCRIPTIONS[name],
        "dim": mixture.dim,
        "sigma_data": mixture.sigma_data,
        "floors": floors.to_dict(),
        "seeds": ctx.seeds.to_dict(),
        "study": {
            "preset": "toy",
            "inner_sampler": config.inner.sampler,
            "inner_trials": config.inner.inner_trials,
            "fid_extractor": config.inner.fid_extractor,
            "fid_num_images": config.inner.fid_num_images,
            "tune_sigma_range": config.inner.tune_sigma_range,
            "sigma_range_space": [list(s[:2]) for s in spaces.sigma_range_space(config)],
            "gap_range": [spaces.GAP_RANGE.low, spaces.GAP_RANGE.high],
        },
        "reference_steps": args.ref_steps,
        "reference_fid": rows[0]["fid"]["reference"],
        "sw_samples": args.sw_samples,
        "numpy_vs_product_max_abs_difference": agreement(ctx, mixture, tuned),
        "rows": rows,
    }


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    """One README block per mixture, from the JSON's figures."""
    blocks = {}
    for name, m in payload["mixtures"].items():
        rows = m["rows"]
        st = m["study"]
        ref = m["reference_fid"]
        caption = (
            f"**{name}**: {m['description']}, exact denoiser, Heun. FID on {st['fid_extractor']} "
            f"features of {fmt(st['fid_num_images'])} samples, held-out mean ± spread over "
            f"{m['seeds']['held_out_sets']} seed sets; {floor_text(rows[0])}; "
            f"{m['reference_steps']}-step karras ρ=7 reference "
            f"{fmt_spread(ref['mean'], ref['spread'])}. Tuned = best of {st['inner_trials']} "
            f"trials ({st['inner_sampler']}, σ range tuned)."
        )
        sw = (
            f"Independent check (numpy denoiser, Heun and sliced 2-Wasserstein to "
            f"{fmt(m['sw_samples'])} true samples, {m['seeds']['held_out_sets']} seed sets; "
            f"the product's sampler agrees with it to "
            f"{m['numpy_vs_product_max_abs_difference']:.1e}):"
        )
        blocks[name] = "\n\n".join(
            [
                caption,
                fid_table(rows),
                sw,
                sw_table(rows, m["reference_steps"]),
                machine_line(payload["machine"]),
            ]
        )
    return blocks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser("quality_analytic", __doc__)
    p.add_argument("--mixtures", nargs="+", choices=MIXTURES, default=list(MIXTURES))
    p.add_argument("--sampler", default="heun", choices=("heun",), help="the sampler (Heun)")
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets (default {FULL['nfe']})")
    p.add_argument("--trials", type=int, help=f"trials per inner study ({FULL['trials']})")
    p.add_argument("--study-images", type=int, help="images per FID (default: the preset's)")
    p.add_argument("--sw-samples", type=int, help=f"samples per SW set ({FULL['sw_samples']})")
    p.add_argument("--ref-steps", type=int, help=f"reference steps ({FULL['ref_steps']})")
    p.add_argument("--seed", type=int, default=0, help="the study's seed (its SeedPlan)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--verbose", action="store_true", help="the studies' own lines")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    if min(args.nfe) < 3 or args.trials < 1 or args.sw_samples < 2 or args.ref_steps < 2:
        p.error("--nfe must be >= 3, --trials >= 1, --sw-samples and --ref-steps >= 2")
    args.nfe = sorted(set(args.nfe))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_log: Callable[[str], None] = log if args.verbose else (lambda _m: None)
    t0 = time.perf_counter()
    settings = ("sampler", "nfe", "trials", "study_images", "sw_samples", "ref_steps", "seed")
    payload = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "settings": {k: getattr(args, k) for k in settings},
        "mixtures": {},
    }
    with tempfile.TemporaryDirectory(prefix="sigmatune-qa-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        url = f"sqlite:///{Path(tmp) / 'studies.db'}"
        for name in args.mixtures:
            log(f"{name}: {len(args.nfe)} inner studies of {args.trials} trials")
            payload["mixtures"][name] = run_mixture(args, name, url, log, study_log)
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
