"""Run the overhead measurements and write ``benchmarks/results/overhead.json``.

Both presets' networks are measured: ``digits`` (a small U-Net on 8x8 images) and ``toy`` (an
MLP on 2-D points), untrained (their weights do not change their cost). By default torch and
BLAS run one thread (``--threads``): on a shared machine a descheduled second OpenMP thread
makes every step many times slower, and both sides of a ratio run under the same setting.

    python -m benchmarks.overhead                  # the full default, ~6 min on 2 CPUs
    python -m benchmarks.overhead --quick --out /tmp/overhead.json        # smoke run
    python -m benchmarks.overhead --presets toy --only training,sampling --repeats 9
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    BENCH_OUT,
    benchmark_parser,
    fmt,
    fmt_percent,
    format_table,
    limited_threads,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
)
from benchmarks.overhead import optuna_trial, sampling, scoring, training
from benchmarks.overhead.setup import DEFAULT_SIZES, PRESETS, QUICK_SIZES, Sizes, load_setup

NAME = "overhead"
MEASUREMENTS = ("training", "sampling", "scoring", "optuna")


def as_dict(row: Any) -> dict[str, Any]:
    """A typed row as JSON: its fields and its verdict."""
    return {**dataclasses.asdict(row), "met": row.met}


def verdict(met: bool | None, target: str) -> str:
    if met is None:
        return "-"
    return f"{target}: {'met' if met else 'missed'}"


def render_tables(payload: Mapping[str, Any]) -> dict[str, str]:
    """The printed tables, one per measurement, from the JSON's rows."""
    out = {}
    if payload.get("training"):
        out["training"] = format_table(
            ["preset", "batch", "steps", "ours img/s", "plain img/s", "ratio", "target"],
            [
                [
                    r["preset"],
                    r["batch_size"],
                    r["steps"],
                    r["ours_images_per_s"],
                    r["plain_images_per_s"],
                    r["ratio"],
                    verdict(r["met"], f"<= {r['target']}"),
                ]
                for r in payload["training"]
            ],
        )
    if payload.get("sampling"):
        out["sampling"] = format_table(
            [
                "preset",
                "sampler",
                "NFE",
                "images",
                "generate img/s",
                "bare img/s",
                "ratio",
                "first call",
                "sampler fn",
                "target",
            ],
            [
                [
                    r["preset"],
                    r["sampler"],
                    r["nfe"],
                    f"{r['generations_per_call']} x {r['num_images']}",
                    r["generate_images_per_s"],
                    r["bare_images_per_s"],
                    r["ratio"],
                    r["first_call_ratio"],
                    r["sampler_ratio"],
                    verdict(r["met"], f"<= {r['target']}"),
                ]
                for r in payload["sampling"]
            ],
        )
    if payload.get("scoring"):
        out["scoring"] = format_table(
            [
                "preset",
                "extractor",
                "images",
                "NFE",
                "generate s",
                "score s",
                "score/generate",
                "set-up s",
                "target",
            ],
            [
                [
                    r["preset"],
                    r["extractor"],
                    r["num_images"],
                    r["nfe"],
                    r["generate_seconds"],
                    r["score_seconds"],
                    fmt_percent(r["ratio"]),
                    r["scorer_setup_seconds"],
                    verdict(r["met"], f"< {fmt_percent(r['target'], 0)}" if r["target"] else ""),
                ]
                for r in payload["scoring"]
            ],
        )
    if payload.get("optuna"):
        out["optuna"] = format_table(
            [
                "preset",
                "trials x images",
                "trial s",
                "direct s",
                "overhead s",
                "sampler s",
                "storage s",
                "commits",
                "overhead",
                "at full size",
                "target",
            ],
            [
                [
                    r["preset"],
                    f"{r['inner_trials']} x {r['num_images']}",
                    r["trial_seconds"],
                    r["direct_seconds"],
                    r["overhead_seconds"],
                    r["sampler_seconds"],
                    r["storage_seconds"],
                    f"{r['commits_per_trial']:.0f}",
                    fmt_percent(r["overhead_fraction"]),
                    f"{fmt_percent(r['overhead_fraction_full_trial'])} of "
                    f"{r['full_trial_images']} img",
                    verdict(r["met"], f"<= {fmt_percent(r['target'], 0)}"),
                ]
                for r in payload["optuna"]
            ],
        )
    return out


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    """The README block: one row per measurement, one column per preset, from the JSON."""
    presets = list(payload["presets"])
    by = {key: {r["preset"]: r for r in payload.get(key, [])} for key in MEASUREMENTS}

    def cells(key: str, text: Callable[[Mapping[str, Any]], str]) -> list[str]:
        return [text(by[key][p]) if p in by[key] else "-" for p in presets]

    def spread(r: Mapping[str, Any], a: str, b: str) -> str:
        """The median ratio over the rounds, and its range."""
        ratios = [x / y for x, y in zip(r[a], r[b], strict=True)]
        return f"{fmt(r['ratio'])} (rounds {fmt(min(ratios), 3)}–{fmt(max(ratios), 3)})"

    def targets(key: str, target: str) -> str:
        rows = [by[key][p] for p in presets if p in by[key] and by[key][p]["met"] is not None]
        verdicts = ", ".join(f"{r['preset']} {'met' if r['met'] else 'missed'}" for r in rows)
        return f"{target}: {verdicts}" if rows else "-"

    rows: list[list[str]] = []
    if by["training"]:
        rows.append(
            [
                "our `train()` vs a plain PyTorch loop (same network, batch, Adam, EDM loss, EMA), "
                "time ratio",
                *cells(
                    "training",
                    lambda r: spread(r, "ours_seconds_all", "plain_seconds_all"),
                ),
                targets("training", "≤ 1.05"),
            ]
        )
    if by["sampling"]:
        r0 = next(iter(by["sampling"].values()))
        rows.append(
            [
                f"our `generate` + `{r0['sampler']}` vs a bare loop, NFE {r0['nfe']}, time ratio",
                *cells("sampling", lambda r: spread(r, "generate_seconds_all", "bare_seconds_all")),
                targets("sampling", "≤ 1.05"),
            ]
        )
    if by["scoring"]:
        r0 = next(iter(by["scoring"].values()))
        rows.append(
            [
                f"FID scoring vs generating {fmt(r0['num_images'])} images at NFE {r0['nfe']}",
                *cells(
                    "scoring",
                    lambda r: (
                        f"{fmt_percent(r['ratio'])} ({fmt(r['score_seconds'])} "
                        f"s vs {fmt(r['generate_seconds'])} s, medians)"
                    ),
                ),
                targets("scoring", "< 10%"),
            ]
        )
    if by["optuna"]:
        r0 = next(iter(by["optuna"].values()))
        rows.append(
            [
                f"Optuna ({r0['inner_sampler']} sampler) + SQLite per inner trial, share of a full "
                f"trial ({fmt(r0['full_trial_images'])} images)",
                *cells(
                    "optuna",
                    lambda r: (
                        f"{fmt_percent(r['headline'])} "
                        f"({fmt(r['overhead_seconds'])} s: sampler {fmt(r['sampler_seconds'])} s, "
                        f"storage {fmt(r['storage_seconds'])} s)"
                    ),
                ),
                targets("optuna", "≤ 5%"),
            ]
        )
    table = format_table(["what", *presets, "target"], rows)
    caption = (
        f"Ratios measured in one process, the two sides interleaved, the median of the per-round "
        f"ratios over {payload['sizes']['repeats']}–{payload['sizes']['sample_repeats']} rounds "
        f"(their range in brackets: other processes shared the CPUs); untrained "
        f"networks of the presets, {payload['machine']['torch_threads']} torch thread(s). "
        f"{machine_line(payload['machine'])}"
    )
    return {"overhead": f"{caption}\n\n{table}"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("overhead", __doc__, 1)
    parser.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated: digits, toy")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma-separated: {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (0: as is)")
    parser.add_argument(
        "--cache-dir",
        default=str(BENCH_OUT / "overhead-cache"),
        help="scorer caches (the digits classifier is trained once, then read from here)",
    )
    parser.add_argument(
        "--out", default=None, help=f"JSON (default benchmarks/results/{NAME}.json)"
    )
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    for name, values, allowed in (
        ("--presets", args.presets, PRESETS),
        ("--only", args.only, MEASUREMENTS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            parser.error(f"{name} must be among {', '.join(allowed)}, but got {bad or values}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, but got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.repeats is not None:
        sizes = sizes.with_repeats(args.repeats)

    with limited_threads(args.threads):
        return run(args, argv, sizes, log)


def run(
    args: argparse.Namespace, argv: Sequence[str] | None, sizes: Sizes, log: Callable[[str], None]
) -> dict[str, Any]:
    t_start = time.perf_counter()
    setups = [load_setup(p) for p in args.presets]
    cache_dir = Path(args.cache_dir)
    payload: dict[str, Any] = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
        "presets": args.presets,
        "measurements": args.only,
    }
    if "training" in args.only:
        payload["training"] = [as_dict(training.measure(s, sizes, log)) for s in setups]
    if "sampling" in args.only:
        payload["sampling"] = [as_dict(sampling.measure(s, sizes, log)) for s in setups]
    scored: dict[str, scoring.ScoringRow] = {}
    if "scoring" in args.only or "optuna" in args.only:
        # the Optuna share is of a full-size trial, whose compute the scoring row times
        scored = {s.preset: scoring.measure(s, sizes, cache_dir, log) for s in setups}
        payload["scoring"] = [as_dict(row) for row in scored.values()]
    if "optuna" in args.only:
        rows = []
        for s in setups:
            row = scored[s.preset]
            full = row.trial_seconds if row.num_images == s.config.inner.fid_num_images else None
            result = optuna_trial.measure(s, sizes, cache_dir, full, log)
            rows.append({**as_dict(result), "headline": result.headline})
        payload["optuna"] = rows
    payload["wall_seconds"] = time.perf_counter() - t_start
    payload["tables"] = render_tables(payload)
    print("\n\n".join(payload["tables"].values()) + "\n")
    publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
