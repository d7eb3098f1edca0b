"""Tuned step locations on a trained model: the ``digits`` preset's U-Net trained with EDM's
defaults (``benchmarks/digits_model.py``, cached under ``bench-out/digits-model``), its inner
studies run by the product (``study.context.make_context``, ``study.inner.tune_steps``: the
``digits`` preset's search, GPSampler on ln FID of classifier features, Heun), at NFE 5, 7, 9
and 15.

Every figure is a held-out FID (``SeedPlan``: seed sets disjoint from the search's; mean ±
spread), beside the scorer's floor (held-out real digits against the reference) and noise vs
real (a reference point, not a bound), and beside the model's own best: a ``--ref-steps``
(256) karras ρ=7 Heun reference, which says whether the model is trained long enough for a
schedule to matter (its FID should be near the floor). Gains as the study splits them: "step
placement" = tuned / karras ρ=7 on the tuned σ range, "σ range" = karras same range / karras
full range (1 when the preset keeps the range fixed). Target: tuned <= 0.8 x karras same range
at NFE 9.

The independent check draws the same schedules with a bare Heun loop written here (its own
noise, the network called with inline EDM preconditioning) and scores them with a Fréchet
distance on raw pixels computed here in numpy, against a random half of the data set.

On two CPU cores shared with other work: training 400k images ~30 min, the studies ~30 min,
the reference ~35 min (run it beside the studies with ``--reference-only``); a rerun reads
the model, the studies and the reference from ``bench-out``.

    python -m benchmarks.quality_trained --reference-only &   # the reference, in parallel
    python -m benchmarks.quality_trained                      # trains once (400k images)
    python -m benchmarks.quality_trained --quick --out /tmp/qt.json      # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    BENCH_OUT,
    benchmark_parser,
    floor_ratio,
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
from benchmarks.overhead.sampling import bare_sample
from benchmarks.quality import (
    LABELS,
    Figure,
    fid_table,
    floor_text,
    held_out_scores,
    row_from_record,
)
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.schedules import karras
from sigmatune.study import spaces
from sigmatune.study.config import Config, load_config
from sigmatune.study.context import RunContext, make_context
from sigmatune.study.inner import inner_study_name, tune_steps
from sigmatune.study.records import InnerRecord, Schedule
from sigmatune.study.storage import short_hash

NAME = "quality_trained"
TARGET = {"nfe": 9, "placement_ratio": 0.8}
WORK = BENCH_OUT / "quality_trained"  # studies (resumable) and the scorer's cache
INDEPENDENT_SEED = 77_000_000  # the independent check's torch seed

FULL = {"train_nimg": 400_000, "nfe": [5, 7, 9, 15], "trials": None, "ref_steps": 256}
QUICK = {"train_nimg": 2048, "nfe": [5], "trials": 7, "ref_steps": 8, "fid_images": 64}


def study_config(args: argparse.Namespace, nimg: int) -> Config:
    """The ``digits`` preset with this benchmark's budgets; its studies named by the model."""
    overrides: dict[str, Any] = {
        "name": f"qt-digits-{nimg}" + ("-range" if args.tune_sigma_range else ""),
        "storage": f"sqlite:///{Path(args.work) / 'studies.db'}",
        "artifact_dir": str(Path(args.work) / "artifacts"),
        "seed": args.seed,
        "device": "cpu",
        "inner.nfe_budgets": list(args.nfe),
        "inner.tune_sigma_range": bool(args.tune_sigma_range),
    }
    if args.trials:
        overrides["inner.inner_trials"] = args.trials
    if args.quick:  # a smoke run: no GITS or LD3 fits (half its time), the search alone
        overrides["inner.peers"] = []
    if args.fid_images:
        overrides["inner.fid_num_images"] = args.fid_images
        overrides["inner.batch_size"] = min(500, args.fid_images)
    return load_config("digits", overrides)


# ----------------------------------------------------------------------------- independent check


def raw_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two sets of flattened images (Heusel et al. 2017,
    eq. 6, on raw pixels). tr sqrt(C_a C_b) = sum sqrt(eig(C_a^1/2 C_b C_a^1/2)), which stays
    exact when a covariance is singular (digits' border pixels are constant)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cb @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


def independent_check(
    ctx: RunContext, D: Denoiser, schedules: Mapping[int, Mapping[str, Schedule]], sets: int
) -> dict[str, Any]:
    """Raw-pixel Fréchet distance to real digits of each schedule's samples, drawn by a bare
    Heun loop (its own noise; clamped to [-1, 1] as a saved image is), per NFE, on ``sets``
    random halvings of the data set: generated images (as many as one half) against one half,
    and the other half against it (real vs real, the floor at this size)."""
    x_real = ctx.data.x.reshape(len(ctx.data), -1).double().numpy()
    out: dict[str, Any] = {
        str(nfe): {name: [] for name in group} for nfe, group in schedules.items()
    }
    out["real_vs_real"] = []
    for k in range(sets):
        g = torch.Generator().manual_seed(INDEPENDENT_SEED + k)
        perm = torch.randperm(len(ctx.data), generator=g).numpy()
        half = len(perm) // 2
        a, b = x_real[perm[:half]], x_real[perm[half:]]
        out["real_vs_real"].append(raw_frechet(a, b))
        eps = torch.randn(half, *ctx.shape, generator=g)
        done: dict[tuple[Any, ...], float] = {}
        for nfe, group in schedules.items():
            for name, schedule in group.items():
                if schedule.key not in done:
                    sigmas = [float(s) for s in schedule.sigmas]
                    with torch.no_grad():
                        x = bare_sample(D.net, sigmas[0] * eps, sigmas, float(D.sigma_data), "heun")
                    x = x.clamp(-1, 1).reshape(half, -1).double().numpy()
                    done[schedule.key] = raw_frechet(x, b)
                out[str(nfe)][name].append(done[schedule.key])
    return out


# ----------------------------------------------------------------------------- the run


def reference_figure(args: argparse.Namespace, ctx: RunContext, D: Denoiser, nimg: int) -> Figure:
    """The held-out FID of ``--ref-steps`` karras rho=7 Heun steps over the run's range: the
    model's best. Cached in the work folder by model and seeds (it is the costliest figure:
    ``--reference-only`` computes it in a process of its own, beside the studies)."""
    config = ctx.config
    sigmas = karras(args.ref_steps, config.sigma_min, config.sigma_max, spaces.KARRAS_RHO)
    reference = Schedule("heun", tuple(float(s) for s in sigmas))
    key = {
        "nimg": nimg,
        "steps": args.ref_steps,
        "seeds": ctx.seeds.to_dict(),
        "seed": args.seed,
        "extractor": config.inner.fid_extractor,  # the same images score otherwise by another
    }
    cache = Path(args.work) / f"reference-{short_hash(key)}.json"
    if cache.is_file():
        return Figure.of(json.loads(cache.read_text())["values"])
    t0 = time.perf_counter()
    ref = Figure.of(held_out_scores(ctx, D, reference))
    log(f"{args.ref_steps}-step reference: {ref.text()} ({time.perf_counter() - t0:.0f} s)")
    cache.write_text(json.dumps({**key, "values": list(ref.values)}))
    return ref


def run_study(args: argparse.Namespace, study_log: Callable[[str], None]) -> dict[str, Any]:
    base = load_config("digits")
    t0 = time.perf_counter()
    D, nimg = train_digits_model(base, args.train_nimg, Path(args.cache), log=log)
    train_seconds = time.perf_counter() - t0
    config = study_config(args, nimg)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ctx = make_context(config, progress=False, log=study_log)
    floors = ctx.scorer.floors(sets=ctx.seeds.held_out_sets)
    log(f"digits model of {nimg:,} images; floor {floors.floor:.3g} ± {floors.floor_spread:.2g}")
    if args.reference_only:
        return {"reference_fid": vars(reference_figure(args, ctx, D, nimg))}
    rows = []
    records: dict[int, InnerRecord] = {}
    for nfe in args.nfe:
        t0 = time.perf_counter()
        record = tune_steps(ctx, D, inner_study_name(config.name, nfe), nfe)
        records[nfe] = record
        row = row_from_record("digits", record, floors)
        rows.append({**row.to_dict(), "seconds": time.perf_counter() - t0})
        log(
            f"NFE {nfe}: tuned {row.fid['tuned'].text()}, karras same range "
            f"{row.fid['karras_rho7_same_range'].text()}, full {row.fid['karras_rho7'].text()}; "
            f"placement {row.placement_ratio}, at bound {row.at_bound}"
        )
    ref = reference_figure(args, ctx, D, nimg)
    for r in rows:
        r["reference_over_karras_same_range"] = (
            ref.mean / r["fid"]["karras_rho7_same_range"]["mean"]
        )
    target_row = next((r for r in rows if r["nfe"] == TARGET["nfe"]), None)
    check = None
    if not args.no_check:
        t0 = time.perf_counter()
        compared = {
            nfe: dict(record.schedules)
            if nfe == TARGET["nfe"]
            else {k: record.schedules[k] for k in ("tuned", "karras_rho7_same_range")}
            for nfe, record in records.items()
        }
        values = independent_check(ctx, D, compared, sets=args.check_sets)
        check = {
            "real_vs_real": vars(Figure.of(values.pop("real_vs_real"))),
            "raw_frechet": {
                nfe: {k: vars(Figure.of(v)) for k, v in group.items()}
                for nfe, group in values.items()
            },
            "seconds": time.perf_counter() - t0,
        }
        log(f"independent check: {check}")
    ratio = None if target_row is None else target_row["placement_ratio"]
    target = {
        **TARGET,
        "measured": target_row is not None,
        "value": ratio,
        "met": None if ratio is None else ratio <= TARGET["placement_ratio"],
    }
    target["verdict"] = target_verdict(target, check)  # in words, the check's view included
    return {
        "model": {
            "objective": "EDM defaults: edm, lognormal(-1.2, 1.2), unit weighting",
            "network": f"{base.network.name} {dict(base.network.params)}",
            "train_nimg": nimg,
            "batch_size": base.train.batch_size,
            "lr": base.train.lr,
            "ema_halflife_nimg": base.train.ema_halflife_nimg,
            "seconds_this_run": train_seconds,
        },
        "floors": floors.to_dict(),
        "seeds": ctx.seeds.to_dict(),
        "reference_steps": args.ref_steps,
        "reference_fid": vars(ref),
        "reference_over_floor": ref.mean / floors.floor,
        "study": {
            "preset": "digits",
            "inner_sampler": config.inner.sampler,
            "inner_trials": config.inner.inner_trials,
            "fid_extractor": config.inner.fid_extractor,
            "fid_num_images": config.inner.fid_num_images,
            "tune_sigma_range": config.inner.tune_sigma_range,
            "gap_range": [spaces.GAP_RANGE.low, spaces.GAP_RANGE.high],
        },
        "rows": rows,
        "target": target,
        "independent_check": check,
    }


def target_verdict(target: Mapping[str, Any], check: Mapping[str, Any] | None) -> str:
    """The target's verdict (``benchmarks._common.verdict``): not measured; "at the floor:
    undecidable" where tuned and karras on the same range are both at the floor (no ratio);
    "contradicted by the independent check" where its raw-pixel ratio at the target NFE,
    outside its own floor (real vs real), falls on the other side of the target; else met /
    missed."""
    if not target["measured"]:
        return verdict(None)
    independent = None
    group = ((check or {}).get("raw_frechet") or {}).get(str(target["nfe"])) or {}
    if "tuned" in group and "karras_rho7_same_range" in group:
        rr = (check or {}).get("real_vs_real") or {}
        ratio = floor_ratio(
            group["tuned"]["mean"],
            group["karras_rho7_same_range"]["mean"],
            rr.get("mean"),
            rr.get("spread"),
        )
        independent = None if ratio is None else ratio <= target["placement_ratio"]
    return verdict(target["met"], undecidable=target["value"] is None, independent_met=independent)


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    """The README block, from the JSON's figures."""
    d = payload["digits"]
    m, st, ref = d["model"], d["study"], d["reference_fid"]
    rows = d["rows"]
    caption = (
        f"**digits**: the `digits` preset's U-Net trained with EDM's defaults for "
        f"{fmt(m['train_nimg'])} images; Heun. FID on {st['fid_extractor']} features of "
        f"{fmt(st['fid_num_images'])} images, held-out mean ± spread over "
        f"{d['seeds']['held_out_sets']} seed sets; {floor_text(rows[0])}. The model's "
        f"{d['reference_steps']}-step karras ρ=7 reference: "
        f"{fmt_spread(ref['mean'], ref['spread'])} ({d['reference_over_floor']:.2f}× the "
        f"floor). Tuned = best of {st['inner_trials']} "
        f"trials ({st['inner_sampler']}, σ range {'tuned' if st['tune_sigma_range'] else 'fixed'})."
    )
    t = d["target"]
    said = target_verdict(t, d.get("independent_check"))
    value = "-" if not t["measured"] else "at floor" if t["value"] is None else f"{t['value']:.3f}"
    target = (
        f"Target: tuned ≤ {t['placement_ratio']}× karras ρ=7 on the same σ range at NFE "
        f"{t['nfe']}: {value} ({said})."
    )
    room = next((r for r in rows if r["nfe"] == t["nfe"]), None)
    if room is not None:
        target += (
            f" The {d['reference_steps']}-step reference is "
            f"{room['reference_over_karras_same_range']:.3f}× karras ρ=7 there: the most any "
            "schedule could gain."
        )
    blocks = [caption, fid_table(rows), target]
    check = d.get("independent_check")
    if check:
        blocks.append(independent_text(check))
    blocks.append(machine_line(payload["machine"]))
    return {"digits": "\n\n".join(blocks)}


def independent_text(check: Mapping[str, Any]) -> str:
    """The independent check, as a caption and a table."""
    by_nfe = check["raw_frechet"]
    first = ["tuned", "karras_rho7_same_range"]
    others = sorted({n for group in by_nfe.values() for n in group} - set(first))
    names = first + others
    body = [
        [int(nfe), *(fmt_spread(g[n]["mean"], g[n]["spread"]) if n in g else "-" for n in names)]
        for nfe, g in sorted(by_nfe.items(), key=lambda kv: int(kv[0]))
    ]
    labels = {**LABELS, "gits": "GITS", "ld3": "LD3"}
    rr = check["real_vs_real"]
    return (
        "Independent check: the same schedules drawn by a bare Heun loop written in the "
        "benchmark (its own noise), Fréchet distance on raw pixels to a random half of the "
        f"data set (real vs real, the other half: {fmt_spread(rr['mean'], rr['spread'])}):\n\n"
        + format_table(["NFE", *(labels.get(n, n) for n in names)], body)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = benchmark_parser("quality_trained", __doc__)
    p.add_argument("--train-nimg", type=int, help=f"training images ({FULL['train_nimg']:,})")
    p.add_argument("--nfe", nargs="+", type=int, help=f"NFE budgets ({FULL['nfe']})")
    p.add_argument("--trials", type=int, help="trials per inner study (default: the preset's)")
    p.add_argument("--fid-images", type=int, help="images per FID (default: the preset's)")
    p.add_argument("--ref-steps", type=int, help=f"reference steps ({FULL['ref_steps']})")
    p.add_argument("--tune-sigma-range", action="store_true", help="tune the σ range too")
    p.add_argument("--check-sets", type=int, default=3, help="noise sets of the independent check")
    p.add_argument("--no-check", action="store_true", help="skip the independent check")
    p.add_argument(
        "--reference-only",
        action="store_true",
        help="compute (and cache) the reference alone, e.g. in a second process",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="the trained models' folder")
    p.add_argument("--work", default=str(WORK), help="the studies and the scorer's cache")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {QUICK}")
    p.add_argument("--verbose", action="store_true", help="the studies' own lines")
    p.add_argument("--out", help=f"JSON (default benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else {**FULL, "fid_images": None}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.nfe = sorted(set(args.nfe))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.reference_only:  # writes no JSON
        args.out = results_path(NAME, args.out, args.allow_dirty)
    with limited_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    t0 = time.perf_counter()
    payload = {
        **new_payload(NAME, argv),
        "quick": args.quick,
        "digits": run_study(args, log if args.verbose else (lambda _m: None)),
    }
    payload["wall_seconds"] = time.perf_counter() - t0
    if not args.reference_only:
        publish(NAME, payload, render_readme, args.out)
    return payload


if __name__ == "__main__":
    main()
