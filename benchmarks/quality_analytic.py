"""Ground truth for tuned step schedules: analytic Gaussian mixtures with their exact denoiser.

With ``models.analytic.GaussianMixture``'s exact denoiser ``E[x0 | x0 + sigma*eps]`` in place
of a network, a sampler's error is discretisation error alone. For each mixture, sampler
(Euler, Heun, DPM-Solver++(2M)) and NFE budget this script measures the distance to true
samples of:

- ``karras``: Karras et al. (2022) rho = 7 over the run's [sigma_min, sigma_max];
- ``loglinear``: uniform in logSNR over the same range;
- ``tuned``: the best schedule (by the study's own score, FID on ``rff`` features) that the
  inner study (``study.tune.tune_sampling``, GPSampler, the ``toy`` preset's search space
  including the tuned sigma range) finds in a fixed trial budget (the two enqueued baselines
  count towards it);
- ``reference``: ``--ref-steps`` (512) karras rho = 7 steps of the same sampler.

Distances: sliced 2-Wasserstein (``--projections`` random directions, fixed seed; sorted
projections in 1-D) and the unbiased squared MMD with a Gaussian kernel (median-heuristic
bandwidth on the true samples), both against ``--num-samples`` true samples drawn with a fixed
seed. Generation for the distances uses fresh seeds (not the study's), float64, one seed per
sample (common random numbers across schedules). ``true vs true`` (a second true sample) is
the noise floor. The gap closed is ``(baseline - tuned) / (baseline - reference)``.

Mixtures: ``ring`` is the mixture behind the ``gmm2d`` data set (8 modes on a circle of
radius 0.6, std 0.1; ``models.data.gmm2d_mixture``), tuned through ``tune_sampling`` exactly
as ``sigmatune tune-sampling --denoiser`` does it (the study's FID reference is the
``gmm2d`` data set). ``gmm64`` is ``GaussianMixture.random(d=64, K=8, seed=0)``; no data set
spec names it, so its inner studies run through the same ``tune_sampling`` with a
``RunContext`` built here around 20,000 samples of the mixture (same ``rff`` scorer, same
search space). Studies live in a fresh temporary SQLite file that is deleted at the end.

Default run: all three samplers; ring at NFE 3, 5, 7, 9, 11, 15 and gmm64 at NFE 3, 5, 9, 15
(a smaller grid, for time); 24 trials per inner study; 10,000 samples per distance (the first
5,000 in the MMD); 256 projections; one torch and one BLAS thread.

Target (issue): analytic ring, Heun, NFE 5: gap closed (sliced Wasserstein, vs karras)
>= 0.9. The script reports it, met or missed.

Reproduce (the full default run: 9.7 minutes on a shared 2-core AMD EPYC, CPU only)::

    .venv/bin/python benchmarks/quality_analytic.py

    # smoke test (seconds), or a subset:
    .venv/bin/python benchmarks/quality_analytic.py --quick --out /tmp/qa.json
    .venv/bin/python benchmarks/quality_analytic.py --mixtures ring --samplers heun --nfe 5
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, format_table, machine_info, write_json  # noqa: E402

from sigmatune.study.spaces import KARRAS_RHO  # noqa: E402
from sigmatune.study.tune import gap_closed  # noqa: E402

NAME = "quality_analytic"
SAMPLER_NAMES = ("euler", "heun", "dpmpp_2m")
MIXTURE_NAMES = ("ring", "gmm64")
# Seeds of the independent check, far from the study's (1e6 * seed onwards, a few thousand).
EVAL_SEED_BASE = 3 * 10**9
TARGET = {"mixture": "ring", "sampler": "heun", "nfe": 5, "threshold": 0.9}
GMM64 = {"d": 64, "K": 8, "seed": 0}
GMM64_DATA_SIZE = 20_000  # like gmm2d's 20,000 samples


# ----------------------------------------------------------------------------- distances


def unit_directions(dim: int, count: int, seed: int) -> Tensor:
    """``count`` directions uniform on the unit sphere in ``dim`` dimensions, [dim, count]."""
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_w2(x: Tensor, y_sorted_proj: Tensor, directions: Tensor) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over directions of W2^2 between the
    1-D projections, where the optimal coupling pairs sorted values. ``y_sorted_proj`` is
    the other sample's projections, sorted per direction, [N, P]."""
    px = (x.double() @ directions).sort(dim=0).values
    if px.shape != y_sorted_proj.shape:
        raise ValueError(
            f"both samples need {y_sorted_proj.shape[0]} points, but got {px.shape[0]}"
        )
    return float(((px - y_sorted_proj) ** 2).mean().sqrt())


def median_bandwidth(y: Tensor, subset: int = 2000) -> float:
    """The median pairwise distance of (the first ``subset`` of) ``y``: the median heuristic
    (Gretton et al. 2012)."""
    return float(torch.pdist(y[:subset].double()).median())


def gaussian_kernel_sum(a: Tensor, b: Tensor, bandwidth: float, block: int = 2048) -> float:
    """sum_ij exp(-|a_i - b_j|^2 / (2 h^2)), in row blocks (float64)."""
    a, b = a.double(), b.double()
    b_sq = (b**2).sum(dim=1)
    scale = -0.5 / bandwidth**2
    total = 0.0
    for start in range(0, a.shape[0], block):
        chunk = a[start : start + block]
        sq = ((chunk**2).sum(dim=1)[:, None] + b_sq[None, :] - 2 * chunk @ b.T).clamp_min(0)
        total += float(torch.exp(sq * scale).sum())
    return total


class TruthMetrics:
    """Distances of generated samples to one fixed set of true samples."""

    def __init__(
        self, y: Tensor, projections: int, seed: int, mmd_samples: int | None = None
    ) -> None:
        self.y = y.double()
        self.n = y.shape[0]
        self.directions = unit_directions(y.shape[1], projections, seed)
        self.y_proj = (self.y @ self.directions).sort(dim=0).values
        self.m = min(self.n, mmd_samples or self.n)
        self.y_mmd = self.y[: self.m]
        self.bandwidth = median_bandwidth(self.y)
        self.k_yy = (gaussian_kernel_sum(self.y_mmd, self.y_mmd, self.bandwidth) - self.m) / (
            self.m * (self.m - 1)
        )

    def sw(self, x: Tensor) -> float:
        return sliced_w2(x, self.y_proj, self.directions)

    def mmd2(self, x: Tensor) -> float:
        """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) on the first ``m`` points of each."""
        x = x.double()[: self.m]
        m = x.shape[0]
        k_xx = (gaussian_kernel_sum(x, x, self.bandwidth) - m) / (m * (m - 1))
        k_xy = gaussian_kernel_sum(x, self.y_mmd, self.bandwidth) / (m * self.m)
        return k_xx + self.k_yy - 2 * k_xy

    def __call__(self, x: Tensor) -> dict[str, float]:
        if not torch.isfinite(x).all():
            return {"sw": math.inf, "mmd2": math.inf}
        return {"sw": self.sw(x), "mmd2": self.mmd2(x)}


# ----------------------------------------------------------------------------- set-up


@dataclass
class Mixture:
    name: str
    mixture: Any  # models.analytic.GaussianMixture
    description: str
    nfe: list[int]


def build_mixtures(names: Sequence[str], nfe: list[int], nfe_gmm64: list[int]) -> list[Mixture]:
    from sigmatune.models.analytic import GaussianMixture
    from sigmatune.models.data import gmm2d_mixture

    out = []
    for name in names:
        if name == "ring":
            mix = gmm2d_mixture()
            same = GaussianMixture.ring(n_modes=8, radius=0.6, std=0.1)
            if not (torch.equal(mix.means, same.means) and torch.equal(mix.stds, same.stds)):
                raise RuntimeError("models.data.gmm2d_mixture() is no longer the 8-mode ring")
            desc = "gmm2d ring: 8 modes, radius 0.6, std 0.1 (2-D)"
            out.append(Mixture(name, mix, desc, nfe))
        else:
            mix = GaussianMixture.random(**GMM64)
            desc = "GaussianMixture.random(d=64, K=8, seed=0)"
            out.append(Mixture(name, mix, desc, nfe_gmm64))
    return out


@contextlib.contextmanager
def sqlite_without_fsync() -> Iterator[None]:
    """SQLite connections opened inside skip fsync (the study file is thrown away)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def fast(dbapi_connection: Any, _record: Any) -> None:
        if "sqlite" in type(dbapi_connection).__module__:
            dbapi_connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", fast)
    try:
        yield
    finally:
        event.remove(Engine, "connect", fast)


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS threads (the FID's eigvalsh under a loaded 2-core machine is 100x slower
    with OpenBLAS spinning on 2 threads than on 1)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(n):
        yield


def study_config(args: argparse.Namespace, storage_url: str, mix: Mixture, sampler: str) -> Any:
    """The preset with this (mixture, sampler)'s NFE budgets, the trial budget and storage."""
    from sigmatune.study.config import load_config

    overrides: dict[str, Any] = {
        "name": f"qa-{mix.name}-{sampler}",
        "storage": storage_url,
        "seed": args.seed,
        "device": "cpu",
        "inner.samplers": [sampler],
        "inner.nfe_budgets": list(mix.nfe),
        "inner.inner_trials": args.trials,
    }
    if args.study_images is not None:
        overrides["inner.fid_num_images"] = args.study_images
        overrides["inner.batch_size"] = args.study_images
    return load_config(args.preset, overrides)


def make_gmm64_context(config: Any, mixture: Any, log: Callable[[str], None]) -> Any:
    """A RunContext like ``bilevel.make_context``'s, around samples of the 64-D mixture."""
    from sigmatune.models.data import Dataset
    from sigmatune.objectives.fid import Scorer, ScorerSettings
    from sigmatune.study.bilevel import RunContext, resolve_device
    from sigmatune.study.storage import artifact_store_for, make_storage

    x = mixture.sample(
        GMM64_DATA_SIZE, generator=torch.Generator().manual_seed(config.seed), dtype=torch.float32
    )
    data = Dataset(
        name="gmm64",
        x=x,
        shape=(mixture.dim,),
        sigma_data=float(x.double().std()),
        value_range=None,
        analytic=mixture,
    )
    device = resolve_device(config.device)
    artifact_store, artifact_dir = artifact_store_for(config.storage, config.artifact_dir)
    work_dir = Path(artifact_dir) / "runs" / config.name
    work_dir.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(
        data.x,
        None,
        ScorerSettings(config.inner.fid_extractor, config.inner.fid_num_images, seed=config.seed),
        dataset_name="gmm64",
        value_range=None,
        device=device,
    )
    return RunContext(
        config=config,
        storage=make_storage(config.storage),
        artifact_store=artifact_store,
        work_dir=work_dir,
        data=data,
        scorer=scorer,
        device=device,
        progress=False,
        log=log,
    )


def run_tuning(
    args: argparse.Namespace, mix: Mixture, sampler: str, storage_url: str, log: Callable
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """The inner studies of one (mixture, sampler): tuned schedule and study figures per NFE."""
    import optuna

    from sigmatune.study import bilevel, spaces
    from sigmatune.study.tune import tune_sampling

    config = study_config(args, storage_url, mix, sampler)
    if mix.name == "ring":
        if config.dataset != "gmm2d":
            raise ValueError(
                f"the ring is scored against gmm2d, but the preset has {config.dataset}"
            )
        ctx = bilevel.make_context(config, progress=False, log=log)
    else:
        ctx = make_gmm64_context(config, mix.mixture, log)
    kwargs: dict[str, Any] = {}
    if "reference_steps" in inspect.signature(tune_sampling).parameters:
        kwargs["reference_steps"] = 0  # this script measures its own reference
    summary = tune_sampling(
        config,
        denoiser=mix.mixture,
        study_name=config.name,
        progress=False,
        log=log,
        context=ctx,
        **kwargs,
    )
    out: dict[int, dict[str, Any]] = {}
    for nfe, result in summary.results.items():
        study = optuna.load_study(study_name=result.study_name, storage=ctx.storage)
        best = bilevel.best_of(study)
        out[nfe] = {
            "study_name": result.study_name,
            "sigmas": [float(s) for s in result.best_sigmas],
            "sampler_kwargs": dict(best.user_attrs.get("sampler_kwargs", {})),
            "params": dict(result.best_params),
            "best_is_baseline": best.user_attrs.get("baseline"),
            "fid": {
                "karras": result.baseline_fid.get("karras_rho7", math.nan),
                "loglinear": result.baseline_fid.get("loglinear", math.nan),
                "tuned": result.best_fid,
            },
            "complete_trials": len(
                study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            ),
        }
    smin_space, smax_space = spaces.sigma_range_space(config)
    inner = config.inner
    settings = {
        "preset": args.preset,
        "inner_sampler": inner.sampler,
        "inner_trials": inner.inner_trials,
        "fid_extractor": inner.fid_extractor,
        "fid_num_images": inner.fid_num_images,
        "tune_sigma_range": inner.tune_sigma_range,
        "tune_churn": inner.tune_churn,
        "sigma_min": config.sigma_min,
        "sigma_max": config.sigma_max,
        "sigma_min_space": [smin_space.low, smin_space.high] if inner.tune_sigma_range else None,
        "sigma_max_space": [smax_space.low, smax_space.high] if inner.tune_sigma_range else None,
        "gap_range": [spaces.GAP_RANGE.low, spaces.GAP_RANGE.high],
        "study_data": "gmm2d data set" if mix.name == "ring" else f"{GMM64_DATA_SIZE} samples",
    }
    return out, settings


def generate_all(
    D: Any, sigmas: Any, sampler: str, seeds: range, dim: int, **kwargs: Any
) -> Tensor:
    from sigmatune.models.samplers import generate

    batches = generate(
        D, sigmas, sampler, seeds, (dim,), len(seeds), device="cpu", dtype=torch.float64, **kwargs
    )
    return torch.cat(list(batches))


def git_state() -> dict[str, Any]:
    """The checkout's commit and its modified files (read-only git; empty without git)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not rewrite the index
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "modified": [line[3:] for line in status if line.strip()]}


def fmt_space(space: list[float] | None) -> str:
    return "fixed" if space is None else f"[{space[0]:.4g}, {space[1]:.4g}]"


def at_bound(value: float, space: list[float] | None) -> str | None:
    if space is None:
        return None
    lo, hi = space
    if math.isclose(value, lo, rel_tol=1e-6):
        return "low"
    if math.isclose(value, hi, rel_tol=1e-6):
        return "high"
    return None


# ----------------------------------------------------------------------------- main


FULL = {
    "samplers": list(SAMPLER_NAMES),
    "nfe": [3, 5, 7, 9, 11, 15],
    "nfe_gmm64": [3, 5, 9, 15],
    "trials": 24,
    "num_samples": 10_000,
    "mmd_samples": 5000,
    "projections": 256,
    "ref_steps": 512,
    "study_images": None,  # the preset's fid_num_images
}
QUICK = {
    "samplers": ["heun"],
    "nfe": [3, 5],
    "nfe_gmm64": [5],
    "trials": 4,
    "num_samples": 400,
    "mmd_samples": 400,
    "projections": 32,
    "ref_steps": 32,
    "study_images": 128,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Discretisation error of karras, loglinear and inner-study-tuned step schedules "
            "against a many-step reference, on analytic Gaussian mixtures (exact denoiser). "
            f"Defaults: {FULL}; with --quick: {QUICK}."
        )
    )
    p.add_argument("--mixtures", nargs="+", choices=MIXTURE_NAMES, default=list(MIXTURE_NAMES))
    p.add_argument("--samplers", nargs="+", choices=SAMPLER_NAMES)
    p.add_argument("--nfe", nargs="+", type=int, help="NFE budgets of the ring")
    p.add_argument("--nfe-gmm64", nargs="+", type=int, help="NFE budgets of the 64-D mixture")
    p.add_argument("--trials", type=int, help="trials per inner study (a fixed budget)")
    p.add_argument("--num-samples", type=int, help="generated and true samples per distance")
    p.add_argument("--mmd-samples", type=int, help="of those, the first N go into the MMD")
    p.add_argument("--projections", type=int, help="directions of the sliced Wasserstein")
    p.add_argument("--ref-steps", type=int, help="karras rho=7 steps of the reference")
    p.add_argument("--study-images", type=int, help="images per inner trial (FID)")
    p.add_argument("--preset", default="toy", help="study preset: search space and scorer")
    p.add_argument("--seed", type=int, default=0, help="study seed; evaluation seeds follow it")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--verbose", action="store_true", help="print the studies' own lines")
    p.add_argument("--out", help=f"JSON path (default bench-out/{NAME}.json)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("trials", "num_samples", "mmd_samples", "projections", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.num_samples, args.mmd_samples, args.ref_steps) < 2:
        p.error("--num-samples, --mmd-samples and --ref-steps must be >= 2")
    if args.study_images is not None and args.study_images < 2:
        p.error("--study-images must be >= 2")
    if min(args.nfe + args.nfe_gmm64) < 1:
        p.error("NFE budgets must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        run(args, argv)
    finally:
        torch.set_num_threads(threads)
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Tune, measure, print the table and write the JSON; returns the payload."""
    import optuna

    from sigmatune.models.samplers import nfe as nfe_of
    from sigmatune.models.samplers import steps_for_nfe
    from sigmatune.models.schedules import karras, loglinear

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log: Callable[[str], None] = (
        (lambda s: print("  " + s, flush=True)) if args.verbose else (lambda s: None)
    )
    t_start = time.perf_counter()
    mixtures = build_mixtures(args.mixtures, sorted(set(args.nfe)), sorted(set(args.nfe_gmm64)))
    rows: list[dict[str, Any]] = []
    per_mixture: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sigmatune-qa-") as tmp,
        sqlite_without_fsync(),
        blas_threads(args.threads),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage_url = f"sqlite:///{Path(tmp) / 'studies.db'}"
        for mi, mix in enumerate(mixtures):
            t_mix = time.perf_counter()
            m = mix.mixture
            base = args.seed * 1_000_003 + 7919 * mi
            y = m.sample(args.num_samples, generator=torch.Generator().manual_seed(base + 1))
            y2 = m.sample(args.num_samples, generator=torch.Generator().manual_seed(base + 2))
            metrics = TruthMetrics(y, args.projections, base + 3, args.mmd_samples)
            seeds = range(
                EVAL_SEED_BASE + 10**6 * args.seed,
                EVAL_SEED_BASE + 10**6 * args.seed + args.num_samples,
            )
            floor = metrics(y2)
            print(
                f"{mix.name}: {mix.description}, sigma_data {m.sigma_data:.4g}; true vs true: "
                f"SW {floor['sw']:.4g}, MMD^2 {floor['mmd2']:.3g}",
                flush=True,
            )
            info: dict[str, Any] = {
                "description": mix.description,
                "dim": m.dim,
                "K": m.K,
                "sigma_data": m.sigma_data,
                "nfe": mix.nfe,
                "true_vs_true": floor,
                "mmd_bandwidth": metrics.bandwidth,
                "reference": {},
                "study_seconds": {},
            }
            per_mixture[mix.name] = info
            for sampler in args.samplers:
                t0 = time.perf_counter()
                tuned, settings = run_tuning(args, mix, sampler, storage_url, log)
                study_seconds = time.perf_counter() - t0
                info["study_seconds"][sampler] = study_seconds
                info["study"] = {k: v for k, v in settings.items() if k != "study_data"}
                info["study_data"] = settings["study_data"]
                smin, smax = settings["sigma_min"], settings["sigma_max"]
                ref_sigmas = karras(args.ref_steps, smin, smax, KARRAS_RHO)
                ref = metrics(generate_all(m, ref_sigmas, sampler, seeds, m.dim))
                info["reference"][sampler] = {
                    **ref,
                    "steps": args.ref_steps,
                    "nfe": nfe_of(sampler, args.ref_steps),
                }
                for nfe in mix.nfe:
                    steps = steps_for_nfe(sampler, nfe)
                    t = tuned[nfe]
                    scheds = {
                        "karras": (karras(steps, smin, smax, KARRAS_RHO), {}),
                        "loglinear": (loglinear(steps, smin, smax), {}),
                        "tuned": (
                            torch.tensor(t["sigmas"], dtype=torch.float64),
                            t["sampler_kwargs"],
                        ),
                    }
                    values = {
                        k: metrics(generate_all(m, s, sampler, seeds, m.dim, **kw))
                        for k, (s, kw) in scheds.items()
                    }
                    values["reference"] = ref
                    sw = {k: v["sw"] for k, v in values.items()}
                    mmd2 = {k: v["mmd2"] for k, v in values.items()}
                    tuned_sig = t["sigmas"]
                    row = {
                        "mixture": mix.name,
                        "sampler": sampler,
                        "nfe": nfe,
                        "nfe_used": nfe_of(sampler, steps),
                        "steps": steps,
                        "sw": sw,
                        "mmd2": mmd2,
                        "gap_closed": {
                            "sw_vs_karras": gap_closed(sw["karras"], sw["tuned"], sw["reference"]),
                            "sw_vs_loglinear": gap_closed(
                                sw["loglinear"], sw["tuned"], sw["reference"]
                            ),
                            "mmd2_vs_karras": gap_closed(
                                mmd2["karras"], mmd2["tuned"], mmd2["reference"]
                            ),
                            "mmd2_vs_loglinear": gap_closed(
                                mmd2["loglinear"], mmd2["tuned"], mmd2["reference"]
                            ),
                        },
                        "tuned_sigmas": tuned_sig,
                        "tuned_at_bound": {
                            "sigma_max": at_bound(tuned_sig[0], settings["sigma_max_space"]),
                            "sigma_min": at_bound(tuned_sig[-2], settings["sigma_min_space"]),
                        },
                        "study": {k: v for k, v in t.items() if k != "sigmas"},
                    }
                    rows.append(row)
                    g = row["gap_closed"]["sw_vs_karras"]
                    print(
                        f"  {mix.name} {sampler:8s} NFE {nfe:2d}: SW karras {sw['karras']:.4g} "
                        f"loglinear {sw['loglinear']:.4g} tuned {sw['tuned']:.4g} ref "
                        f"{sw['reference']:.4g}  gap closed {g:.3f}",
                        flush=True,
                    )
                print(
                    f"  {mix.name} {sampler}: {len(mix.nfe)} studies x {args.trials} trials in "
                    f"{study_seconds:.1f} s",
                    flush=True,
                )
            info["seconds"] = time.perf_counter() - t_mix
    wall = time.perf_counter() - t_start

    headers = [
        "mixture",
        "sampler",
        "NFE",
        "karras SW",
        "loglinear SW",
        "tuned SW",
        f"ref({args.ref_steps}) SW",
        "gap closed vs karras",
        "vs loglinear",
        "karras MMD²",
        "tuned MMD²",
        "ref MMD²",
        "gap closed MMD² vs karras",
    ]
    table_rows = [
        [
            r["mixture"],
            r["sampler"],
            r["nfe"] if r["nfe"] == r["nfe_used"] else f"{r['nfe']} ({r['nfe_used']})",
            r["sw"]["karras"],
            r["sw"]["loglinear"],
            r["sw"]["tuned"],
            r["sw"]["reference"],
            r["gap_closed"]["sw_vs_karras"],
            r["gap_closed"]["sw_vs_loglinear"],
            r["mmd2"]["karras"],
            r["mmd2"]["tuned"],
            r["mmd2"]["reference"],
            r["gap_closed"]["mmd2_vs_karras"],
        ]
        for r in rows
    ]
    table = format_table(headers, table_rows)
    floors = ", ".join(
        f"{name} SW {v['true_vs_true']['sw']:.4g} / MMD² {v['true_vs_true']['mmd2']:.3g}"
        for name, v in per_mixture.items()
    )
    target_row = next(
        (
            r
            for r in rows
            if (r["mixture"], r["sampler"], r["nfe"])
            == (TARGET["mixture"], TARGET["sampler"], TARGET["nfe"])
        ),
        None,
    )
    target: dict[str, Any] = dict(TARGET)
    if target_row is None:
        target.update(gap_closed=None, met=None)
        target_line = "target (ring, heun, NFE 5, gap closed >= 0.9): not run"
    else:
        g = target_row["gap_closed"]["sw_vs_karras"]
        target.update(
            gap_closed=g,
            gap_closed_mmd2=target_row["gap_closed"]["mmd2_vs_karras"],
            met=bool(g >= TARGET["threshold"]),
            tuned_sigmas=target_row["tuned_sigmas"],
            tuned_at_bound=target_row["tuned_at_bound"],
        )
        target_line = (
            f"target (ring, heun, NFE 5, gap closed in SW vs karras >= 0.9): {g:.3f} -> "
            f"{'MET' if target['met'] else 'MISSED'} (MMD²: "
            f"{target['gap_closed_mmd2']:.3f}); tuned sigmas "
            + ", ".join(f"{s:.4g}" for s in target_row["tuned_sigmas"])
        )
    info = machine_info("cpu")
    print()
    print(table)
    print()
    print(f"noise floor (true vs true, {args.num_samples} samples): {floors}")
    print(target_line)
    for name, v in per_mixture.items():
        st = v.get("study")
        if st:
            print(
                f"{name}: {st['inner_trials']} trials per inner study ({st['inner_sampler']}; "
                f"2 of them the enqueued baselines), scored by FID on {st['fid_extractor']} "
                f"features of {st['fid_num_images']} samples (reference: {v['study_data']}); "
                f"sigma_min in {fmt_space(st['sigma_min_space'])}, sigma_max in "
                f"{fmt_space(st['sigma_max_space'])}"
            )
    print(f"wall time {wall:.1f} s on {describe_machine(info)}")
    payload = {
        "benchmark": NAME,
        "command": "python benchmarks/quality_analytic.py " + shlex.join(argv),
        "machine": info,
        "git": git_state(),
        "wall_seconds": wall,
        "settings": {
            "mixtures": args.mixtures,
            "samplers": args.samplers,
            "trials": args.trials,
            "num_samples": args.num_samples,
            "mmd_samples": min(args.mmd_samples, args.num_samples),
            "projections": args.projections,
            "ref_steps": args.ref_steps,
            "seed": args.seed,
            "eval_seeds_start": EVAL_SEED_BASE + 10**6 * args.seed,
            "threads": args.threads,
            "quick": args.quick,
            "distances": (
                "sw: sliced 2-Wasserstein over random unit directions; mmd2: unbiased squared "
                "MMD, Gaussian kernel, median-heuristic bandwidth on the true samples"
            ),
            "gap_closed": "(baseline - tuned) / (baseline - reference)",
        },
        "mixtures": per_mixture,
        "rows": rows,
        "target": target,
        "table": table,
    }
    path = write_json(NAME, payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    raise SystemExit(main())
