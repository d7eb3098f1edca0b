"""An independent check of ``benchmarks.search_images``: do its arms rank the same when their
reported schedules are drawn by another sampler and scored by another distance?

From a finished ``search_images`` JSON (each row keeps the schedule its study reported), every
row's schedule is drawn again on the same trained model by the outer benchmark's bare Heun
loop (``outer_study.bare_heun``: its own noise, none of sigmatune's sampler code), clamped to
[-1, 1] as a saved image is, and scored by the Fréchet distance on raw pixels
(``quality_trained.raw_frechet``: no classifier features) to one random half of the data set,
on several random halvings (the other half against it: real vs real, the floor at this size).
Each arm is then compared with the all-images arm of the same NFE and study seed, as the
benchmark's paired comparison does, beyond both rows' spreads over the halvings.

    python -m benchmarks.search_images_check      # a few minutes on 2 CPUs
    python -m benchmarks.search_images_check --source /tmp/search_images.json \\
        --out /tmp/search_images_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    BENCH_OUT,
    RESULTS_DIR,
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
from benchmarks.outer_study import bare_heun
from benchmarks.quality_trained import raw_frechet
from benchmarks.search_images import arm_of, pair_call

NAME = "search_images_check"
CHECK_SEED = 93_000_000  # the check's noise and halvings: no seed the studies used
SETS = 3


def raw_scores(
    D: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedules: Mapping[str, Sequence[float]],
    x_real: torch.Tensor,
    *,
    sets: int = SETS,
    seed: int = CHECK_SEED,
) -> dict[str, Any]:
    """Raw-pixel Fréchet distance of each schedule's bare-Heun samples (as many as half the
    data set, the same noise for every schedule within a set) to one random half of
    ``x_real`` [N, ...], one value per set; ``"real_vs_real"``: the other half against it."""
    flat = x_real.reshape(len(x_real), -1).double().numpy()
    out: dict[str, Any] = {"real_vs_real": [], "schedules": {k: [] for k in schedules}}
    for k in range(sets):
        g = torch.Generator().manual_seed(seed + k)
        perm = torch.randperm(len(x_real), generator=g).numpy()
        half = len(perm) // 2
        a, b = flat[perm[:half]], flat[perm[half:]]
        out["real_vs_real"].append(raw_frechet(a, b))
        eps = torch.randn(half, *x_real.shape[1:], generator=g, dtype=x_real.dtype)
        for name, sigmas in schedules.items():
            with torch.no_grad():
                x = bare_heun(D, float(sigmas[0]) * eps, [float(s) for s in sigmas])
            x = x.clamp(-1, 1).reshape(half, -1).double().numpy()
            out["schedules"][name].append(raw_frechet(x, b))
    return out


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "spread": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def row_key(row: Mapping[str, Any]) -> str:
    return f"{row['nfe']}/{row['seed']}/{arm_of(row)}"


def compare(rows: Sequence[Mapping[str, Any]], base: str) -> dict[str, Any]:
    """Per arm other than ``base``: its independent scores paired with the ``base`` arm's of
    the same NFE and study seed (worse / better beyond both spreads, or within), and the
    product's own paired counts for the same pairs, from the rows' held-out FIDs. ``agrees``:
    both put the arm on the same side (more pairs worse than better, more better than worse,
    or neither)."""
    by = {(r["nfe"], r["seed"], arm_of(r)): r for r in rows}
    out: dict[str, Any] = {}
    for (nfe, seed, arm), r in by.items():
        ref = by.get((nfe, seed, base))
        if arm == base or ref is None:
            continue
        c = out.setdefault(
            arm,
            {
                "independent": {"worse": 0, "better": 0, "within": 0},
                "product": {"worse": 0, "better": 0, "within": 0},
                "pairs": 0,
                "same_call": 0,
            },
        )
        calls = []
        for kind, value, spread in (
            ("independent", "raw", "raw_spread"),
            ("product", "held_out", "held_out_spread"),
        ):
            call = pair_call(r, ref, value, spread)
            c[kind][call] += 1
            calls.append(call)
        c["pairs"] += 1
        c["same_call"] += calls[0] == calls[1]
    for c in out.values():
        ind, prod = c["independent"], c["product"]

        def side(counts: Mapping[str, int]) -> int:
            return (counts["worse"] > counts["better"]) - (counts["worse"] < counts["better"])

        # the same side of the verdict: more pairs worse than better, more better than worse,
        # or neither; a gain the check does not see is not confirmed
        c["agrees"] = side(ind) == side(prod)
    return out


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    from benchmarks.digits_model import DEFAULT_CACHE, train_digits_model
    from sigmatune.models.data import load_dataset
    from sigmatune.study.config import load_config

    t0 = time.perf_counter()
    source = json.loads(Path(args.source).read_text(encoding="utf-8"))
    rows = [r for r in source["rows"] if "sigmas" in r]
    if not rows:
        raise SystemExit(
            f"{args.source}: its rows keep no schedule ('sigmas'); rerun "
            "python -m benchmarks.search_images to write one that does"
        )
    if any(r.get("sampler", "heun") != "heun" for r in rows):
        raise SystemExit(f"{args.source}: the bare loop is Heun's; some rows used another sampler")
    preset = load_config("digits")
    cache = DEFAULT_CACHE if not source.get("quick") else BENCH_OUT / "search-images-digits"
    D, nimg = train_digits_model(preset, source["settings"]["train_nimg"], cache, log=log)
    data = load_dataset(preset.dataset, seed=preset.seed)
    log(f"{len(rows)} schedules, {args.sets} halvings of {len(data)} images")
    scores = raw_scores(D, {row_key(r): r["sigmas"] for r in rows}, data.x, sets=args.sets)
    out_rows = []
    for r in rows:
        s = _stats(scores["schedules"][row_key(r)])
        out_rows.append(
            {
                **{k: r[k] for k in ("nfe", "seed", "images", "held_out", "held_out_spread")},
                "arm": arm_of(r),
                "raw": s["mean"],
                "raw_spread": s["spread"],
                "raw_values": scores["schedules"][row_key(r)],
            }
        )
    base = arm_of(source["rows"][0])
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "source": Path(args.source).name,
        "source_commit": source.get("git", {}).get("commit"),
        "model": f"U-Net, EDM defaults, {nimg:,} training images",
        "sets": args.sets,
        "floor": {**_stats(scores["real_vs_real"]), "values": scores["real_vs_real"]},
        "base": base,
        "rows": out_rows,
        "comparison": compare(out_rows, base),
        "wall_seconds": time.perf_counter() - t0,
    }
    publish(NAME, payload, render_readme, args.out)
    return payload


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = sorted(payload["rows"], key=lambda r: (r["nfe"], r["seed"], r["arm"] != payload["base"]))
    table = format_table(
        ["NFE", "study seed", "arm", "held-out FID (the benchmark)", "raw-pixel Fréchet (check)"],
        [
            [
                r["nfe"],
                r["seed"],
                r["arm"],
                f"{fmt(r['held_out'])} ± {fmt(r['held_out_spread'], 2)}",
                f"{fmt(r['raw'])} ± {fmt(r['raw_spread'], 2)}",
            ]
            for r in rows
        ],
    )
    lines = []
    for arm, c in payload["comparison"].items():
        ind, prod = c["independent"], c["product"]
        lines.append(
            f"- arm {arm} against arm {payload['base']}, {c['pairs']} pairs (same NFE and study "
            f"seed): the check calls it worse beyond both spreads in {ind['worse']}, better in "
            f"{ind['better']}, within in {ind['within']}; the benchmark's held-out FID: worse "
            f"{prod['worse']}, better {prod['better']}, within {prod['within']}; the same call "
            f"in {c['same_call']} of {c['pairs']}: "
            f"**{'agrees' if c['agrees'] else 'disagrees'}** on which side of the all-images "
            "arm it lies."
        )
    floor = payload["floor"]
    caption = (
        f"Independent check of `{payload['source']}` (commit {str(payload['source_commit'])[:7]}): "
        f"each study's reported schedule drawn by a bare Heun loop on the same model "
        f"({payload['model']}), raw-pixel Fréchet distance to half the data set, "
        f"{payload['sets']} random halvings (real vs real: {fmt(floor['mean'])} ± "
        f"{fmt(floor['spread'], 2)}); spreads over the halvings."
    )
    text = "\n".join([caption, "", table, "", *lines, "", machine_line(payload["machine"])])
    return {"search_images_check": text}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser(NAME, __doc__)
    p.add_argument(
        "--source",
        default=str(RESULTS_DIR / "search_images.json"),
        help="the search_images JSON to check (default: the committed one)",
    )
    p.add_argument("--sets", type=int, default=SETS, help=f"random halvings ({SETS})")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    if args.sets < 2:
        p.error(f"--sets: at least 2 halvings give a spread, got {args.sets}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


if __name__ == "__main__":
    main()
