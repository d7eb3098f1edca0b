"""An independent check of an outer study's winner on a mixture preset (``gmm32``): is the
proposed configuration better than the best literature configuration, or did the study's own
sampler, scorer or training seed make it look so?

From a finished ``benchmarks.outer_study`` run (its JSON and its folder), the study's best
trial and the best literature configuration, each with its tuned schedule at the run's NFE:

1. **The same two models, another sampler and distance.** Samples drawn by the outer
   benchmark's bare Heun loop (``outer_study.bare_heun``: its own noise, none of sigmatune's
   sampler code) and scored by the sliced 2-Wasserstein distance to fresh exact samples of the
   mixture (``benchmarks.independent``, numpy), beside exact samples against exact samples
   (the floor at this size).
2. **Other training seeds.** Each of the two configurations trained again (the product's
   ``train``, the run's settings) with training seeds the study never used, each model drawn
   with its configuration's tuned schedule and scored as in 1, and by the study's own
   held-out FID: a gain that is the training seed's luck does not survive this.

    python -m benchmarks.outer_check --source benchmarks/results/outer_study_gmm32_cmaes.json \\
        --dir bench-out/outer_gmm32 --out benchmarks/results/outer_check_gmm32.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import independent
from benchmarks._common import (
    add_allow_dirty,
    fmt_spread,
    format_table,
    limited_threads,
    log,
    machine_line,
    new_payload,
    publish,
    results_path,
)
from benchmarks.outer_study import bare_heun, model_file, storage_url
from sigmatune.models.data import load_dataset
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.training import train
from sigmatune.objectives.loss import objective_from_description
from sigmatune.study.config import Config
from sigmatune.study.context import make_context
from sigmatune.study.modelfile import load_model_file
from sigmatune.study.outer import train_settings
from sigmatune.study.records import read_study
from sigmatune.study.scoring import score_schedule
from sigmatune.study.storage import open_storage

NAME = "outer_check"
CHECK_SEED = 91_000_000  # the check's noise and true samples: no seed the study used
TRAIN_SEEDS = (101, 202)  # training seeds the study never used (it trains with the run's seed)
SAMPLES = 4000
SETS = 3
PROJECTIONS = 256
ROWS = ("study's best", "best literature")


def sw_scores(
    D: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sigmas: Sequence[float],
    mixture: independent.Mixture,
    *,
    samples: int = SAMPLES,
    sets: int = SETS,
    seed: int = CHECK_SEED,
) -> list[float]:
    """Sliced W2 to fresh exact samples of ``mixture`` of ``D``'s bare-Heun samples along
    ``sigmas``, one value per seed set (its own noise and its own exact samples)."""
    dim = mixture.means.shape[1]
    theta = independent.directions(dim, PROJECTIONS, seed)
    out = []
    for k in range(sets):
        g = torch.Generator().manual_seed(seed + k)
        eps = torch.randn(samples, dim, generator=g, dtype=torch.float32)
        with torch.no_grad():
            x = bare_heun(D, float(sigmas[0]) * eps, [float(s) for s in sigmas])
        truth = mixture.sample(samples, np.random.default_rng([seed, k]))
        out.append(independent.sliced_w2(x.double().numpy(), truth, theta))
    return out


def floor_scores(mixture: independent.Mixture, *, samples: int = SAMPLES, sets: int = SETS):
    """Exact samples against exact samples, as :func:`sw_scores` draws them: the floor."""
    theta = independent.directions(mixture.means.shape[1], PROJECTIONS, CHECK_SEED)
    return [
        independent.sliced_w2(
            mixture.sample(samples, np.random.default_rng([CHECK_SEED, k, 1])),
            mixture.sample(samples, np.random.default_rng([CHECK_SEED, k])),
            theta,
        )
        for k in range(sets)
    ]


def retrain(config: Config, description: Mapping[str, Any], seed: int, folder: Path) -> Denoiser:
    """The configuration ``description`` trained again as the run trains it, with ``seed``."""
    data = load_dataset(config.dataset, seed=config.seed)
    torch.manual_seed(seed)
    net = make_network(config.network.name, dict(config.network.params), data.shape)
    result = train(
        net,
        objective_from_description(dict(description)),
        data.x,
        train_settings(config, seed=seed, checkpoint_nimg=config.train.train_nimg),
        checkpoint_dir=folder,
        run_key=f"outer-check-{seed}",
        device="cpu",
        progress=False,
        log=lambda _m: None,
    )
    return Denoiser(result.ema, description["parameterisation"], data.sigma_data).eval()


def stats(values: Sequence[float]) -> dict[str, Any]:
    v = [float(x) for x in values]
    return {
        "values": v,
        "mean": statistics.fmean(v),
        "spread": statistics.stdev(v) if len(v) > 1 else 0.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = json.loads(Path(args.source).read_text(encoding="utf-8"))
    nfe = int(source["nfe"])
    comparison = source["comparison"]
    arm = (source.get("study_arm") or {}).get("name", "study")
    storage = open_storage(storage_url(Path(args.dir)))
    picks = {
        "study's best": (arm, comparison["best_study"]),
        "best literature": ("literature", comparison["best_literature"]),
    }
    lit = read_study(storage, "literature")
    mixture_obj = load_dataset(lit.config.dataset).analytic
    if mixture_obj is None:
        raise SystemExit(f"{lit.config.dataset!r} has no exact distribution: a mixture preset")
    mixture = independent.Mixture.of(mixture_obj)
    payload: dict[str, Any] = {"nfe": nfe, "source": str(args.source), "rows": {}}
    payload["floor"] = stats(floor_scores(mixture))
    ctx = make_context(lit.config.replace(device="cpu"), progress=False, log=lambda _m: None)

    def held_out_fid(D: Denoiser, schedule: Any) -> dict[str, Any]:
        sets = range(ctx.seeds.held_out_sets)
        return stats([score_schedule(ctx, D, schedule, ctx.seeds.held_out(k)) for k in sets])

    for label, (study_name, row) in picks.items():
        study = read_study(storage, study_name)
        trial = study.trial(int(row["trial"]))
        tuned = trial.inner[nfe].tuned
        if tuned.sampler != "heun" or tuned.sampler_kwargs.get("s_churn", 0):
            raise SystemExit(f"{label}: the check's bare loop is Heun without churn")
        sigmas = [float(s) for s in tuned.sigmas]
        file = model_file(Path(args.dir), study_name, trial.number)
        if file is None:
            raise SystemExit(f"{label}: no model file of trial {trial.number} in {args.dir}")
        D, _ = load_model_file(file)
        entry: dict[str, Any] = {
            "study": study_name,
            "trial": trial.number,
            "name": trial.name,
            "label": trial.label,
            "held_out_fid": {"mean": row["fid"], "spread": row["fid_spread"]},
            "same_model": stats(sw_scores(D.eval(), sigmas, mixture)),
            "retrained": {},
            "retrained_fid": {},
        }
        log(f"{label} (trial {trial.number}): SW {entry['same_model']['mean']:.4g}")
        for seed in args.train_seeds:
            t0 = time.perf_counter()
            D_seed = retrain(
                study.config, trial.objective, seed, Path(args.dir) / "outer-check" / label
            )
            entry["retrained"][str(seed)] = stats(sw_scores(D_seed, sigmas, mixture))
            entry["retrained_fid"][str(seed)] = held_out_fid(D_seed, tuned)
            log(
                f"{label}, training seed {seed}: SW "
                f"{entry['retrained'][str(seed)]['mean']:.4g} ({time.perf_counter() - t0:.0f} s)"
            )
        pooled = [v for r in entry["retrained"].values() for v in r["values"]]
        entry["retrained_pooled"] = stats(pooled) if pooled else None
        fids = [v for r in entry["retrained_fid"].values() for v in r["values"]]
        entry["retrained_fid_pooled"] = stats(fids) if fids else None
        payload["rows"][label] = entry
    a, b = payload["rows"]["study's best"], payload["rows"]["best literature"]
    payload["verdict"] = {
        "same_model": beats(a["same_model"], b["same_model"]),
        "retrained": beats(a["retrained_pooled"], b["retrained_pooled"])
        if a["retrained_pooled"] and b["retrained_pooled"]
        else None,
        "retrained_fid": beats(a["retrained_fid_pooled"], b["retrained_fid_pooled"])
        if a["retrained_fid_pooled"] and b["retrained_fid_pooled"]
        else None,
    }
    return payload


def beats(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a`` is below ``b`` by more than both spreads added (the study's target)."""
    return a["mean"] + a["spread"] + b["spread"] < b["mean"]


def render_readme(payload: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    for label in ROWS:  # in this order (a JSON's keys are stored sorted)
        r = payload["rows"][label]
        seeds = [fmt_spread(v["mean"], v["spread"]) for v in r["retrained"].values()]
        pooled = r.get("retrained_pooled")
        rows.append(
            [
                label,
                f"{r['trial']} ({r['name'] or 'proposed'})",
                fmt_spread(r["held_out_fid"]["mean"], r["held_out_fid"]["spread"]),
                fmt_spread(r["same_model"]["mean"], r["same_model"]["spread"]),
                *seeds,
                fmt_spread(pooled["mean"], pooled["spread"]) if pooled else "-",
                fmt_spread(fp["mean"], fp["spread"])
                if (fp := r.get("retrained_fid_pooled"))
                else "-",
            ]
        )
    seeds = list(next(iter(payload["rows"].values()))["retrained"])
    table = format_table(
        [
            "",
            "trial",
            f"held-out FID, NFE {payload['nfe']} (the study's)",
            "SW2, same model",
            *(f"SW2, trained again (seed {s})" for s in seeds),
            "SW2, trained again (pooled)",
            "held-out FID, trained again (pooled)",
        ],
        rows,
    )
    v = payload["verdict"]

    def word(x: bool | None) -> str:
        return "not measured" if x is None else ("yes" if x else "no")

    fl = payload["floor"]
    text = (
        f"Independent check of `{payload['source']}`: bare Heun (the benchmark's own loop and "
        f"noise), sliced 2-Wasserstein distance ({PROJECTIONS} directions) of {SAMPLES:,} "
        f"samples to as many fresh exact samples, mean ± spread over {SETS} seed sets; exact "
        f"vs exact {fmt_spread(fl['mean'], fl['spread'])}.\n\n{table}\n\n"
        f"The study's best below the best literature configuration by more than both spreads: "
        f"same models {word(v['same_model'])}; trained again with other seeds "
        f"{word(v['retrained'])} (SW2), {word(v.get('retrained_fid'))} (the study's held-out "
        f"FID). {machine_line(payload['machine'])}"
    )
    return {"outer_check": text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the outer_study run's JSON")
    parser.add_argument("--dir", required=True, help="the outer_study run's folder (--dir)")
    parser.add_argument("--train-seeds", nargs="*", type=int, default=list(TRAIN_SEEDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help=f"JSON (default benchmarks/results/{NAME})")
    add_allow_dirty(parser)
    args = parser.parse_args(argv)
    args.out = results_path(NAME, args.out, args.allow_dirty)
    payload = new_payload(NAME, argv)
    t0 = time.perf_counter()
    with limited_threads(args.threads):
        payload.update(run(args))
    payload["wall_seconds"] = time.perf_counter() - t0
    publish(NAME, payload, render_readme, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
