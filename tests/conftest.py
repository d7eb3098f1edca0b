"""Shared fixtures: a synthetic sigmatune study in a temp SQLite file (fast), and one study
made by a real, minimal ``toy`` run (slow, made once per session).

The synthetic study is written through ``sigmatune.study.records``' writer functions, the
one writer of the stored layout: an outer study ``synth`` with the EDM-defaults trial, two
more complete trials and a failed one; for each complete trial two inner studies
``synth/trial-NNNN/nfe-K`` holding the starting points (``karras_rho7``, ``loglinear``) and
three searched schedules, and held-out figures for the best schedule and the fair baselines.
FIDs are made up; every schedule is a valid one.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

# ---------------------------------------------------------------------------------------------
# Running in several processes (pytest-xdist, as `make test` does)


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, one torch thread (and one OpenMP thread for the processes the
    tests start): the workers already keep every core busy, and a second thread per process
    on a shared core spins waiting for the other instead of working."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files that hold end-to-end (``slow``) tests first, each file's tests kept together
    and in order: the workers start the long tests early and share out the short ones at the
    end, instead of one worker running the last long test alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: keeps each file's order


SYNTH_NAME = "synth"
SYNTH_NFE = (5, 9)
SYNTH_FLOORS = {
    "floor": 0.004,
    "floor_spread": 0.001,
    "floor_values": [0.003, 0.004, 0.005],
    "floor_num_images": 1000,
    "ceiling": 2.5,
    "ceiling_spread": 0.1,
    "ceiling_values": [2.4, 2.5, 2.6],
    "sets": 3,
    "floor_source": "held_out",
    "floor_method": "disjoint",
    "held_out_images": 5000,
    "resolution": 1.5,  # (floor + 2 spreads) / floor
}


@dataclass
class SyntheticStudy:
    url: str
    path: Path
    storage: optuna.storages.BaseStorage
    name: str
    config: Any  # study.config.Config
    best_number: int
    expected: dict[int, dict[str, Any]]  # outer trial -> what was stored


def _describe(
    parameterisation: str,
    density: tuple[str, dict],
    weighting: tuple[str, dict],
    adaptive: tuple[str, dict] | None,
    sigma_min: float,
    sigma_max: float,
) -> dict:
    from sigmatune.objectives.adaptive import make_adaptive
    from sigmatune.objectives.densities import make_density
    from sigmatune.objectives.loss import DiffusionObjective
    from sigmatune.objectives.weightings import make_weighting

    rng = {"sigma_min": sigma_min, "sigma_max": sigma_max}
    obj = DiffusionObjective(
        parameterisation,
        make_density(density[0], density[1], **rng),
        make_weighting(weighting[0], weighting[1], **rng),
        0.5,
        make_adaptive(*adaptive) if adaptive else None,
    )
    return obj.describe()


@contextlib.contextmanager
def _sqlite_without_fsync() -> Iterator[None]:
    """SQLite connections opened inside skip fsync (``PRAGMA synchronous=OFF``): building a
    throwaway test database then takes a fraction of the time."""
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


def build_synthetic_study(directory: Path, name: str = SYNTH_NAME) -> SyntheticStudy:
    with _sqlite_without_fsync():
        study = _build_synthetic_study(directory, name)
    study.storage = optuna.storages.RDBStorage(study.url)  # connections with fsync from here
    return study


def _synthetic_inner(
    storage: optuna.storages.BaseStorage,
    inner_name: str,
    nfe: int,
    scale: float,
    link: dict[str, Any],
    gen: Any,
    config: Any,
) -> Any:
    """One inner study written as the runner writes it; returns its InnerRecord."""
    import torch

    from sigmatune.models.samplers import steps_for_nfe
    from sigmatune.models.schedules import from_gaps, karras, loglinear
    from sigmatune.study import records
    from sigmatune.study.records import HeldOut, InnerRecord, Schedule

    smin, smax = float(config.sigma_min), float(config.sigma_max)
    inner = optuna.create_study(study_name=inner_name, storage=storage)
    records.init_inner_study(inner, nfe, link)
    n = steps_for_nfe("heun", nfe)
    churn = {"S_churn": 0.0, "S_min": 0.0, "S_max": math.inf, "S_noise": 1.0}
    rows = [
        ("karras_rho7", karras(n, smin, smax), scale * 1.6, {}),
        ("loglinear", loglinear(n, smin, smax), scale * 1.9, {}),
    ]
    for fid in (scale * 1.3, scale, scale * 1.1):
        gaps = torch.rand(n - 1, generator=gen, dtype=torch.float64) + 0.2
        rows.append((None, from_gaps(gaps, smin, smax), fid, churn))
    for start, sigmas, fid, kwargs in rows:
        trial = inner.ask()
        for i in range(len(sigmas) - 2):  # n - 1 gaps
            trial.suggest_float(f"heun.gap_{i}", 0.0, 100.0)
        if start:
            trial.set_user_attr(records.START, start)
        records.write_schedule(trial, Schedule("heun", tuple(sigmas.tolist()), kwargs))
        records.write_inner_fid(trial, fid)
        inner.tell(trial, math.log(fid))
    best = min(inner.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    tuned = records.read_inner_schedule(best)
    lo, hi = tuned.sigma_range
    schedules = {
        "tuned": tuned,
        "karras_rho7": Schedule("heun", tuple(karras(n, smin, smax).tolist())),
        "karras_rho7_same_range": Schedule("heun", tuple(karras(n, lo, hi).tolist())),
        "loglinear_same_range": Schedule("heun", tuple(loglinear(n, lo, hi).tolist())),
    }
    held = HeldOut(
        seeds=(256, 256, 3),
        scores={
            "tuned": (scale * 0.9, scale * 1.0, scale * 1.1),
            "karras_rho7": (scale * 1.5, scale * 1.6, scale * 1.7),
            "karras_rho7_same_range": (scale * 1.1, scale * 1.2, scale * 1.3),
            "loglinear_same_range": (scale * 1.3, scale * 1.4, scale * 1.5),
        },
        floor=SYNTH_FLOORS["floor"],
        floor_spread=SYNTH_FLOORS["floor_spread"],
        tuned_trial=best.number,
    )
    records.write_held_out(inner, held)
    record = InnerRecord(
        nfe=nfe,
        study_name=inner_name,
        search_fid=best.user_attrs[records.FID],
        search_trial=best.number,
        params=dict(best.params),
        schedules=schedules,
        search_baselines={r[0]: r[2] for r in rows[:2]},
        held_out=held,
    )
    return record, best


def _build_synthetic_study(directory: Path, name: str) -> SyntheticStudy:
    import torch

    from sigmatune.study import records
    from sigmatune.study.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = directory / "synth.db"
    url = f"sqlite:///{path}"
    config = load_config(
        "toy",
        {
            "name": name,
            "storage": url,
            "inner.nfe_budgets": list(SYNTH_NFE),
            "inner.fid_num_images": 256,
        },
    )
    storage = optuna.storages.RDBStorage(url)
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    outer = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    records.init_outer_study(outer, config, kind="bilevel", floors=SYNTH_FLOORS)

    configs = [
        ("edm", ("lognormal", {"P_mean": -1.2, "P_std": 1.2}), ("unit", {}), None, "edm"),
        ("eps", ("cosine", {"shift": 1.0}), ("min_snr", {"gamma": 5.0}), None, None),
        ("v", ("uniform", {}), ("sigmoid", {"b": 2.0}), ("importance", {}), None),
    ]
    gen = torch.Generator().manual_seed(0)
    expected: dict[int, dict[str, Any]] = {}
    # primary-NFE FIDs per outer trial; trial 1 is the best
    primary_fid = {0: 0.30, 1: 0.12, 2: 0.21}
    for number, (par, dens, wt, ad, literature) in enumerate(configs):
        desc = _describe(par, dens, wt, ad, smin, smax)
        trial = outer.ask()
        assert trial.number == number
        if literature:
            trial.set_user_attr(records.NAME, literature)
        records.begin_outer_trial(trial, desc, number, literature)
        link = records.outer_link(name, number, number)
        inner, inner_best = {}, {}
        for j, nfe in enumerate(SYNTH_NFE):
            scale = primary_fid[number] * (1.0 if j == 0 else 0.5)
            inner[nfe], inner_best[nfe] = _synthetic_inner(
                storage, f"{name}/trial-{number:04d}/nfe-{nfe}", nfe, scale, link, gen, config
            )
        records.write_model_artifact(trial, f"model-{number}")
        records.write_inner_records(trial, inner)
        outer.tell(trial, inner[SYNTH_NFE[0]].value)
        expected[number] = {"inner": inner, "inner_best": inner_best, "description": desc}
    failed = outer.ask()
    records.begin_outer_trial(
        failed,
        _describe("x0", ("lognormal", {}), ("snr", {"k": 1.0}), None, smin, smax),
        3,
        None,
    )
    records.write_failure(failed, RuntimeError("nan"))
    failed.set_user_attr(records.FAIL_REASON, "NonFiniteLossError: nan")
    outer.tell(failed, state=optuna.trial.TrialState.FAIL)
    return SyntheticStudy(
        url=url,
        path=path,
        storage=storage,
        name=name,
        config=config,
        best_number=1,
        expected=expected,
    )


@pytest.fixture(scope="session")
def race():
    """``race(fn, args, n)``: ``fn(*args)`` in ``n`` processes forked from this one and released
    together at a barrier (tests/racers.py); one traceback, or ``""``, per process."""
    import importlib.util
    import sys

    name = "sigmatune_tests_racers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("racers.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].race


@pytest.fixture(scope="session")
def _synthetic_template(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return build_synthetic_study(tmp_path_factory.mktemp("synth-template"))


def _copy_synthetic(template: SyntheticStudy, directory: Path) -> SyntheticStudy:
    path = directory / template.path.name
    shutil.copyfile(template.path, path)
    url = f"sqlite:///{path}"
    with _sqlite_without_fsync():  # this storage's pooled connection skips fsync
        storage = optuna.storages.RDBStorage(url)
    return SyntheticStudy(
        url=url,
        path=path,
        storage=storage,
        name=template.name,
        config=template.config,
        best_number=template.best_number,
        expected=template.expected,
    )


@pytest.fixture(scope="session")
def synthetic_copy(_synthetic_template: SyntheticStudy):
    """A factory: ``synthetic_copy(directory)`` copies the synthetic study's SQLite file into
    ``directory`` (for fixtures of a wider scope than a test)."""
    return lambda directory: _copy_synthetic(_synthetic_template, Path(directory))


@pytest.fixture
def synthetic_study(synthetic_copy, tmp_path: Path) -> SyntheticStudy:
    """A fresh copy (its own SQLite file in ``tmp_path``) of a synthetic sigmatune study."""
    return synthetic_copy(tmp_path)


# ---------------------------------------------------------------------------------------------
# A real toy run, once per session (slow tests only)

TOY_OVERRIDES = {
    "name": "toyrun",
    "outer.outer_trials": 2,
    "inner.inner_trials": 4,
    "inner.nfe_budgets": [5],
    "inner.fid_num_images": 256,
    "inner.batch_size": 256,
    "train.train_nimg": 4096,
    "train.batch_size": 256,
    "train.checkpoint_nimg": 4096,
    "train.ema_halflife_nimg": 1024,
    "device": "cpu",
}


@dataclass
class ToyRun:
    url: str
    directory: Path
    name: str
    config: Any  # study.config.Config
    summary: Any  # study.run.RunSummary


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> ToyRun:
    """``sigmatune run --preset toy`` made as small as it goes (2 outer x 4 inner trials, one
    NFE budget, 256 images), in a temp folder, with the after-trial and after-run hooks."""
    from sigmatune.study.commands.hooks import run_study as run
    from sigmatune.study.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = tmp_path_factory.mktemp("toyrun")
    url = f"sqlite:///{directory / 'toy.db'}"
    config = load_config("toy", {**TOY_OVERRIDES, "storage": url})
    cwd = os.getcwd()
    os.chdir(directory)  # anything written relative to the working folder stays in the temp dir
    try:
        summary = run(config, progress=False, log=lambda _msg: None)
    finally:
        os.chdir(cwd)
    if summary.best_trial is None:
        study = optuna.load_study(study_name=config.name, storage=url)
        reasons = {
            t.number: t.user_attrs.get("sigmatune:fail_reason", t.state.name) for t in study.trials
        }
        pytest.fail(f"the toy run completed no outer trial: {reasons}", pytrace=False)
    return ToyRun(url=url, directory=directory, name=config.name, config=config, summary=summary)
