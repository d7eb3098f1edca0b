"""Processes that race for one resource: forked from the test process, so the imports are paid
once instead of once per process (about 4.5 s of CPU each for torch and Optuna), held at a
barrier until every one of them is ready, then released together.

Each racer is a separate process with its own connections, as separate ``sigmatune run``
commands are; the barrier makes the race tighter than processes started one after another,
which reach the shared resource seconds apart on a busy machine.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

BARRIER_TIMEOUT_S = 120.0


def _racer(barrier: Any, conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        fn(*args)
    except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
        conn.send(traceback.format_exc())
        raise SystemExit(1) from None
    conn.send("")


def race(fn: Callable[..., Any], args: tuple[Any, ...], n: int, timeout: float = 120.0) -> list:
    """Run ``fn(*args)`` in ``n`` forked processes released at once; returns one entry per
    process: ``""`` when it returned, else its traceback (or why it gave none)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    pipes = [ctx.Pipe(duplex=False) for _ in range(n)]
    procs = [
        ctx.Process(target=_racer, args=(barrier, send, fn, args), daemon=True) for _, send in pipes
    ]
    for p in procs:
        p.start()
    outcomes = []
    for p, (recv, send) in zip(procs, pipes):
        send.close()
        got = recv.recv() if recv.poll(timeout) else None
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
        if got is None:
            got = f"no report within {timeout} s (exit code {p.exitcode})"
        elif got == "" and p.exitcode != 0:
            got = f"exit code {p.exitcode} after it returned"
        outcomes.append(got)
    return outcomes
