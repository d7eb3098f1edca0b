"""Images per search trial (``inner.search_images``), measured on the digits model: how many
inner trials a minute the search runs, and the held-out FID of what it reports.

The search only ranks schedules; every figure it reports is re-scored on the held-out sets of
``inner.fid_num_images`` images each. So the search may rank on fewer images than a figure
needs, if the ranking holds. An arm is a number of search images and of trials; for each arm,
NFE budget and study seed, one inner study is run on the same trained model as the product
runs it (``study.inner``, the digits preset: its starting points, peers and pruning; with the
σ range searched too, as in ``benchmarks.peers``, since on the preset's fixed full range every
search at NFE 5 ended at a starting point), and the table gives:

- inner trials a minute: the trials the search finished (complete or pruned, its starting
  points included) over the wall time of ``inner.run_search`` alone;
- the denoiser evaluations of the search (counted);
- the held-out FID of the schedule the study reports (mean over study seeds, with the spread
  over seeds), on the same held-out seeds for every arm, beside the scorer's floor.

The arms: all images with the preset's 16 trials (the reference), a third of the images with
as many trials (equal trials: a third of the time), and a third of the images with three times
the trials (about equal time: what a user who keeps the preset's time gets from the faster
trials).

The model is EDM's defaults trained on the digits preset for ``--train-nimg`` images (the
preset's own 200k by default; ``benchmarks.digits_model``, cached under ``bench-out``).

    python -m benchmarks.search_images                 # about 55 min on 2 CPUs
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
    # "IMAGES" (the base trial budget) or "IMAGESxTRIALS"; the first is the all-images arm
    "arms": ["1000", "333", "333x48"],
    "nfe": [5, 9],
    "seeds": [0, 1, 2],
    "trials": None,  # the digits preset's 16
    "train_nimg": 200_000,
}
QUICK = {"arms": ["64", "32", "32x6"], "nfe": [5], "seeds": [0], "trials": 3, "train_nimg": 2048}


def parse_arm(text: str, trials: int) -> tuple[int, int]:
    """``"333"`` -> (333, ``trials``); ``"333x48"`` -> (333, 48)."""
    images, x, budget = text.partition("x")
    try:
        out = (int(images), int(budget) if x else trials)
    except ValueError:
        out = (0, 0)
    if out[0] < 2 or out[1] < 1:
        raise ValueError(f"an arm is IMAGES or IMAGESxTRIALS (e.g. 333 or 333x48), got {text!r}")
    return out


def arm_label(images: int, budget: int, base_trials: int) -> str:
    return str(images) if budget == base_trials else f"{images}x{budget}"


def arm_of(row: Mapping[str, Any]) -> str:
    # rows written before arms had a trial budget of their own are labelled by their images
    return str(row.get("arm", row["images"]))


def study_config(
    args: argparse.Namespace,
    images: int,
    budget: int,
    seed: int,
    nfe: int,
    url: str,
    artifacts: Path,
) -> Config:
    overrides: dict[str, Any] = {
        "name": f"search-images-{images}x{budget}-{seed}-{nfe}",
        "storage": url,
        "artifact_dir": str(artifacts),  # one scorer cache for every study
        "seed": seed,
        "device": "cpu",
        "inner.nfe_budgets": [nfe],
        "inner.search_images": images if images < args.fid_images else 0,
        # the σ range searched too (as benchmarks.peers does): on the preset's fixed full
        # range every NFE 5 study ends at a starting point (LD3, held-out FID about 220)
        "inner.tune_sigma_range": True,
        "inner.inner_trials": budget,
    }
    if args.quick:
        overrides["inner.fid_num_images"] = args.fid_images
        overrides["inner.batch_size"] = args.fid_images
        overrides["inner.peers"] = []
    return load_config("digits", overrides)


def one_study(
    args: argparse.Namespace,
    D: Any,
    arm: tuple[int, int],
    seed: int,
    nfe: int,
    url: str,
    artifacts: Path,
) -> dict[str, Any]:
    images, budget = arm
    config = study_config(args, images, budget, seed, nfe, url, artifacts)
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
        "arm": arm_label(images, budget, args.trials),
        "images": images,
        "budget": budget,
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
        # the reported schedule itself, so an independent check can score it again
        "sampler": record.schedules["tuned"].sampler,
        "sigmas": [float(x) for x in record.schedules["tuned"].sigmas],
    }


def _arms_in_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(arm_of(r) for r in rows))


def summary(rows: Sequence[Mapping[str, Any]], base: str) -> list[dict[str, Any]]:
    """Per (NFE, arm): means over seeds, and the ratios to the ``base`` arm (all images, the
    preset's trials)."""
    out = []
    for nfe in sorted({r["nfe"] for r in rows}):
        arms = {}
        for label in _arms_in_order(rows):
            rs = [r for r in rows if r["nfe"] == nfe and arm_of(r) == label]
            if not rs:
                continue
            held = [r["held_out"] for r in rs]
            arms[label] = {
                "nfe": nfe,
                "arm": label,
                "images": rs[0]["images"],
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


def paired(rows: Sequence[Mapping[str, Any]], base: str) -> dict[str, dict[str, int]]:
    """Each other arm against the all-images arm on the same NFE and study seed (the same
    trained model and held-out seeds): how many of those studies it ends worse, or better,
    beyond both studies' held-out spreads, and how many within them."""
    by_key = {(r["nfe"], r["seed"], arm_of(r)): r for r in rows}
    out: dict[str, dict[str, int]] = {}
    for (nfe, seed, label), r in by_key.items():
        ref = by_key.get((nfe, seed, base))
        if label == base or ref is None:
            continue
        counts = out.setdefault(label, {"worse": 0, "better": 0, "within": 0})
        counts[pair_call(r, ref, "held_out", "held_out_spread")] += 1
    return out


def pair_call(row: Mapping[str, Any], ref: Mapping[str, Any], value: str, spread: str) -> str:
    """ "worse" / "better" when ``row[value]`` differs from ``ref[value]`` by more than both
    spreads added (lower is better), else "within"."""
    diff = row[value] - ref[value]
    bound = row[spread] + ref[spread]
    return "worse" if diff > bound else "better" if -diff > bound else "within"


def verdict(
    summary_rows: Sequence[Mapping[str, Any]], pairs: Mapping[str, Mapping[str, int]], base: str
) -> dict[str, Any]:
    """The issue's target for each other arm: >= 3x trials a minute at every NFE and
    held-out FID equal or better, by the means over seeds within both spreads at every NFE;
    contradicted by the paired comparison where the arm ends worse beyond the held-out spreads
    in more paired studies than it ends better."""
    out = {}
    for label in _arms_in_order([r for r in summary_rows if arm_of(r) != base]):
        arms = [r for r in summary_rows if arm_of(r) == label]
        fast = all(r["speed_ratio"] >= TARGET_SPEED for r in arms)
        good = all(r["fid_equal_or_better"] for r in arms)
        pair = pairs.get(label, {"worse": 0, "better": 0, "within": 0})
        contradicted = pair["worse"] > pair["better"]
        out[label] = {
            "speed_ratio_min": min(r["speed_ratio"] for r in arms),
            "fid_ratio_max": max(r["fid_ratio"] for r in arms),
            "fid_equal_or_better": good,
            "paired": dict(pair),
            "contradicted": contradicted,
            "met": fast and good and not contradicted,
        }
    return out


def _arm_words(label: str, base_images: int, unit: str = "") -> str:
    images, _, budget = label.partition("x")
    words = "all" if int(images) == base_images else images
    if unit:
        words = f"{words} {unit}"
    return f"{words}, {budget} trials" if budget else words


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    base = payload["settings"]["fid_images"]
    rows = [
        [
            s["nfe"],
            _arm_words(arm_of(s), base),
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
    for label, v in payload["verdict"].items():
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
            f"- {_arm_words(label, base, 'search images')}: at least "
            f"{fmt(v['speed_ratio_min'], 3)}× the inner "
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
    p.add_argument(
        "--arms",
        nargs="+",
        help=f"IMAGES or IMAGESxTRIALS per arm, the first the all-images arm ({FULL['arms']})",
    )
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets ({FULL['nfe']})")
    p.add_argument("--seeds", nargs="+", type=int, help=f"study seeds ({FULL['seeds']})")
    p.add_argument("--trials", type=int, help="trials per inner study (the preset's)")
    p.add_argument("--train-nimg", type=int, help=f"training images ({FULL['train_nimg']:,})")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    preset = load_config("digits").inner
    if args.trials is None:
        args.trials = preset.inner_trials
    try:
        args.arm_sizes = [parse_arm(a, args.trials) for a in args.arms]
    except ValueError as e:
        p.error(f"--arms: {e}")
    args.fid_images = args.arm_sizes[0][0]
    if any(images > args.fid_images for images, _ in args.arm_sizes):
        p.error(f"--arms: the first arm is the all-images arm, the largest; got {args.arms}")
    if args.arm_sizes[0][1] != args.trials:
        p.error(f"--arms: the first arm runs the base {args.trials} trials; got {args.arms[0]}")
    if not args.quick and args.fid_images != preset.fid_num_images:
        p.error(
            f"--arms: the first arm is the all-images arm: {preset.fid_num_images}, got {args.arms}"
        )
    args.base = arm_label(*args.arm_sizes[0], args.trials)
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
    trials = args.trials
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "model": f"U-Net, EDM defaults, {nimg:,} training images",
        "trials": trials,
        "settings": {
            k: getattr(args, k) for k in ("arms", "nfe", "seeds", "train_nimg", "fid_images")
        },
        "rows": [],
    }
    scratch = tempfile.TemporaryDirectory(prefix="sigmatune-search-images-")
    with scratch as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        url = f"sqlite:///{Path(tmp) / 'studies.db'}"
        for seed in args.seeds:
            for nfe in args.nfe:
                for arm in args.arm_sizes:
                    r = one_study(args, D, arm, seed, nfe, url, Path(tmp) / "artifacts")
                    payload["rows"].append(r)
                    log(
                        f"NFE {nfe} seed {seed} arm {r['arm']}: {r['trials']} trials in "
                        f"{r['seconds']:.1f} s ({r['trials_per_minute']:.1f}/min), held-out "
                        f"{fmt(r['held_out'])} ± {fmt(r['held_out_spread'], 2)} ({r['origin']})"
                    )
    payload["summary"] = summary(payload["rows"], args.base)
    pairs = paired(payload["rows"], args.base)
    payload["verdict"] = verdict(payload["summary"], pairs, args.base)
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
