"""What the study's storage costs per trial: SQLite, PostgreSQL and Optuna's gRPC proxy (in
front of the same PostgreSQL), with 1, 2 and 4 worker processes sharing one study.

Each worker opens the storage as ``sigmatune run`` does (``study.storage.make_storage``, with
heartbeats), waits for the others, then runs trials shaped like an inner trial with no compute
in them: ask, 8 suggested parameters (the step gaps and range), 6 user attrs (schedule, sampler,
FID...), 3 intermediate values, one heartbeat, tell: 20 storage writes, plus the reads Optuna
makes (the sampler is Optuna's RandomSampler, so that its own cost is no part of the figure).
A trial's time is the storage's overhead (and Optuna's bookkeeping: the ``inmemory`` row is that
alone). Every storage error a worker meets is counted by type and the worker goes on; a trial
is lost when a worker's successful ``tell`` is not a COMPLETE trial in the storage afterwards.

PostgreSQL is a fresh server of Debian's binaries (tests/pgserver.py: fsync off, as a tuned
throwaway server; the figures are storage round trips, not disk latency), the proxy runs as
``sigmatune storage-proxy`` would (``study.commands.storage_proxy.serve_storage_proxy``),
SQLite is a file in a temporary folder (fsync on). All processes share this machine's CPUs:
with more workers than cores, a trial's time includes waiting for a core.

    python benchmarks/storage_overhead.py              # all backends, 1/2/4 workers, ~3 min
    python benchmarks/storage_overhead.py --quick      # smoke run
    python benchmarks/storage_overhead.py --backends postgres,grpc --workers 8 --trials 100
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    add_allow_dirty,
    describe_machine,
    format_table,
    git_state,
    machine_info,
    results_path,
    write_json,
)

BACKENDS = ("inmemory", "sqlite", "postgres", "grpc")
DEFAULT_BACKENDS = ("inmemory", "sqlite", "postgres", "grpc")
DEFAULT_WORKERS = (1, 2, 4)
DEFAULT_TRIALS = 60  # per worker
QUICK_TRIALS = 5
N_PARAMS, N_ATTRS, N_REPORTS = 8, 6, 3  # with create, heartbeat and tell: 20 writes
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "storage_overhead.json"
STUDY = "bench"


def load_pgserver() -> Any:
    """tests/pgserver.py (the test suite's throwaway PostgreSQL) as a module."""
    name = "sigmatune_tests_pgserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "pgserver.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# -- one worker (a process of its own) --------------------------------------------------------


def objective(trial: Any) -> float:
    """An inner trial's storage traffic, without its compute."""
    gaps = [trial.suggest_float(f"gap_{i}", 0.02, 1.0) for i in range(N_PARAMS)]
    for i in range(N_ATTRS):
        trial.set_user_attr(f"sigmatune:attr{i}", [round(g, 6) for g in gaps])
    fid = sum(gaps)
    for step in range(1, N_REPORTS + 1):
        trial.report(fid * (1 + 1 / step), step)
    return fid


def worker(url: str, trials: int, start_file: Path) -> dict[str, Any]:
    """Open the storage, wait for ``start_file``, run ``trials`` trials; what happened."""
    import optuna

    from sigmatune.study.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.InMemoryStorage() if url == "inmemory" else make_storage(url)
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(),
    )
    while not start_file.exists():
        time.sleep(0.005)
    times: list[float] = []
    errors: Counter = Counter()
    began = time.time()  # one clock for all workers (one machine)
    for _ in range(trials):
        t0 = time.perf_counter()
        try:
            # one trial per call, as sigmatune's runner does: Optuna checks for stale trials
            # and runs its heartbeat thread (one write here) around each
            study.optimize(objective, n_trials=1, catch=())
        except Exception as exc:  # a storage error: counted, and the worker goes on
            first_line = (str(exc).splitlines() or [""])[0][:120]
            errors[f"{type(exc).__name__}: {first_line}"] += 1
            continue
        times.append(time.perf_counter() - t0)
    return {
        "times_s": times,
        "errors": dict(errors),
        "told": len(times),
        "began": began,
        "ended": time.time(),
    }


# -- the servers --------------------------------------------------------------------------------


@contextlib.contextmanager
def proxy_in_front_of(database_url: str) -> Iterator[str]:
    """``study.commands.storage_proxy.serve_storage_proxy`` in a process of its own; yields its
    grpc:// URL."""
    import grpc

    pgserver = load_pgserver()
    port = pgserver.free_port()
    code = (  # quiet, as the CLI is: no Optuna log line per study created
        "import optuna; optuna.logging.set_verbosity(optuna.logging.ERROR); "
        "from sigmatune.study.commands.storage_proxy import serve_storage_proxy; "
        f"serve_storage_proxy({database_url!r}, '127.0.0.1', {port}, log=lambda m: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(url: str, workers: int, trials: int, count_url: str | None) -> dict[str, Any]:
    """``workers`` processes on one new study at ``url``; per-trial times, errors, losses."""
    with tempfile.TemporaryDirectory(prefix="sigmatune-bench-") as tmp:
        start = Path(tmp) / "start"
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", url, str(trials), str(start)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        time.sleep(3.0 + 0.5 * workers)  # every worker has opened the storage and waits
        start.touch()
        outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"a worker failed on {url}: {outs}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    times = [t for r in results for t in r["times_s"]]
    errors: Counter = Counter()
    for r in results:
        errors.update(r["errors"])
    told = sum(r["told"] for r in results)
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
    row: dict[str, Any] = {
        "workers": workers,
        "trials_per_worker": trials,
        "ms_per_trial_median": 1000 * statistics.median(times),
        "ms_per_trial_p90": (
            1000 * statistics.quantiles(times, n=10)[-1] if len(times) > 1 else None
        ),
        "trials_per_s_all_workers": told / wall,
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "told": told,
    }
    if count_url is not None:  # what the storage holds afterwards
        import optuna

        from sigmatune.study.storage import make_storage

        study = optuna.load_study(
            study_name=STUDY, storage=make_storage(count_url, heartbeat_interval=None)
        )
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        row["stored_complete"] = states.get("COMPLETE", 0)
        row["trials_lost"] = told - states.get("COMPLETE", 0)
        row["left_running"] = states.get("RUNNING", 0)
    return row


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    trials = args.trials or (QUICK_TRIALS if args.quick else DEFAULT_TRIALS)
    git = git_state()  # the checkout the run started from
    rows: list[dict[str, Any]] = []

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sigmatune-bench-")))
        pg = None
        if {"postgres", "grpc"} & set(args.backends):
            pg = stack.enter_context(load_pgserver().postgres_server(max_connections=100))
        for backend in args.backends:
            for n in args.workers:
                count_url: str | None
                if backend == "inmemory":
                    if n != 1:
                        continue  # one process's memory: no sharing
                    url, count_url = "inmemory", None
                elif backend == "sqlite":
                    url = count_url = f"sqlite:///{tmp / f'bench-{n}.db'}"
                else:
                    assert pg is not None
                    count_url = pg.url(pg.create_database(f"bench_{backend}_{n}"))
                    url = count_url
                with (
                    proxy_in_front_of(count_url)
                    if backend == "grpc"
                    else (contextlib.nullcontext(url)) as worker_url
                ):
                    log(f"{backend}, {n} worker(s), {trials} trials each")
                    row = measure(worker_url, n, trials, count_url)
                rows.append({"backend": backend, **row})
    return {
        "benchmark": "storage_overhead",
        "machine": machine_info("cpu"),
        # other processes' load shares the CPUs with the workers, the server and the proxy
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/storage_overhead.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "git": git,
        "writes_per_trial": 1 + N_PARAMS + N_ATTRS + N_REPORTS + 1 + 1,
        "rows": rows,
    }


def report(result: dict[str, Any]) -> str:
    headers = [
        "storage",
        "workers",
        "ms/trial (median)",
        "ms/trial (p90)",
        "trials/s (all)",
        "errors",
        "trials lost",
    ]
    table = [
        [
            r["backend"],
            r["workers"],
            r["ms_per_trial_median"],
            r["ms_per_trial_p90"] if r["ms_per_trial_p90"] is not None else "-",
            r["trials_per_s_all_workers"],
            r["errors"],
            r.get("trials_lost", "-"),
        ]
        for r in result["rows"]
    ]
    return (
        f"machine: {describe_machine(result['machine'])}, load average "
        f"{result['load_average_1_5_15_min_at_end']}\n"
        f"{result['writes_per_trial']} storage writes per trial\n\n" + format_table(headers, table)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.rsplit("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRIALS} trials per worker")
    parser.add_argument("--trials", type=int, help=f"trials per worker ({DEFAULT_TRIALS})")
    parser.add_argument(
        "--workers",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=DEFAULT_WORKERS,
        help="worker counts, comma-separated (1,2,4)",
    )
    parser.add_argument(
        "--backends",
        type=lambda s: tuple(s.split(",")),
        default=DEFAULT_BACKENDS,
        help=f"comma-separated, of {', '.join(BACKENDS)} (all)",
    )
    parser.add_argument("--out", help=f"JSON file (default {DEFAULT_OUT.relative_to(ROOT)})")
    add_allow_dirty(parser)
    args = parser.parse_args(argv)
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; valid: {', '.join(BACKENDS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # a worker process of measure()
        url, trials, start = argv[1], int(argv[2]), Path(argv[3])
        print(json.dumps(worker(url, trials, start)))
        return {}
    args = parse_args(argv)
    args.out = results_path("storage_overhead", args.out or DEFAULT_OUT, args.allow_dirty)
    result = run(args, argv)
    print(report(result))
    path = write_json("storage_overhead", result, args.out)
    print(f"\nwritten: {path}")
    return result


if __name__ == "__main__":
    main()
