"""What every benchmark shares: the machine it ran on, how figures are printed, the JSON file.

Each benchmark prints its tables and writes the same figures, with the machine, to
``benchmarks/results/<name>.json`` (committed: the README's Results tables come from these
files). A benchmark's README block (a table, its caption and its machine line) is rendered
by the benchmark from the JSON's figures with the formatters below and stored in the JSON
under ``"readme"`` (one block per key); the README holds each block between
``<!-- results: benchmarks/results/<name>.json#<key> -->`` and ``<!-- /results -->``, and
``tests/benchmarks/test_readme_results.py`` checks that the two are the same text.
Scratch (caches, trained models, logs) goes to ``bench-out/`` (ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` (storage_overhead.py) from a checkout
    sys.path.insert(0, str(ROOT))

BENCH_OUT = ROOT / "bench-out"  # scratch: caches, trained models, logs (ignored)
RESULTS_DIR = ROOT / "benchmarks" / "results"  # the committed JSON behind the README
README_KEY = "readme"  # JSON key of the README blocks: {block key: markdown}


# ----------------------------------------------------------------------------- the machine


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
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line: 'AMD EPYC ..., 2 CPUs (1 torch thread), Python 3.11.7, torch 2.14.1, device
    cpu, 2026-11-27'."""
    where = info.get("gpu") or info["device"]
    threads = info["torch_threads"]
    line = (
        f"{info['cpu']}, {info['cpu_count']} CPUs ({threads} torch thread"
        f"{'' if threads == 1 else 's'}), Python {info['python']}, torch {info['torch']}, "
        f"device {where}"
    )
    if info.get("load_average_1min") is not None:  # other processes sharing the CPUs
        line += f", load average {info['load_average_1min']:.1f} at the start"
    return line + (f", {info['date']}" if info.get("date") else "")


def git_state() -> dict[str, Any]:
    """The checkout's commit and its modified tracked files (read-only git; {} without git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not rewrite the index

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "modified": [line[3:] for line in status if line.strip()]}


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 4) -> str:
    """A figure as every table prints it: floats to ``digits`` significant digits, trailing
    zeros kept (thousands separated from ``10**(digits-1)`` on), None as '-', the rest as
    ``str``."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:#.{digits}g}".rstrip(".")  # '1.00', not '1': the digits are significant


def fmt_spread(mean: float | None, spread: float | None, digits: int = 3) -> str:
    """``mean ± spread`` (the spread over held-out seed sets)."""
    if mean is None:
        return "-"
    return f"{fmt(mean, digits)} ± {fmt(spread, 2) if spread is not None else '-'}"


def fmt_percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into the README as it is); cells through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: Mapping[str, Any]) -> str:
    """The machine line of a README block."""
    return f"Machine: {describe_machine(info)}."


# ----------------------------------------------------------------------------- output


def benchmark_parser(name: str, doc: str, epilog_from: int = -1) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks.<name>``: its docstring's first paragraph as the
    description, the paragraphs from ``epilog_from`` on (e.g. the usage lines) as the epilog."""
    paragraphs = doc.split("\n\n")
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=paragraphs[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(paragraphs[epilog_from:]),
    )


def log(msg: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def new_payload(name: str, argv: Sequence[str] | None, device: str = "cpu") -> dict[str, Any]:
    """What every benchmark's JSON starts with: its name, the command, the machine, git."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": name,
        "command": " ".join(["python -m", f"benchmarks.{name}", *args]),
        "machine": machine_info(device),
        "git": git_state(),
    }


def publish(
    name: str,
    payload: dict[str, Any],
    render: Callable[[Mapping[str, Any]], dict[str, str]],
    out: str | Path | None,
) -> Path:
    """Render the README blocks from the payload, write the JSON, print the blocks."""
    payload[README_KEY] = render(payload)
    path = write_json(name, payload, out)
    print(readme_snippet(name, payload[README_KEY]))
    wall = payload.get("wall_seconds")
    print(
        f"\n{describe_machine(payload['machine'])}" + (f"; wall time {wall:.0f} s" if wall else "")
    )
    print(f"written to {path}")
    return path


def write_json(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` to ``out`` or ``benchmarks/results/<name>.json``; returns the path."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def results_comment(name: str, key: str) -> str:
    """The README tag that opens a block: the JSON it comes from and the block's key."""
    return f"<!-- results: benchmarks/results/{name}.json#{key} -->"


RESULTS_END = "<!-- /results -->"


def readme_snippet(name: str, blocks: Mapping[str, str]) -> str:
    """Every block of one benchmark between its tags, ready to paste into the README."""
    return "\n\n".join(
        f"{results_comment(name, key)}\n{text.strip()}\n{RESULTS_END}"
        for key, text in blocks.items()
    )


# ----------------------------------------------------------------------------- timing


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


def interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
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
    """The median of ``a_i / b_i`` over the rounds."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


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
