"""Why the outer pruner's interim score misranks at the first rung: its own noise, or the
models changing order after it? From committed ``benchmarks.outer_study`` results.

``benchmarks.outer_study`` records, for each literature configuration, the interim score at
every checkpoint (mean and seed-to-seed spread over the held-out seed sets) and the final
held-out FID, and Spearman's rho between the two. A low rho has two possible causes, which call
for different remedies:

- **Noise**: the interim cannot rank even the checkpoint it scores. Remedy: a more precise
  interim (more images, more seed sets, a paired score).
- **Crossing**: the interim ranks the checkpoint well, but the models change order after it
  (their learning curves cross: one that is behind at 32k images is ahead at 128k; or the
  interim's fixed schedule suits an undertrained model differently from the final, tuned
  one). A more precise score of that checkpoint cannot fix it; a later rung, or a predictor of
  the rest of the curve, can.

This script tells them apart with one number per rung, the interim's *precision ceiling*: the
expected Spearman rho between the recorded interim means and the same means redrawn with each
model's standard error (spread / sqrt(seed sets)), independently per model (Monte Carlo,
seeded). The held-out seed sets are shared by the models, so their differences are less noisy
than independent draws: the ceiling is a lower bound on the interim's precision (each spread
is itself estimated from the few seed sets a study uses, three by default). The final
score's own ceiling is computed the same way. A rung whose ceiling is high (>= 0.9) and whose
rho with the final is low is a crossing, not noise.

    python -m benchmarks.interim_ceiling            # the committed toy and gmm32 runs, seconds
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    benchmark_parser,
    format_table,
    new_payload,
    publish,
    results_path,
)

NAME = "interim_ceiling"
SOURCES = ("outer_study_toy.json", "outer_study_gmm32.json")
DRAWS = 20_000
PRECISE = 0.9  # a ceiling at or above this: the interim ranks its own checkpoint
TARGET_RHO = 0.8  # issue 19's target for the interim-vs-final rank agreement


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between ``a`` [..., n] and ``b`` [..., n] along the last axis (no
    ties: continuous values): Pearson's correlation of the ranks."""
    ra = np.argsort(np.argsort(a, axis=-1), axis=-1).astype(float)
    rb = np.argsort(np.argsort(b, axis=-1), axis=-1).astype(float)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def precision_ceiling(
    means: Sequence[float], errors: Sequence[float], draws: int = DRAWS, seed: int = 0
) -> float:
    """The expected Spearman rho between ``means`` and ``means`` redrawn with independent
    normal errors of standard deviation ``errors`` (one per model)."""
    m = np.asarray(means, dtype=float)
    e = np.asarray(errors, dtype=float)
    rng = np.random.default_rng(seed)
    redrawn = m + rng.standard_normal((draws, m.size)) * e
    return float(spearman(np.broadcast_to(m, redrawn.shape), redrawn).mean())


def ranks(values: Mapping[str, float]) -> dict[str, int]:
    """1 for the lowest (best) value."""
    order = sorted(values, key=lambda k: values[k])
    return {k: order.index(k) + 1 for k in values}


def analyse(source: Mapping[str, Any], name: str, draws: int = DRAWS) -> dict[str, Any]:
    """The precision ceilings of one outer-study JSON's interims (per kind and checkpoint) and
    of its final scores, beside the rho it recorded (``outer_study.interim_agreement``), and
    the models that moved most in rank."""
    sets = int(source["config"]["inner"]["held_out_sets"])
    literature = {str(r["trial"]): r for r in source["literature"] if r["state"] == "COMPLETE"}
    final = {k: float(r["fid"]) for k, r in literature.items()}
    final_ceiling = precision_ceiling(
        [final[k] for k in sorted(final)],
        [float(r["fid_spread"]) / np.sqrt(sets) for _, r in sorted(literature.items())],
        draws,
    )
    rows = []
    for kind, by_nimg in source["interim"]["scores"].items():
        for nimg, scores in sorted(by_nimg.items(), key=lambda kv: int(kv[0])):
            # rho, n and whether this checkpoint is a rung: as outer_study recorded them
            agreement = source["interim"]["agreement"][kind][nimg]
            rho = float(agreement["rho"])
            trials = sorted(k for k in scores if k in final)
            interim = {k: float(scores[k]["fid"]) for k in trials}
            ceiling = precision_ceiling(
                [interim[k] for k in trials],
                [float(scores[k]["spread"]) / np.sqrt(sets) for k in trials],
                draws,
            )
            at, then = ranks(interim), ranks({k: final[k] for k in trials})
            moved = max(trials, key=lambda k: (abs(at[k] - then[k]), -then[k]))
            cause = "met" if rho >= TARGET_RHO else "crossing" if ceiling >= PRECISE else "noise"
            rows.append(
                {
                    "kind": kind,
                    "nimg": int(nimg),
                    "rung": bool(agreement["rung"]),
                    "n": int(agreement["n"]),
                    "rho": rho,
                    "ceiling": ceiling,
                    "cause": cause,
                    "moved": {
                        "trial": int(moved),
                        "name": literature[moved]["name"],
                        "rank_here": at[moved],
                        "rank_final": then[moved],
                    },
                }
            )
    return {
        "source": name,
        "source_commit": source["git"]["commit"],
        "preset": source["preset"],
        "nfe": source["nfe"],
        "held_out_sets": sets,
        "final_ceiling": final_ceiling,
        "rows": rows,
    }


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    table_rows = []
    for study in payload["studies"]:
        for r in study["rows"]:
            m = r["moved"]
            table_rows.append(
                [
                    study["preset"],
                    f"{r['nimg']:,}" + (" (rung)" if r["rung"] else ""),
                    f"{r['rho']:.2f}",
                    f"{r['ceiling']:.2f}",
                    f"{study['final_ceiling']:.2f}",
                    {"met": "met", "crossing": "models cross later", "noise": "interim noise"}[
                        r["cause"]
                    ],
                    f"{m['name']}: {m['rank_here']} here, {m['rank_final']} at the end",
                ]
            )
    table = format_table(
        [
            "preset",
            "training images",
            "ρ vs final",
            "interim precision ceiling",
            "final precision ceiling",
            "why ρ < 0.8",
            "moved most in rank",
        ],
        table_rows,
    )
    sources = ", ".join(f"`{s['source']}` ({s['source_commit'][:7]})" for s in payload["studies"])
    text = (
        f"From {sources}: the karras interim of each literature model at each checkpoint, its "
        f"Spearman ρ with the final held-out FID (NFE {payload['studies'][0]['nfe']}), and the "
        f"precision ceilings: the expected ρ of the interim (or final) means with themselves "
        f"redrawn within their standard errors ({payload['draws']:,} draws; independent per "
        f"model, so a lower bound). Where the ceiling is ≥ {PRECISE} and ρ < {TARGET_RHO}, "
        f"the interim ranks its own checkpoint and the models change order after it: a more "
        f"precise interim of that checkpoint cannot reach the target; a later rung can.\n\n"
        f"{table}"
    )
    return {"ceiling": text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, __doc__)
    parser.add_argument(
        "--sources",
        nargs="+",
        default=list(SOURCES),
        help="outer_study JSON files (names in benchmarks/results/, or paths)",
    )
    parser.add_argument("--draws", type=int, default=DRAWS, help="Monte Carlo draws per rho")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    payload = new_payload(NAME, argv)
    payload["draws"] = args.draws
    payload["studies"] = []
    for name in args.sources:
        path = Path(name) if Path(name).exists() else RESULTS_DIR / name
        source = json.loads(path.read_text(encoding="utf-8"))
        if "interim" not in source:
            parser.error(f"{path} has no interim scores (run benchmarks.outer_study on it)")
        payload["studies"].append(analyse(source, path.name, args.draws))
    publish(NAME, payload, render_readme, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
