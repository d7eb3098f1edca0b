"""Images per search trial (``inner.search_images``), measured on the digits model: how many
inner trials a minute the search runs, and the held-out FID of what it reports.

The search only ranks schedules; every figure it reports is re-scored on the held-out sets of
``inner.fid_num_images`` images each. So the search may rank on fewer images than a figure
needs, if the ranking holds. For each number of search images, NFE budget and study seed, one
inner study is run on the same trained model as the product runs it (``study.inner``, the
digits preset: its starting points, peers, pruning and trial budget; with the σ range searched
too, as in ``benchmarks.peers``, since on the preset's fixed full range every search at NFE 5
ended at a starting point), and the table gives:

- inner trials a minute: the trials the search finished (complete or pruned, its starting
  points included) over the wall time of ``inner.run_search`` alone;
- the denoiser evaluations of the search (counted);
- the held-out FID of the schedule the study reports (mean over study seeds, with the spread
  over seeds), on the same held-out seeds for every arm, beside the scorer's floor.

The model is EDM's defaults trained on the digits preset for ``--train-nimg`` images (the
preset's own 200k by default; ``benchmarks.digits_model``, cached under ``bench-out``).

    python -m benchmarks.search_images                 # about 30 min on 2 CPUs
    python -m benchmarks.search_images --quick --out /tmp/search_images.json   # a smoke run
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
from sigmatune.study import inner
from sigmatune.study.config import Config, load_config
from sigmatune.study.context import make_context

NAME = "search_images"
# issue 18: inner trials a minute on digits >= 3x at equal or better held-out FID
TARGET_SPEED = 3.0
FULL = {
    "images": [1000, 333],
    "nfe": [5, 9],
    "seeds": [0, 1, 2],
    "trials": None,  # the digits preset's 16
    "train_nimg": 200_000,
}
QUICK = {"images": [64, 32], "nfe": [5], "seeds": [0], "trials": 3, "train_nimg": 2048}


def study_config(
    args: argparse.Namespace, images: int, seed: int, nfe: int, url: str, artifacts: Path
) -> Config:
    overrides: dict[str, Any] = {
        "name": f"search-images-{images}-{seed}-{nfe}",
        "storage": url,
        "artifact_dir": str(artifacts),  # one scorer cache for every study
        "seed": seed,
        "device": "cpu",
        "inner.nfe_budgets": [nfe],
        "inner.search_images": images if images < args.fid_images else 0,
        # the σ range searched too (as benchmarks.peers does): on the preset's fixed full
        # range every NFE 5 study ends at a starting point (LD3, held-out FID about 220)
        "inner.tune_sigma_range": True,
    }
    if args.quick:
        overrides["inner.fid_num_images"] = args.fid_images
        overrides["inner.batch_size"] = args.fid_images
        overrides["inner.peers"] = []
    if args.trials is not None:
        overrides["inner.inner_trials"] = args.trials
    return load_config("digits", overrides)


def one_study(
    args: argparse.Namespace, D: Any, images: int, seed: int, nfe: int, url: str, artifacts: Path
) -> dict[str, Any]:
    config = study_config(args, images, seed, nfe, url, artifacts)
    ctx = make_context(config, progress=False, log=lambda _m: None)
    counted = Counted(D)
    name = inner.inner_study_name(config.name, nfe)
    study = inner.open_inner_study(ctx, counted, name, nfe)
    before = counted.evaluations  # the peers' cost, not the search's
    t0 = time.perf_counter()
    inner.run_search(ctx, study, counted, nfe)
    seconds = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() for t in trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    record = inner.summarise(ctx, study, D, nfe)
    return {
        "images": images,
        "search_images": len(ctx.seeds.search),
        "held_out_images": ctx.seeds.num_images,
        "seed": seed,
        "nfe": nfe,
        "trials": finished,
        "pruned": pruned,
        "seconds": seconds,
        "trials_per_minute": 60.0 * finished / seconds,
        "denoiser_evaluations": counted.evaluations - before,
        "held_out": record.held_out.mean("tuned"),
        "held_out_spread": record.held_out.spread("tuned"),
        "origin": record.origin,
        "floor": record.held_out.floor,
        "floor_spread": record.held_out.floor_spread,
    }


def summary(rows: Sequence[Mapping[str, Any]], base: int) -> list[dict[str, Any]]:
    """Per (NFE, images): means over seeds, and the ratios to the ``base`` arm (all images)."""
    out = []
    for nfe in sorted({r["nfe"] for r in rows}):
        arms = {}
        for images in sorted({r["images"] for r in rows}, reverse=True):
            rs = [r for r in rows if (r["nfe"], r["images"]) == (nfe, images)]
            held = [r["held_out"] for r in rs]
            arms[images] = {
                "nfe": nfe,
                "images": images,
                "studies": len(rs),
                "trials_per_minute": statistics.fmean(r["trials_per_minute"] for r in rs),
                "seconds": statistics.fmean(r["seconds"] for r in rs),
                "denoiser_evaluations": statistics.fmean(r["denoiser_evaluations"] for r in rs),
                "held_out": statistics.fmean(held),
                "held_out_spread": statistics.stdev(held) if len(held) > 1 else 0.0,
                "search_wins": sum(r["origin"] == "search" for r in rs),
                "floor": statistics.fmean(r["floor"] for r in rs),
                "floor_spread": statistics.fmean(r["floor_spread"] for r in rs),
            }
        ref = arms.get(base)
        for arm in arms.values():
            if ref is not None:
                arm["speed_ratio"] = arm["trials_per_minute"] / ref["trials_per_minute"]
                arm["fid_ratio"] = arm["held_out"] / ref["held_out"]
                # equal or better: not worse than the all-images arm beyond both spreads
                bound = ref["held_out"] + ref["held_out_spread"] + arm["held_out_spread"]
                arm["fid_equal_or_better"] = arm["held_out"] <= bound
            out.append(arm)
    return out


def paired(rows: Sequence[Mapping[str, Any]], base: int) -> dict[str, dict[str, int]]:
    """Each smaller arm against the all-images arm on the same NFE and study seed (the same
    trained model and held-out seeds): how many of those studies it ends worse, or better,
    beyond both studies' held-out spreads, and how many within them."""
    by_key = {(r["nfe"], r["seed"], r["images"]): r for r in rows}
    out: dict[str, dict[str, int]] = {}
    for (nfe, seed, images), r in sorted(by_key.items()):
        ref = by_key.get((nfe, seed, base))
        if images == base or ref is None:
            continue
        counts = out.setdefault(str(images), {"worse": 0, "better": 0, "within": 0})
        bound = r["held_out_spread"] + ref["held_out_spread"]
        diff = r["held_out"] - ref["held_out"]
        counts["worse" if diff > bound else "better" if -diff > bound else "within"] += 1
    return out


def verdict(
    summary_rows: Sequence[Mapping[str, Any]], pairs: Mapping[str, Mapping[str, int]], base: int
) -> dict[str, Any]:
    """The issue's target for each smaller arm: >= 3x trials a minute at every NFE and
    held-out FID equal or better, by the means over seeds within both spreads at every NFE;
    contradicted by the paired comparison where the arm ends worse beyond the held-out spreads
    in more paired studies than it ends better."""
    out = {}
    for images in sorted({r["images"] for r in summary_rows if r["images"] != base}, reverse=True):
        arms = [r for r in summary_rows if r["images"] == images]
        fast = all(r["speed_ratio"] >= TARGET_SPEED for r in arms)
        good = all(r["fid_equal_or_better"] for r in arms)
        pair = pairs.get(str(images), {"worse": 0, "better": 0, "within": 0})
        contradicted = pair["worse"] > pair["better"]
        out[str(images)] = {
            "speed_ratio_min": min(r["speed_ratio"] for r in arms),
            "fid_ratio_max": max(r["fid_ratio"] for r in arms),
            "fid_equal_or_better": good,
            "paired": dict(pair),
            "contradicted": contradicted,
            "met": fast and good and not contradicted,
        }
    return out


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    base = payload["settings"]["fid_images"]
    rows = [
        [
            s["nfe"],
            "all" if s["images"] == base else s["images"],
            s["trials_per_minute"],
            s.get("speed_ratio"),
            s["denoiser_evaluations"],
            f"{fmt(s['held_out'])} ± {fmt(s['held_out_spread'], 2)}",
            s.get("fid_ratio"),
            f"{s['search_wins']} of {s['studies']}",
            f"{fmt(s['floor'])} ± {fmt(s['floor_spread'], 2)}",
        ]
        for s in payload["summary"]
    ]
    table = format_table(
        [
            "NFE",
            "search images",
            "inner trials / min",
            "× all",
            "search's denoiser evaluations",
            "tuned, held-out (± over seeds)",
            "× all",
            "search's own trial wins",
            "floor",
        ],
        rows,
    )
    st = payload["settings"]
    lines = []
    for images, v in payload["verdict"].items():
        met = "met" if v["met"] else "missed"
        clause = ""
        if "paired" in v:  # (results written before the paired comparison have none)
            pair = v["paired"]
            clause = (
                f"; paired with the all-images study of the same seed: worse beyond both "
                f"held-out spreads in {pair['worse']}, better in {pair['better']}, within in "
                f"{pair['within']}"
            )
            if v["contradicted"]:
                met = "contradicted by the paired comparison"
        lines.append(
            f"- {images} search images: at least {fmt(v['speed_ratio_min'], 3)}× the inner "
            f"trials a minute of all {base} (target ≥ {TARGET_SPEED:g}×), held-out FID at most "
            f"{fmt(v['fid_ratio_max'], 3)}× (equal or better within the spreads at every NFE: "
            f"{'yes' if v['fid_equal_or_better'] else 'no'}{clause}): **{met}**."
        )
    caption = (
        f"Images per search trial on the digits model ({payload['model']}): one inner study per "
        f"arm, NFE and study seed ({st['seeds']}), the digits preset's search "
        f"({payload['trials']} trials, pruning on, the σ range searched too); held-out FID on "
        f"{base} images × 3 sets, the same seeds for every arm."
    )
    text = "\n".join([caption, "", table, "", *lines, "", machine_line(payload["machine"])])
    return {"search_images": text}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser(NAME, __doc__)
    p.add_argument("--images", nargs="+", type=int, help=f"search images ({FULL['images']})")
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets ({FULL['nfe']})")
    p.add_argument("--seeds", nargs="+", type=int, help=f"study seeds ({FULL['seeds']})")
    p.add_argument("--trials", type=int, help="trials per inner study (the preset's)")
    p.add_argument("--train-nimg", type=int, help=f"training images ({FULL['train_nimg']:,})")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    args.fid_images = max(args.images)
    preset = load_config("digits").inner.fid_num_images
    if not args.quick and args.fid_images != preset:
        p.error(f"the largest of --images is the all-images arm: {preset}, got {args.images}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    from benchmarks.digits_model import DEFAULT_CACHE, train_digits_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    cache = DEFAULT_CACHE if not args.quick else BENCH_OUT / "search-images-digits"
    preset = load_config("digits")
    D, nimg = train_digits_model(preset, args.train_nimg, cache, log=log)
    trials = args.trials or preset.inner.inner_trials
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "model": f"U-Net, EDM defaults, {nimg:,} training images",
        "trials": trials,
        "settings": {
            k: getattr(args, k) for k in ("images", "nfe", "seeds", "train_nimg", "fid_images")
        },
        "rows": [],
    }
    scratch = tempfile.TemporaryDirectory(prefix="sigmatune-search-images-")
    with scratch as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        url = f"sqlite:///{Path(tmp) / 'studies.db'}"
        for seed in args.seeds:
            for nfe in args.nfe:
                for images in args.images:
                    r = one_study(args, D, images, seed, nfe, url, Path(tmp) / "artifacts")
                    payload["rows"].append(r)
                    log(
                        f"NFE {nfe} seed {seed} {images} images: {r['trials']} trials in "
                        f"{r['seconds']:.1f} s ({r['trials_per_minute']:.1f}/min), held-out "
                        f"{fmt(r['held_out'])} ± {fmt(r['held_out_spread'], 2)} ({r['origin']})"
                    )
    payload["summary"] = summary(payload["rows"], args.fid_images)
    pairs = paired(payload["rows"], args.fid_images)
    payload["verdict"] = verdict(payload["summary"], pairs, args.fid_images)
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
