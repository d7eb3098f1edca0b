"""One worker process per device on one machine: ``sigmatune run ... --workers N`` (or
``--devices cuda:0,cuda:1``).

Each worker is ``python -m sigmatune.study.commands.workers``: it reads its job (the checked
config with its own device, and the run's options) as one JSON line on its standard input and
runs :func:`sigmatune.study.commands.hooks.run_study`, exactly as one ``sigmatune run`` process
would; all of them share the storage (and so the study), as processes on several machines do.
The parent (:func:`run_workers`):

- checks the config and the devices before it starts anything;
- prefixes every line a worker prints with ``[wK]`` (K its index);
- forwards Ctrl-C (SIGINT) and SIGTERM (SIGHUP as SIGTERM) to every worker, which run in
  sessions of their own so that a terminal's Ctrl-C reaches them once, through the parent;
- waits for all of them; its exit code is 0 when every worker succeeded, else the first failed
  worker's (128 + N for a worker ended by signal N).

A worker whose parent dies (killed, or its terminal closed) sees its standard input end and
terminates itself, so no worker outlives the command that started it. The config travels on
standard input, not the command line: a storage URL's password never shows in ``ps``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sigmatune.study import records
from sigmatune.study.commands.hooks import run_study
from sigmatune.study.config import Config
from sigmatune.study.context import resolve_device
from sigmatune.study.errors import run_command
from sigmatune.study.storage import make_storage

__all__ = [
    "WorkersResult",
    "exit_code",
    "run_workers",
    "supervise",
    "worker_devices",
    "worker_main",
]

FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM}
if hasattr(signal, "SIGHUP"):
    FORWARDED[signal.SIGHUP] = signal.SIGTERM  # the terminal went away: stop the workers


@dataclass(frozen=True)
class WorkersResult:
    """What :func:`run_workers` ran: each worker's device and exit code, the command's exit
    code, and the study's best trial afterwards (None when none completed)."""

    devices: tuple[str, ...]
    codes: tuple[int, ...]
    exit_code: int
    best: Any = None  # records.TrialRecord | None


def worker_devices(
    workers: int | None, devices: Sequence[str] | None, device: str, cuda_count: int
) -> list[str]:
    """One device per worker: ``devices`` as given; else ``workers`` of them, spread over the
    ``cuda_count`` GPUs (``cuda:0``, ``cuda:1``, ..., round robin) when ``device`` is ``auto``
    (with a GPU) or ``cuda``, else all on ``device`` (``cpu``, ``cuda:N``)."""
    if devices:
        names = [d.strip() for d in devices]
        if any(not d for d in names):
            raise ValueError(f"devices must be non-empty names such as cuda:0, but got {names=}")
        if workers is not None and workers != len(names):
            raise ValueError(
                f"--workers must equal the number of --devices, but got {workers=} and "
                f"{len(names)} devices ({','.join(names)})"
            )
        return names
    if workers is None or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, but got {workers=}")
    spread = device == "cuda" or (device == "auto" and cuda_count > 0)
    if spread and cuda_count > 0:
        return [f"cuda:{k % cuda_count}" for k in range(workers)]
    return ["cpu" if device == "auto" else device] * workers


def exit_code(codes: Sequence[int]) -> int:
    """0 when every worker succeeded, else the first failed worker's code (128 + N for one
    ended by signal N, as a shell reports it)."""
    for code in codes:
        if code != 0:
            return 128 - code if code < 0 else code
    return 0


def run_workers(
    config: Config,
    devices: Sequence[str],
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    progress: bool = True,
    out: TextIO | None = None,
) -> WorkersResult:
    """Run one worker per device on ``config``'s storage until the study is done (or a signal
    stops them), then read the study's best trial."""

    out = sys.stdout if out is None else out
    # a device this machine lacks fails before any worker starts
    cpu_workers = sum(1 for d in devices if resolve_device(d).type == "cpu")
    jobs = [
        {
            "config": config.replace(device=d).to_dict(),
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "progress": progress,
        }
        for d in devices
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cpu_workers and "OMP_NUM_THREADS" not in env:  # share the cores, do not oversubscribe
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
    command = [sys.executable, "-m", "sigmatune.study.commands.workers"]
    print(f"sigmatune: {len(jobs)} workers on {', '.join(devices)}", file=out, flush=True)
    codes = supervise([command] * len(jobs), [json.dumps(j) for j in jobs], out=out, env=env)
    best = None
    with contextlib.suppress(Exception):  # no study (every worker failed at its start)
        storage = make_storage(config.storage, heartbeat_interval=None)
        best = records.read_study(storage, config.name).best
    return WorkersResult(tuple(devices), tuple(codes), exit_code(codes), best)


def supervise(
    commands: Sequence[Sequence[str]],
    jobs: Sequence[str],
    *,
    out: TextIO | None = None,
    env: dict[str, str] | None = None,
) -> list[int]:
    """Start ``commands`` (child K gets the line ``jobs[K]`` on its standard input, which
    stays open while the parent lives), write their output lines to ``out`` prefixed with
    ``[wK]``, forward SIGINT/SIGTERM/SIGHUP to them, wait for all; their exit codes."""
    out = sys.stdout if out is None else out
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    with _forwarding_signals(procs):
        for job, command in zip(jobs, commands, strict=True):
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches a worker once: through the parent
            )
            procs.append(proc)
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it ended at once: its code says why
                proc.stdin.write(job.encode() + b"\n")
                proc.stdin.flush()
        readers = [
            threading.Thread(target=_copy_lines, args=(p.stdout, f"[w{k}] ", out, lock))
            for k, p in enumerate(procs)
        ]
        for reader in readers:
            reader.start()
        codes = [p.wait() for p in procs]
        for reader in readers:
            reader.join()
        for p in procs:
            with contextlib.suppress(OSError):
                p.stdin.close()
    return codes


def _copy_lines(stream: Any, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\r\n")
        with lock:
            out.write(f"{prefix}{line}\n")
            out.flush()
    stream.close()


@contextlib.contextmanager
def _forwarding_signals(procs: list[subprocess.Popen]) -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM/SIGHUP to this process go to every live child
    (only possible in the main thread; elsewhere signals are left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(FORWARDED[signal.Signals(signum)])

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the worker


def exit_with_parent(stream: TextIO) -> threading.Thread:
    """Terminate this process (SIGTERM) when ``stream`` ends: the parent that holds its other
    end died. A daemon thread; call it after reading the job from ``stream``."""

    def watch() -> None:
        with contextlib.suppress(Exception):
            while stream.read(65536):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def worker_main() -> int:
    """``python -m sigmatune.study.commands.workers``: one worker of :func:`run_workers`."""
    job = json.loads(sys.stdin.readline())
    exit_with_parent(sys.stdin)

    def work() -> int:
        config = Config.from_dict(job["config"], source="sigmatune run --workers")
        print(f"sigmatune: worker on {config.device}, pid {os.getpid()}", flush=True)
        run_study(
            config,
            progress=bool(job["progress"]),
            heartbeat_interval=job["heartbeat_interval"],
            grace_period=job["grace_period"],
        )
        return 0

    return run_command(work, "worker interrupted")


if __name__ == "__main__":
    sys.exit(worker_main())
