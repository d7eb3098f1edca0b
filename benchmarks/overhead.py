"""What sigmatune's own machinery costs, each part timed against a bare equivalent in the same
process, with the repeats interleaved (A, B, B, A, ...) and the median of the paired ratios.

- training: ``models.training.train`` (progress bar off, no checkpoints) against a plain
  PyTorch loop with the same network, batch size, Adam and learning rate, the same EDM loss
  (written inline: ln sigma ~ N(-1.2, 1.2^2), weight (sigma^2 + sd^2)/(sigma sd)^2, EDM
  preconditioning) and an EMA update; images/s. Target: <= 1.05x the plain loop's time.
- sampling: ``models.samplers.generate`` (one seeded generator per image) against a bare Heun
  loop of the same NFE that calls the network with inline preconditioning on noise from one
  generator; also the sampler function alone (``models.samplers.heun`` with
  ``models.denoiser.Denoiser``) on the bare loop's noise. Target: <= 1.05x the bare loop.
- fid: scoring the images of one inner trial (``objectives.fid.Scorer.score`` with the
  prefixes a trial reports) against generating them.
- optuna: a real inner study (``study.bilevel.run_inner_study``: GPSampler, the baselines
  enqueued, ``study.trials.sample_trial`` with its user attrs and reports) on a fresh SQLite
  file (``study.storage.make_storage``), against a direct loop of the same compute. Its wall
  time is split into compute (inside the scorer's stream: generation, features, FID), the
  Optuna sampler's own work, storage calls (Optuna's cache, SQLAlchemy, SQLite; commits
  counted), and the rest; the same study again on SQLite in WAL mode shows what the storage
  setting costs. Target: Optuna + storage <= 5% of an inner trial at the preset's full size
  (``fid_num_images`` at the primary NFE, timed in the fid section).

Both presets' networks are measured: ``digits`` (a small U-Net on 8x8 images) and ``toy`` (an
MLP on 2-D points), untrained (their weights do not change their cost). By default torch runs
one intra-op thread (``--threads``): on a shared machine a descheduled second OpenMP thread
makes every step many times slower (numpy's and scipy's BLAS are limited too, through
threadpoolctl), and both sides of a ratio run under the same setting. Short calls are repeated
inside one timing (``sample_loops``) and measured over more rounds.

    python benchmarks/overhead.py                       # full default, 5-6 min on 2 CPUs
    python benchmarks/overhead.py --quick               # smoke run
    python benchmarks/overhead.py --presets toy --sections training,sampling --repeats 9
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import inspect
import math
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import optuna  # noqa: E402
from _common import (  # noqa: E402  (puts the checkout on sys.path)
    describe_machine,
    format_table,
    limited_threads,
    machine_info,
    median_seconds,
    write_json,
)

from sigmatune.models import samplers  # noqa: E402
from sigmatune.models.data import Dataset, load_dataset  # noqa: E402
from sigmatune.models.denoiser import Denoiser  # noqa: E402
from sigmatune.models.networks import make_network  # noqa: E402
from sigmatune.models.samplers import generate, get_sampler, nfe, steps_for_nfe  # noqa: E402
from sigmatune.models.schedules import karras  # noqa: E402
from sigmatune.models.training import train  # noqa: E402
from sigmatune.objectives.fid import Scorer, ScorerSettings  # noqa: E402
from sigmatune.objectives.loss import DiffusionObjective, objective_from_description  # noqa: E402
from sigmatune.study import bilevel, spaces, trials  # noqa: E402
from sigmatune.study.config import Config, load_config  # noqa: E402
from sigmatune.study.spaces import KARRAS_RHO, edm_defaults_description  # noqa: E402
from sigmatune.study.storage import artifact_store_for, make_storage  # noqa: E402

SECTIONS = ("training", "sampling", "fid", "optuna")
PRESETS = ("digits", "toy")
TARGETS = {"training": 1.05, "sampling": 1.05, "optuna": 0.05}
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (per preset where it differs)."""

    repeats: int  # rounds of the training and fid measurements
    sample_repeats: int  # sampling calls are short and noisy: more rounds
    optuna_repeats: int  # rounds of whole inner studies
    train_steps: dict[str, int]
    sample_images: dict[str, int]
    sample_loops: dict[str, int]  # generations per timed call (each call >= ~0.3 s)
    fid_images: dict[str, int]
    optuna_images: dict[str, int]
    optuna_trials: dict[str, int]


DEFAULT_SIZES = Sizes(
    repeats=7,
    sample_repeats=9,
    optuna_repeats=5,
    train_steps={"digits": 8, "toy": 100},
    sample_images={"digits": 250, "toy": 1000},
    sample_loops={"digits": 1, "toy": 10},  # toy: 10 generations per timed call
    fid_images={"digits": 1000, "toy": 1000},  # the presets' fid_num_images
    optuna_images={"digits": 64, "toy": 1000},
    optuna_trials={"digits": 16, "toy": 16},  # the presets' inner_trials
)
QUICK_SIZES = Sizes(
    repeats=1,
    sample_repeats=1,
    optuna_repeats=1,
    train_steps={"digits": 2, "toy": 5},
    sample_images={"digits": 32, "toy": 200},
    sample_loops={"digits": 1, "toy": 1},
    fid_images={"digits": 64, "toy": 200},
    optuna_images={"digits": 16, "toy": 100},
    optuna_trials={"digits": 3, "toy": 3},
)


# -- timing -----------------------------------------------------------------------------------


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` over ``repeats`` rounds, after ``warmup`` untimed rounds.
    The order alternates between rounds (A B, B A, A B, ...), so drift of a shared machine and
    what one call leaves behind for the next fall on both sides alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            times[name].append(median_seconds(fns[name], repeats=1, warmup=0))
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median of a_i / b_i over the rounds."""
    return statistics.median(x / y for x, y in zip(a, b))


def verdict(measured: float, target: float) -> str:
    return "met" if measured <= target else "MISSED"


# -- the presets --------------------------------------------------------------------------------


@dataclass
class Setup:
    preset: str
    config: Config
    data: Dataset
    net0: nn.Module  # untrained, seeded; every run starts from a copy
    description: str

    @property
    def sigma_data(self) -> float:
        return float(self.data.sigma_data)

    def objective(self) -> DiffusionObjective:
        return objective_from_description(edm_defaults_description(self.config, self.sigma_data))

    def denoiser(self) -> Denoiser:
        return Denoiser(copy.deepcopy(self.net0), "edm", self.sigma_data).eval()

    def schedule(self) -> tuple[str, int, Tensor]:
        """The primary inner budget: (sampler, NFE, Karras rho=7 schedule)."""
        sampler = self.config.inner.samplers[0]
        n = steps_for_nfe(sampler, self.config.inner.nfe_budgets[0])
        sigmas = karras(n, self.config.sigma_min, self.config.sigma_max, KARRAS_RHO)
        return sampler, nfe(sampler, n), sigmas


def load_setup(preset: str) -> Setup:
    config = load_config(preset)
    data = load_dataset(config.dataset, seed=config.seed)
    torch.manual_seed(config.seed)
    net = make_network(config.network.name, dict(config.network.params), data.shape)
    params = sum(p.numel() for p in net.parameters())
    description = (
        f"{config.network.name} {dict(config.network.params)} on {config.dataset} "
        f"{tuple(data.shape)}, {params:,} parameters"
    )
    return Setup(preset, config, data, net, description)


# -- training -------------------------------------------------------------------------------------


def edm_loss_inline(
    net: nn.Module, y: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float
) -> Tensor:
    """EDM's loss as NVlabs/edm writes it: weight (sigma^2 + sd^2)/(sigma sd)^2 times
    |D(y + n) - y|^2, D with EDM preconditioning; the mean over everything."""
    s = sigma.view((-1,) + (1,) * (y.ndim - 1))
    sd2 = sigma_data**2
    x = y + s * noise
    c_skip = sd2 / (s**2 + sd2)
    c_out = s * sigma_data / (s**2 + sd2).sqrt()
    c_in = (s**2 + sd2).rsqrt()
    D = c_skip * x + c_out * net(c_in * x, sigma.log() / 4)
    weight = (s**2 + sd2) / (s * sigma_data) ** 2
    return (weight * (D - y) ** 2).mean()


def plain_train(
    net0: nn.Module,
    data: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    ema_halflife_nimg: float,
    sigma_data: float,
    seed: int = 0,
) -> nn.Module:
    """The plain PyTorch loop: minibatch, EDM loss, Adam step, EMA update; nothing else."""
    torch.manual_seed(seed)
    net = copy.deepcopy(net0).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    beta = 0.5 ** (batch_size / ema_halflife_nimg)
    for _ in range(steps):
        y = data[torch.randint(data.shape[0], (batch_size,))]
        sigma = (torch.randn(batch_size) * EDM_P_STD + EDM_P_MEAN).exp()
        loss = edm_loss_inline(net, y, sigma, torch.randn_like(y), sigma_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1.0 - beta)
    return ema


def our_train(setup: Setup, objective: DiffusionObjective, *, steps: int) -> nn.Module:
    cfg = setup.config.train
    result = train(
        copy.deepcopy(setup.net0),
        objective,
        setup.data.x,
        train_nimg=steps * cfg.batch_size,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        ema_halflife_nimg=cfg.ema_halflife_nimg,
        seed=setup.config.seed,
        checkpoint_dir=None,
        progress=False,
        device="cpu",
        grad_clip=None,  # the plain loop does not clip either
    )
    return result.ema


def loss_agreement(setup: Setup, objective: DiffusionObjective) -> float:
    """Relative difference of the two losses on one batch: the plain loop trains the same
    objective (EDM defaults are ``edm`` + ``unit`` + ``lognormal(-1.2, 1.2)``)."""
    g = torch.Generator().manual_seed(1)
    y = setup.data.x[torch.randint(len(setup.data), (64,), generator=g)]
    sigma = (torch.randn(64, generator=g, dtype=torch.float64) * EDM_P_STD + EDM_P_MEAN).exp()
    noise = torch.randn(y.shape, generator=g)
    net = copy.deepcopy(setup.net0)
    with torch.no_grad():  # a non-zero output layer, so F matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        ours = objective.loss(net, y, sigma, noise).mean()
        plain = edm_loss_inline(net, y, sigma.float(), noise, setup.sigma_data)
    return float((ours - plain).abs() / plain.abs())


def bench_training(setups: list[Setup], sizes: Sizes, log: Callable[[str], None]) -> list[dict]:
    return [training_row(setup, sizes, log) for setup in setups]


def training_row(setup: Setup, sizes: Sizes, log: Callable[[str], None]) -> dict:
    cfg = setup.config.train
    steps = sizes.train_steps[setup.preset]
    objective = setup.objective()
    log(f"training: {setup.preset}, {steps} steps of {cfg.batch_size}, {sizes.repeats} rounds")
    times = interleaved(
        {
            "ours": lambda: our_train(setup, objective, steps=steps),
            "plain": lambda: plain_train(
                setup.net0,
                setup.data.x,
                steps=steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                ema_halflife_nimg=cfg.ema_halflife_nimg,
                sigma_data=setup.sigma_data,
            ),
        },
        sizes.repeats,
    )
    images = steps * cfg.batch_size
    ratio = paired_ratio(times["ours"], times["plain"])
    return {
        "preset": setup.preset,
        "network": setup.description,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "steps": steps,
        "ours_seconds": statistics.median(times["ours"]),
        "plain_seconds": statistics.median(times["plain"]),
        "ours_images_per_s": images / statistics.median(times["ours"]),
        "plain_images_per_s": images / statistics.median(times["plain"]),
        "ours_ms_per_step": 1e3 * statistics.median(times["ours"]) / steps,
        "plain_ms_per_step": 1e3 * statistics.median(times["plain"]) / steps,
        "ratio": ratio,
        "ours_seconds_all": times["ours"],
        "plain_seconds_all": times["plain"],
        "loss_relative_difference": loss_agreement(setup, objective),
        "target": TARGETS["training"],
        "met": ratio <= TARGETS["training"],
    }


# -- sampling -------------------------------------------------------------------------------------


def bare_sample(
    net: nn.Module, x: Tensor, sigmas: Sequence[float], sigma_data: float, sampler: str
) -> Tensor:
    """Euler or Heun (no churn; the step into 0 is Euler) on the network itself, the EDM
    preconditioning inline with Python-float coefficients: the least a sampler must do."""
    sd2 = sigma_data**2

    def D(x: Tensor, s: float) -> Tensor:
        c_noise = x.new_full((x.shape[0],), math.log(s) / 4)
        out = net(x / math.sqrt(s * s + sd2), c_noise)
        return (sd2 / (s * s + sd2)) * x + (s * sigma_data / math.sqrt(s * s + sd2)) * out

    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = D(x, s)
        if s_next == 0:
            return denoised
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if sampler == "euler":
            x = x_next
            continue
        d_next = (x_next - D(x_next, s_next)) / s_next
        x = x + (s_next - s) * (0.5 * d + 0.5 * d_next)
    return x


def bench_sampling(setups: list[Setup], sizes: Sizes, log: Callable[[str], None]) -> list[dict]:
    return [sampling_row(setup, sizes, log) for setup in setups]


def sampling_row(setup: Setup, sizes: Sizes, log: Callable[[str], None]) -> dict:
    sampler, n_fe, sigmas = setup.schedule()
    if sampler not in ("euler", "heun"):
        raise ValueError(f"the bare loop is euler/heun only, but the preset uses {sampler!r}")
    n_images = sizes.sample_images[setup.preset]
    batch_size = min(setup.config.inner.batch_size, n_images)
    shape = tuple(setup.data.shape)
    D = setup.denoiser()
    net = D.net
    s_list = [float(s) for s in sigmas]
    fn = get_sampler(sampler)
    g = torch.Generator().manual_seed(0)
    noise = [
        s_list[0] * torch.randn(min(batch_size, n_images - i), *shape, generator=g)
        for i in range(0, n_images, batch_size)
    ]
    seeds = range(n_images)
    loops = sizes.sample_loops[setup.preset]

    def bare_once() -> list[Tensor]:
        with torch.no_grad():
            return [bare_sample(net, x, s_list, setup.sigma_data, sampler) for x in noise]

    def function_once() -> list[Tensor]:
        with torch.no_grad():
            return [fn(D, x, sigmas) for x in noise]

    def bare() -> None:
        for _ in range(loops):
            bare_once()

    def function() -> None:
        for _ in range(loops):
            function_once()

    def ours() -> None:
        for _ in range(loops):
            list(generate(D, sigmas, sampler, seeds, shape, batch_size))

    def ours_first_call() -> None:
        for _ in range(loops):
            getattr(samplers, "_NOISE_CACHE", {}).clear()  # as the first call of a process
            list(generate(D, sigmas, sampler, seeds, shape, batch_size))

    log(
        f"sampling: {setup.preset}, {loops} x {n_images} images per call, {sampler} {n_fe} NFE, "
        f"{sizes.sample_repeats} rounds"
    )
    diff = max(float((a - b).abs().max()) for a, b in zip(bare_once(), function_once()))
    times = interleaved(
        {"generate": ours, "first": ours_first_call, "sampler": function, "bare": bare},
        sizes.sample_repeats,
    )
    ratio = paired_ratio(times["generate"], times["bare"])
    return {
        "preset": setup.preset,
        "network": setup.description,
        "sampler": sampler,
        "nfe": n_fe,
        "num_images": n_images,
        "batch_size": batch_size,
        "generate_seconds": statistics.median(times["generate"]),
        "sampler_seconds": statistics.median(times["sampler"]),
        "bare_seconds": statistics.median(times["bare"]),
        "generations_per_call": loops,
        "generate_images_per_s": loops * n_images / statistics.median(times["generate"]),
        "bare_images_per_s": loops * n_images / statistics.median(times["bare"]),
        "ratio": ratio,
        "sampler_ratio": paired_ratio(times["sampler"], times["bare"]),
        "first_call_ratio": paired_ratio(times["first"], times["bare"]),
        "generate_seconds_all": times["generate"],
        "first_call_seconds_all": times["first"],
        "sampler_seconds_all": times["sampler"],
        "bare_seconds_all": times["bare"],
        "max_abs_difference_sampler_vs_bare": diff,
        "target": TARGETS["sampling"],
        "met": ratio <= TARGETS["sampling"],
    }


# -- FID scoring against generation ---------------------------------------------------------------


_SCORERS: dict[tuple[str, str], tuple[Scorer, float]] = {}


def make_scorer(setup: Setup, cache_dir: Path) -> tuple[Scorer, float]:
    """The preset's scorer (reference statistics of its ``fid_num_images``; fewer images are
    scored through ``num_images``), built once per run; and the seconds it took."""
    key = (setup.preset, str(cache_dir))
    if key not in _SCORERS:
        t0 = time.perf_counter()
        scorer = Scorer(
            setup.data.x,
            setup.data.labels,
            ScorerSettings(
                setup.config.inner.fid_extractor,
                setup.config.inner.fid_num_images,
                seed=setup.config.seed,
            ),
            dataset_name=setup.config.dataset,
            value_range=setup.data.value_range,
            cache_dir=cache_dir,
            device="cpu",
        )
        _SCORERS[key] = scorer, time.perf_counter() - t0
    return _SCORERS[key]


def bench_fid(
    setups: list[Setup], sizes: Sizes, cache_dir: Path, log: Callable[[str], None]
) -> list[dict]:
    return [fid_row(setup, sizes, cache_dir, log) for setup in setups]


def fid_row(setup: Setup, sizes: Sizes, cache_dir: Path, log: Callable[[str], None]) -> dict:
    sampler, n_fe, sigmas = setup.schedule()
    n_images = sizes.fid_images[setup.preset]
    scorer, setup_seconds = make_scorer(setup, cache_dir)
    D = setup.denoiser()
    shape = tuple(setup.data.shape)
    batch_size = setup.config.inner.batch_size
    log(f"fid: {setup.preset}, {n_images} images, {setup.config.inner.fid_extractor}")
    images: list[Tensor] = []
    fids: list[float] = []

    def generation() -> None:
        images[:] = list(generate(D, sigmas, sampler, range(n_images), shape, batch_size))

    def scoring() -> None:
        scores = scorer.score(images, trials.REPORT_FRACTIONS, num_images=n_images)
        fids.append(list(scores)[-1][1])

    gen_times, score_times = [], []
    for r in range(sizes.repeats + 1):
        gc.collect()
        g = median_seconds(generation, 1, warmup=0)
        s = median_seconds(scoring, 1, warmup=0)
        if r:  # the first round is the warm-up
            gen_times.append(g)
            score_times.append(s)
    return {
        "preset": setup.preset,
        "extractor": setup.config.inner.fid_extractor,
        "sampler": sampler,
        "nfe": n_fe,
        "num_images": n_images,
        "generate_seconds": statistics.median(gen_times),
        "score_seconds": statistics.median(score_times),
        "ratio": paired_ratio(score_times, gen_times),
        "generate_seconds_all": gen_times,
        "score_seconds_all": score_times,
        "scorer_setup_seconds": setup_seconds,
        "fid_untrained_network": fids[-1],
    }


# -- Optuna + SQLite per inner trial --------------------------------------------------------------


class Attribution:
    """Exclusive wall time per category of the wrapped calls made on the main thread: a call
    inside another wrapped call counts for its own category and not for its caller's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []
        self._main = threading.get_ident()

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._main:  # the heartbeat thread
                return fn(*args, **kwargs)
            child = [0.0]
            self._stack.append(child)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self._stack.pop()
                self.seconds[category] += elapsed - child[0]
                self.calls[category] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        return timed


_END = object()


class TimedScorer:
    """A Scorer whose ``score`` stream counts the time inside it (generation pulled through
    it, features, FID) as ``compute``; the caller's reports between items are not."""

    def __init__(self, scorer: Scorer, attribution: Attribution) -> None:
        self._scorer = scorer
        self._attribution = attribution

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def score(self, *args: Any, **kwargs: Any) -> Iterator[tuple[int, float]]:
        stream = iter(self._scorer.score(*args, **kwargs))
        pull = self._attribution.wrap("compute", lambda: next(stream, _END))
        while (item := pull()) is not _END:
            yield item


SAMPLER_METHODS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


@contextlib.contextmanager
def instrumented_sampler(attribution: Attribution) -> Iterator[None]:
    """``study.spaces.make_inner_sampler`` returns samplers whose methods are timed."""
    original = spaces.make_inner_sampler

    def make(config: Config, seed: int) -> optuna.samplers.BaseSampler:
        sampler = original(config, seed)
        for name in SAMPLER_METHODS:
            setattr(sampler, name, attribution.wrap("sampler", getattr(sampler, name)))
        return sampler

    spaces.make_inner_sampler = make
    try:
        yield
    finally:
        spaces.make_inner_sampler = original


@contextlib.contextmanager
def instrumented_storage(attribution: Attribution) -> Iterator[None]:
    """Time every method of Optuna's storage layers as ``storage``: the cache in front of the
    RDB storage and the RDB storage itself (SQLAlchemy + SQLite), public or private."""
    from optuna.storages._cached_storage import _CachedStorage

    patched: list[tuple[type, str, Any]] = []
    try:
        for cls in (_CachedStorage, optuna.storages.RDBStorage):
            for name in dir(cls):
                if name.startswith("__"):
                    continue
                static = inspect.getattr_static(cls, name)
                if not inspect.isfunction(static):  # properties, static and class methods
                    continue
                patched.append((cls, name, cls.__dict__.get(name)))
                setattr(cls, name, attribution.wrap("storage", static))
        yield
    finally:
        for cls, name, own in reversed(patched):
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)


@contextlib.contextmanager
def counted_commits() -> Iterator[list[int]]:
    """Count the database transactions committed inside (SQLAlchemy's ``commit`` event)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    count = [0]

    def on_commit(_connection: Any) -> None:
        count[0] += 1

    event.listen(Engine, "commit", on_commit)
    try:
        yield count
    finally:
        event.remove(Engine, "commit", on_commit)


@contextlib.contextmanager
def sqlite_wal() -> Iterator[None]:
    """SQLite connections opened inside use ``journal_mode=WAL`` and ``synchronous=NORMAL``
    (a commit appends to the write-ahead log without an fsync; still safe against a crashed
    process): the storage setting this benchmark suggests."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if "sqlite" in type(dbapi_connection).__module__:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", on_connect)


def inner_context(
    setup: Setup, scorer: Any, directory: Path, num_images: int, inner_trials: int
) -> bilevel.RunContext:
    url = f"sqlite:///{directory / 'inner.db'}"
    config = load_config(
        setup.preset,
        {
            "storage": url,
            "artifact_dir": str(directory / "artifacts"),
            "device": "cpu",
            "inner.nfe_budgets": [setup.config.inner.nfe_budgets[0]],
            "inner.fid_num_images": num_images,
            "inner.inner_trials": inner_trials,
        },
    )
    artifact_store, artifact_dir = artifact_store_for(config.storage, config.artifact_dir)
    return bilevel.RunContext(
        config=config,
        storage=make_storage(config.storage),  # heartbeats and lock timeout, as a run has
        artifact_store=artifact_store,
        work_dir=artifact_dir,
        data=setup.data,
        scorer=scorer,
        device=torch.device("cpu"),
        progress=False,
        log=lambda _msg: None,
    )


def run_inner_study(
    setup: Setup,
    scorer: Scorer,
    denoiser: Denoiser,
    num_images: int,
    inner_trials: int,
    *,
    wal: bool = False,
) -> tuple[float, dict[str, float], list[spaces.InnerChoice], int]:
    """One real inner study on a fresh SQLite file: its wall time, the exclusive time per
    category, the schedules its complete trials scored, and its finished trial count."""
    attribution = Attribution()
    nfe_budget = setup.config.inner.nfe_budgets[0]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sigmatune-overhead-"))
        if wal:
            stack.enter_context(sqlite_wal())
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ctx = inner_context(
            setup, TimedScorer(scorer, attribution), Path(tmp), num_images, inner_trials
        )
        name = bilevel.inner_study_name(f"{setup.preset}/trial-0000", nfe_budget)
        commits = stack.enter_context(counted_commits())
        with instrumented_sampler(attribution), instrumented_storage(attribution):
            t0 = time.perf_counter()
            bilevel.run_inner_study(
                ctx, denoiser, name, nfe_budget, outer_link={"outer:study": setup.preset}
            )
            total = time.perf_counter() - t0
        attribution.calls["commits"] = commits[0]
        study = optuna.load_study(study_name=name, storage=ctx.storage)
        done = study.get_trials(deepcopy=False)
        choices = [
            spaces.InnerChoice(
                t.user_attrs["sampler"],
                torch.tensor(t.user_attrs["sigmas"], dtype=torch.float64),
                dict(t.user_attrs.get("sampler_kwargs") or {}),
            )
            for t in done
            if t.state == optuna.trial.TrialState.COMPLETE
        ]
        ctx.storage.remove_session()
        ctx.storage.engine.dispose()
    parts = {**attribution.seconds, "commits": float(attribution.calls["commits"])}
    return total, parts, choices, len(done)


def direct_compute(
    setup: Setup,
    scorer: Scorer,
    denoiser: Denoiser,
    choices: list[spaces.InnerChoice],
    num_images: int,
) -> float:
    """The trials' compute without Optuna: generate with the run's seeds and score the same
    prefixes, for each schedule; the wall time."""
    base = 1_000_000 * int(setup.config.seed)  # study.trials.generation_seeds
    seeds = range(base, base + num_images)
    t0 = time.perf_counter()
    for choice in choices:
        batches = generate(
            denoiser,
            choice.sigmas,
            choice.sampler,
            seeds,
            tuple(setup.data.shape),
            setup.config.inner.batch_size,
            **choice.sampler_kwargs,
        )
        for _ in scorer.score(batches, trials.REPORT_FRACTIONS, num_images=num_images):
            pass
    return time.perf_counter() - t0


def _per_trial(runs: list[tuple[float, dict[str, float], int]]) -> dict[str, list[float]]:
    """Seconds per finished trial of each study run, by category."""
    out: dict[str, list[float]] = defaultdict(list)
    for total, parts, count in runs:
        out["trial"].append(total / count)
        for key in ("compute", "sampler", "storage", "commits"):
            out[key].append(parts.get(key, 0.0) / count)
        out["overhead"].append(out["trial"][-1] - out["compute"][-1])
        out["other"].append(out["overhead"][-1] - out["sampler"][-1] - out["storage"][-1])
    return out


def bench_optuna(
    setups: list[Setup],
    sizes: Sizes,
    cache_dir: Path,
    fid_rows: list[dict],
    log: Callable[[str], None],
    wal: bool = True,
) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as study.cli does
    rows = []
    for setup in setups:
        n_images = sizes.optuna_images[setup.preset]
        n_trials = sizes.optuna_trials[setup.preset]
        scorer, _ = make_scorer(setup, cache_dir)
        denoiser = setup.denoiser()
        log(
            f"optuna: {setup.preset}, inner studies of {n_trials} trials x {n_images} images, "
            f"{sizes.optuna_repeats} rounds" + (" (and with SQLite WAL)" if wal else "")
        )
        *_, choices, _ = run_inner_study(setup, scorer, denoiser, n_images, n_trials)  # warm-up
        variants = ["study", "direct"] + (["wal"] if wal else [])
        runs: dict[str, list] = {name: [] for name in variants}
        for r in range(sizes.optuna_repeats):
            for name in variants if r % 2 == 0 else variants[::-1]:
                gc.collect()
                if name == "direct":
                    runs[name].append(
                        direct_compute(setup, scorer, denoiser, choices, n_images) / len(choices)
                    )
                else:
                    total, parts, _, count = run_inner_study(
                        setup, scorer, denoiser, n_images, n_trials, wal=name == "wal"
                    )
                    runs[name].append((total, parts, count))
        study = _per_trial(runs["study"])
        direct = runs["direct"]
        med = {key: statistics.median(values) for key, values in study.items()}
        fraction = statistics.median(o / t for o, t in zip(study["overhead"], study["trial"]))
        # at the preset's own size: the full trial's compute measured in the fid section
        full = next((row for row in fid_rows if row["preset"] == setup.preset), None)
        full_images = setup.config.inner.fid_num_images
        full_compute = None
        if full is not None and full["num_images"] == full_images:
            full_compute = full["generate_seconds"] + full["score_seconds"]
        fraction_full = (
            None if full_compute is None else med["overhead"] / (med["overhead"] + full_compute)
        )
        headline = fraction_full if fraction_full is not None else fraction
        row = {
            "preset": setup.preset,
            "inner_sampler": setup.config.inner.sampler,
            "inner_trials": n_trials,
            "finished_trials": statistics.median(c for *_, c in runs["study"]),
            "num_images": n_images,
            "trial_seconds": med["trial"],
            "compute_seconds": med["compute"],
            "direct_compute_seconds": statistics.median(direct),
            "overhead_seconds": med["overhead"],
            "sampler_seconds": med["sampler"],
            "storage_seconds": med["storage"],
            "commits_per_trial": med["commits"],
            "other_seconds": med["other"],
            "overhead_fraction": fraction,
            "overhead_fraction_by_direct_loop": statistics.median(
                (t - d) / t for t, d in zip(study["trial"], direct)
            ),
            "full_trial_images": full_images,
            "full_trial_compute_seconds": full_compute,
            "overhead_fraction_full_trial": fraction_full,
            "per_trial_seconds_all": dict(study),
            "direct_compute_seconds_all": direct,
            "target": TARGETS["optuna"],
            "met": headline <= TARGETS["optuna"],
        }
        if wal:
            alt = _per_trial(runs["wal"])
            alt_med = {key: statistics.median(values) for key, values in alt.items()}
            row["wal"] = {
                "overhead_seconds": alt_med["overhead"],
                "storage_seconds": alt_med["storage"],
                "sampler_seconds": alt_med["sampler"],
                "other_seconds": alt_med["other"],
                "overhead_fraction_full_trial": (
                    None
                    if full_compute is None
                    else alt_med["overhead"] / (alt_med["overhead"] + full_compute)
                ),
                "per_trial_seconds_all": dict(alt),
            }
        rows.append(row)
    return rows


# -- report ---------------------------------------------------------------------------------------


def tables(result: dict) -> list[str]:
    out = []
    if result.get("training"):
        out.append(
            "Training: models.training.train vs a plain PyTorch loop (same network, batch, "
            "Adam, EDM loss, EMA)\n"
            + format_table(
                ["preset", "batch", "steps", "ours img/s", "plain img/s", "ratio", "target"],
                [
                    [
                        r["preset"],
                        r["batch_size"],
                        r["steps"],
                        r["ours_images_per_s"],
                        r["plain_images_per_s"],
                        r["ratio"],
                        f"<= {r['target']} {verdict(r['ratio'], r['target'])}",
                    ]
                    for r in result["training"]
                ],
            )
        )
    if result.get("sampling"):
        out.append(
            "Sampling: models.samplers.generate vs a bare loop of the same NFE (time ratios; "
            "'first call': generate's noise cache empty, as in a process's first trial; "
            "'sampler fn': models.samplers.heun with Denoiser on the bare loop's noise)\n"
            + format_table(
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
                        (
                            f"{r['generations_per_call']} x {r['num_images']}"
                            if r["generations_per_call"] > 1
                            else r["num_images"]
                        ),
                        r["generate_images_per_s"],
                        r["bare_images_per_s"],
                        r["ratio"],
                        r["first_call_ratio"],
                        r["sampler_ratio"],
                        f"<= {r['target']} {verdict(r['ratio'], r['target'])}",
                    ]
                    for r in result["sampling"]
                ],
            )
        )
    if result.get("fid"):
        out.append(
            "FID scoring vs generation of one inner trial's images\n"
            + format_table(
                ["preset", "extractor", "images", "NFE", "generate s", "score s", "score/gen"],
                [
                    [
                        r["preset"],
                        r["extractor"],
                        r["num_images"],
                        r["nfe"],
                        r["generate_seconds"],
                        r["score_seconds"],
                        r["ratio"],
                    ]
                    for r in result["fid"]
                ],
            )
        )
    if result.get("optuna"):

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"

        headers = [
            "preset",
            "trials x images",
            "trial s",
            "compute s",
            "overhead s",
            "sampler s",
            "storage s",
            "commits",
            "other s",
            "overhead",
            "at full size",
            "target",
        ]
        rows = []
        for r in result["optuna"]:
            rows.append(
                [
                    r["preset"],
                    f"{r['inner_trials']} x {r['num_images']}",
                    r["trial_seconds"],
                    r["compute_seconds"],
                    r["overhead_seconds"],
                    r["sampler_seconds"],
                    r["storage_seconds"],
                    f"{r['commits_per_trial']:.0f}",
                    r["other_seconds"],
                    pct(r["overhead_fraction"]),
                    f"{pct(r['overhead_fraction_full_trial'])} of {r['full_trial_images']} img",
                    f"<= 5% {'met' if r['met'] else 'MISSED'}",
                ]
            )
            if "wal" in r:
                w = r["wal"]
                rows.append(
                    [
                        f"{r['preset']} (WAL)",
                        "same",
                        "",
                        "",
                        w["overhead_seconds"],
                        w["sampler_seconds"],
                        w["storage_seconds"],
                        "",
                        w["other_seconds"],
                        "",
                        f"{pct(w['overhead_fraction_full_trial'])} of {r['full_trial_images']} img",
                        "(diagnostic)",
                    ]
                )
        out.append(
            "Optuna + SQLite per inner trial (seconds per trial of a real inner study; 'at full "
            "size': overhead / (overhead + the fid section's trial compute); WAL: the same study "
            "on SQLite with journal_mode=WAL, synchronous=NORMAL)\n" + format_table(headers, rows)
        )
    return out


def targets(result: dict) -> list[dict]:
    found = []
    for r in result.get("training", []):
        found.append(
            {
                "what": f"training {r['preset']}: ours / plain time",
                "target": r["target"],
                "measured": r["ratio"],
                "met": r["met"],
            }
        )
    for r in result.get("sampling", []):
        found.append(
            {
                "what": f"sampling {r['preset']}: generate / bare time",
                "target": r["target"],
                "measured": r["ratio"],
                "met": r["met"],
            }
        )
    for r in result.get("optuna", []):
        measured = r["overhead_fraction_full_trial"]
        if measured is None:
            measured = r["overhead_fraction"]
        found.append(
            {
                "what": f"optuna {r['preset']}: Optuna + storage / inner trial",
                "target": r["target"],
                "measured": measured,
                "met": r["met"],
            }
        )
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes")
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="comma-separated, of: digits, toy"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 leaves torch's default)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="FID reference cache (default: a temporary folder; the digits classifier is "
        "then trained once per run)",
    )
    parser.add_argument(
        "--no-wal",
        action="store_true",
        help="skip the optuna section's second study on SQLite in WAL mode",
    )
    parser.add_argument("--out", default=None, help="JSON file (default bench-out/overhead.json)")
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name, values, allowed in (
        ("--presets", args.presets, PRESETS),
        ("--sections", args.sections, SECTIONS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            parser.error(f"{name} must be among {', '.join(allowed)}, but got {bad or values}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, but got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.repeats is not None:
        rounds = {key: args.repeats for key in ("repeats", "sample_repeats", "optuna_repeats")}
        sizes = Sizes(**{**sizes.__dict__, **rounds})

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with limited_threads(args.threads):
        return run(args, argv, sizes, log)


def run(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    sizes: Sizes,
    log: Callable[[str], None],
) -> dict:
    t_start = time.perf_counter()
    info = machine_info("cpu")
    setups = [load_setup(p) for p in args.presets]
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "machine": info,
        "command": "python benchmarks/overhead.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "repeats": sizes.repeats,
        "sizes": sizes.__dict__,
        "presets": args.presets,
        "sections": args.sections,
    }
    with contextlib.ExitStack() as stack:
        cache_dir = (
            Path(args.cache_dir)
            if args.cache_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sigmatune-fid-")))
        )
        if "training" in args.sections:
            result["training"] = bench_training(setups, sizes, log)
        if "sampling" in args.sections:
            result["sampling"] = bench_sampling(setups, sizes, log)
        if "fid" in args.sections or "optuna" in args.sections:
            # the optuna section compares against the fid section's full-size trial compute
            result["fid"] = bench_fid(setups, sizes, cache_dir, log)
        if "optuna" in args.sections:
            result["optuna"] = bench_optuna(
                setups, sizes, cache_dir, result["fid"], log, wal=not args.no_wal
            )
    result["targets"] = targets(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    printed = tables(result)
    result["tables"] = printed
    path = write_json("overhead", result, args.out)
    print(f"overhead.py: {describe_machine(info)}")
    print("\n\n".join(printed))
    print(
        "\ntargets: "
        + "; ".join(
            f"{t['what']} {t['measured']:.3g} (<= {t['target']}: {'met' if t['met'] else 'MISSED'})"
            for t in result["targets"]
        )
    )
    print(f"wall time {result['wall_seconds']:.0f} s; written to {path}")
    return result


if __name__ == "__main__":
    main()
