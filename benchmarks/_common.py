"""What every benchmark script shares: the machine it ran on, a printed table, a JSON file.

Each script in ``benchmarks/`` prints its table and writes the same figures, with the
machine, to ``bench-out/<script>.json`` (or ``--out``), so a README table can say where its
numbers came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT_DIR = ROOT / "bench-out"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine, the software and the device a benchmark ran on."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: 'Intel(R) Xeon(R) ..., 2 CPUs (2 torch threads), torch 2.14.1, device cpu'."""
    where = info.get("gpu") or info["device"]
    return (
        f"{info['cpu']}, {info['cpu_count']} CPUs ({info['torch_threads']} torch threads), "
        f"Python {info['python']}, torch {info['torch']}, device {where}"
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into the README as it is)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` to ``out`` or ``bench-out/<name>.json``; returns the path."""
    path = Path(out) if out else DEFAULT_OUT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads and the BLAS pools (numpy and scipy: the FID, the GP sampler)
    at ``n`` inside; 0: as they are."""
    if n <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)
