"""Can a scorer tell a trained model's best from a good few-step schedule? The ``digits``
preset's model (EDM's defaults, 400k images: ``benchmarks/digits_model.py``, cached under
``bench-out/digits-model``) drawn with a 256-step karras rho=7 Heun reference and with karras
rho=7 at NFE 15 and 9 over the run's range, each on the preset's held-out seed sets; the same
images scored by each extractor, beside its floor (real vs real, as many images, the
scorer's own plan).

Issue 19's rule for a scorer: its floor's spread at most 10% of the floor, and the reference
apart from karras rho=7 at NFE 15 by at least 4 spreads (the difference over the larger of
the two spreads, as ``benchmarks.quality_trained`` reports it). The images of each schedule
and seed set are generated once (and kept in the work folder, so a rerun or a killed run
resumes) and scored by every extractor.

    python -m benchmarks.scorer_separation                 # about 20-40 min on 2 CPU cores
    python -m benchmarks.scorer_separation --quick --allow-dirty   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    BENCH_OUT,
    benchmark_parser,
    fmt,
    fmt_spread,
    format_table,
    limited_threads,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
    verdict,
)
from benchmarks.digits_model import DEFAULT_CACHE, train_digits_model
from benchmarks.quality import Figure
from sigmatune.models.samplers import generate, steps_for_nfe
from sigmatune.models.schedules import karras
from sigmatune.study.config import load_config
from sigmatune.study.context import make_context
from sigmatune.study.spaces import KARRAS_RHO
from sigmatune.study.storage import short_hash

NAME = "scorer_separation"
EXTRACTORS = ("classifier", "classifier-whitened", "raw")
DIGITS_NIMG = 400_000
REF_STEPS = 256
NFES = (15, 9)
TARGET_SPREAD = 0.10  # floor spread / floor
TARGET_SEPARATION = 4.0  # (karras NFE 15 - reference) / the larger spread
QUICK = {"nimg": 4096, "ref_steps": 16, "images": 200}


def schedule_names(ref_steps: int) -> list[str]:
    """The schedules' names in the order they are drawn and shown: the reference, then karras
    rho=7 at each of :data:`NFES`."""
    return [f"reference ({ref_steps} steps)", *(f"karras ρ=7, NFE {nfe}" for nfe in NFES)]


def schedules(config: Any, ref_steps: int) -> dict[str, tuple[float, ...]]:
    """The schedules drawn, by :func:`schedule_names`."""
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    steps = [ref_steps, *(steps_for_nfe("heun", nfe) for nfe in NFES)]
    return {
        name: tuple(float(s) for s in karras(n, smin, smax, KARRAS_RHO))
        for name, n in zip(schedule_names(ref_steps), steps)
    }


def images(
    D: Any, sigmas: Sequence[float], seeds: Sequence[int], shape: tuple[int, ...], work: Path
) -> torch.Tensor:
    """One Heun sample per seed along ``sigmas``, read from ``work`` when made before."""
    key = short_hash("scorer_separation", list(sigmas), list(seeds), list(shape))
    path = work / f"images-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    batches = generate(D, torch.tensor(sigmas, dtype=torch.float64), "heun", seeds, shape, 500)
    x = torch.cat([b.cpu() for b in batches])
    torch.save(x, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return x


def separation(ref: Figure, other: Figure) -> float:
    """How many spreads ``other`` lies above ``ref``: the difference over the larger spread."""
    spread = max(ref.spread, other.spread)
    return (other.mean - ref.mean) / spread if spread > 0 else float("inf")


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = load_config("digits")
    D, nimg = train_digits_model(base, args.nimg, Path(args.cache), log=log)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = base.replace(
        storage=f"sqlite:///{work / 'scorers.db'}",
        artifact_dir=str(work / "artifacts"),
        device="cpu",
        **{"inner.fid_num_images": args.images},
    )
    contexts = {
        ex: make_context(
            config.replace(**{"inner.fid_extractor": ex}), progress=False, log=lambda _m: None
        )
        for ex in args.extractors
    }
    first = next(iter(contexts.values()))
    sets = first.seeds.held_out_sets
    scores: dict[str, dict[str, list[float]]] = {ex: {} for ex in contexts}
    for name, sigmas in schedules(config, args.ref_steps).items():
        for k in range(sets):
            t0 = time.perf_counter()
            x = images(D, sigmas, first.seeds.held_out(k), first.shape, work)
            for ex, ctx in contexts.items():
                scores[ex].setdefault(name, []).append(ctx.scorer.score_tensor(x))
            log(f"{name}, set {k}: {time.perf_counter() - t0:.0f} s")
    rows = []
    for ex, ctx in contexts.items():
        fl = ctx.scorer.floors(sets=sets)
        figures = {name: Figure.of(v) for name, v in scores[ex].items()}
        ref_name, nfe15 = next(iter(figures)), f"karras ρ=7, NFE {NFES[0]}"
        sep = separation(figures[ref_name], figures[nfe15])
        rows.append(
            {
                "extractor": ex,
                "floor": fl.floor,
                "floor_spread": fl.floor_spread,
                "spread_over_floor": fl.floor_spread / fl.floor if fl.floor else None,
                "scores": {name: vars(f) for name, f in figures.items()},
                "separation": sep,
                "targets": {
                    "floor_spread": fl.floor_spread <= TARGET_SPREAD * fl.floor,
                    "separation": sep >= TARGET_SEPARATION,
                },
            }
        )
    return {
        "model_nimg": nimg,
        "images": args.images,
        "held_out_sets": sets,
        "ref_steps": args.ref_steps,
        "rows": rows,
    }


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    names = schedule_names(payload["ref_steps"])  # a JSON's keys are stored sorted
    for r in payload["rows"]:
        t = r["targets"]
        rows.append(
            [
                r["extractor"],
                f"{fmt_spread(r['floor'], r['floor_spread'])} ({r['spread_over_floor']:.0%})",
                *(fmt_spread(r["scores"][n]["mean"], r["scores"][n]["spread"]) for n in names),
                fmt(r["separation"]),
                f"{verdict(t['floor_spread'])} / {verdict(t['separation'])}",
            ]
        )
    table = format_table(
        [
            "extractor",
            "floor (spread / floor)",
            *names,
            f"reference vs NFE {NFES[0]}: spreads apart",
            "spread <= 10% / >= 4 spreads",
        ],
        rows,
    )
    text = (
        f"The digits model of {payload['model_nimg']:,} images, {payload['images']:,} images "
        f"per score, mean ± spread over {payload['held_out_sets']} held-out seed sets (the same "
        f"images for every extractor); floors from as many real images.\n\n{table}\n\n"
        f"{machine_line(payload['machine'])}"
    )
    return {NAME: text}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser(NAME, __doc__)
    p.add_argument("--extractors", nargs="+", choices=EXTRACTORS, default=list(EXTRACTORS))
    p.add_argument("--nimg", type=int, help=f"the model's training images ({DIGITS_NIMG:,})")
    p.add_argument("--ref-steps", type=int, help=f"the reference's steps ({REF_STEPS})")
    p.add_argument("--images", type=int, help="images per score (the preset's, 1,000)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="the digits model's folder")
    p.add_argument("--work", default=str(BENCH_OUT / NAME), help="images and scorer caches")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {"nimg": DIGITS_NIMG, "ref_steps": REF_STEPS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.images is None:
        args.images = load_config("digits").inner.fid_num_images
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    payload = new_payload(NAME, argv)
    payload["quick"] = bool(args.quick)
    t0 = time.perf_counter()
    with limited_threads(args.threads):
        payload.update(run(args))
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
