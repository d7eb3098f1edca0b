"""What a user waits for: ``sigmatune run --preset NAME`` as a user runs it, timed.

Each preset runs in a fresh folder as a subprocess (the same command the README gives), and
the benchmark reads the study back (``study.records``) for what it did: outer trials, how
many completed or were pruned, the training images spent, the best trial and its held-out
figures at the primary NFE.

    python -m benchmarks.presets                     # toy
    python -m benchmarks.presets --preset toy digits # and digits (about 45 min on 2 CPUs)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    add_allow_dirty,
    fmt,
    fmt_spread,
    format_table,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
)
from benchmarks.outer_study import images_trained
from sigmatune.study.records import read_study

NAME = "presets"
TARGETS = {  # issue 12: the toy shows the loop working, digits fits a working session
    "toy": {"seconds": 90, "outer_trials": 8, "complete": 3},
    "digits": {"seconds": 45 * 60, "outer_trials": 8, "complete": 3},
}


def run_preset(preset: str, folder: Path, extra: Sequence[str]) -> dict[str, Any]:
    """``sigmatune run --preset PRESET`` in ``folder``, timed; then what the study holds."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sigmatune.study.commands.cli",
            "run",
            "--preset",
            preset,
            "--no-progress",
            *extra,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{preset}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    from sigmatune.study.storage import open_storage

    study = read_study(open_storage(f"sqlite:///{folder / 'sigmatune.db'}"), preset)
    primary = study.primary_nfe
    best = study.best
    held = best.inner[primary].held_out if best is not None else None
    states = [t.state for t in study.trials]
    return {
        "preset": preset,
        "seconds": seconds,
        "outer_trials": len(study.trials),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "images": sum(images_trained(t, study.config.train.train_nimg) for t in study.trials),
        "best_trial": None if best is None else best.number,
        "best_label": None if best is None else best.label,
        "best_name": None if best is None else best.name,
        "nfe": primary,
        "best_fid": None if held is None else held.mean("tuned"),
        "best_fid_spread": None if held is None else held.spread("tuned"),
        "karras_same_range": None if held is None else held.mean("karras_rho7_same_range"),
        "floor": None if held is None else held.floor,
        "targets": TARGETS.get(preset),
    }


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    for r in payload["runs"]:
        t = r.get("targets") or {}
        met = (
            r["seconds"] <= t.get("seconds", float("inf"))
            and r["outer_trials"] >= t.get("outer_trials", 0)
            and r["complete"] >= t.get("complete", 0)
        )
        rows.append(
            [
                f"`sigmatune run --preset {r['preset']}`",
                f"{r['seconds']:.0f} s",
                r["outer_trials"],
                f"{r['complete']} / {r['pruned']} / {r['failed']}",
                r["images"],
                f"{r['best_trial']} ({r['best_name'] or r['best_label']})",
                fmt_spread(r["best_fid"], r["best_fid_spread"]),
                fmt(r["floor"]),
                "met" if met else "missed",
            ]
        )
    table = format_table(
        [
            "command",
            "wall time",
            "outer trials",
            "complete / pruned / failed",
            "training images",
            "best trial",
            "its held-out FID (primary NFE)",
            "floor",
            "target",
        ],
        rows,
    )
    targets = "; ".join(
        f"{p}: <= {t['seconds']} s, >= {t['outer_trials']} trials, >= {t['complete']} complete"
        for p, t in TARGETS.items()
    )
    return {"presets": f"{table}\n\nTargets: {targets}. {machine_line(payload['machine'])}"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["toy"])
    parser.add_argument("--out", default=None)
    parser.add_argument("extra", nargs="*", help="arguments passed on to `sigmatune run`")
    add_allow_dirty(parser)
    args = parser.parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    payload = new_payload(NAME, argv)
    payload["runs"] = []
    t0 = time.perf_counter()
    for preset in args.preset:
        with tempfile.TemporaryDirectory() as d:
            log(f"{preset}: running")
            payload["runs"].append(run_preset(preset, Path(d), args.extra))
            log(f"{preset}: {payload['runs'][-1]['seconds']:.0f} s")
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
