"""What every benchmark shares: the machine it ran on, how figures are printed, the JSON file.

Each benchmark prints its tables and writes the same figures, with the machine, to
``benchmarks/results/<name>.json`` (committed: the tables of ``docs/results.md`` come from these
files). A benchmark's README block (a table, its caption and its machine line) is rendered
by the benchmark from the JSON's figures with the formatters below and stored in the JSON
under ``"readme"`` (one block per key; the names predate ``docs/``); ``docs/results.md`` holds
each block between ``<!-- results: benchmarks/results/<name>.json#<key> -->`` and
``<!-- /results -->``, pasted from what :func:`publish` prints (no benchmark edits a Markdown
file), and ``tests/benchmarks/test_readme_results.py`` checks that the two are the same text
wherever the block is (README.md or docs/*.md).
Scratch (caches, trained models, logs) goes to ``bench-out/`` (ignored).

Results come from committed code: a benchmark refuses to write into ``benchmarks/results/``
from a checkout with uncommitted changes (:func:`results_path`, checked before it measures
anything, and :func:`write_json`, checked again when it writes), naming the files. What
counts (:func:`git_state`): every tracked file with uncommitted changes (a commit and an empty
list then say exactly which tree ran), and the untracked files that are not ignored under the
folders a benchmark imports from (:data:`SOURCE_PATHS`: a new module or preset there changes
what runs; a scratch file elsewhere cannot). The results in ``benchmarks/results/`` are the
benchmarks' outputs, read by none of them as an input, and count in neither: a benchmark
rewriting its JSON, or several run one after another before one commit, is the normal way.
``--allow-dirty`` (trying things) writes the JSON to ``benchmarks/results/dirty/`` instead
(ignored by git; the same file name), never over the committed results; its ``git`` entry
keeps the list of changed files. An ``--out`` outside ``benchmarks/results/`` (the tests'
temporary folders, ``bench-out/``) is written as it is, clean tree or not.
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
RESULTS_DIR = ROOT / "benchmarks" / "results"  # the committed JSON behind docs/results.md
DIRTY_DIR = RESULTS_DIR / "dirty"  # --allow-dirty's JSON (ignored): never the committed ones
# Where an untracked file can change what a benchmark runs (it imports these packages and
# reads the presets under study/); untracked files elsewhere do not block a result.
SOURCE_PATHS = ("benchmarks", "dashboards", "models", "objectives", "study", "sigmatune")
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


def apply_sizes(args: Any, full: Mapping[str, Any], quick: Mapping[str, Any]) -> None:
    """Fill each size a benchmark's command line left unset (None) from ``quick`` (with
    ``--quick``) or ``full``."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def git_state() -> dict[str, Any]:
    """The checkout's commit, its tracked files with uncommitted changes (``modified``) and its
    untracked files that are not ignored under :data:`SOURCE_PATHS` (``untracked``); files
    under ``benchmarks/results/`` (outputs) count in neither. Read-only git; {} without git."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not rewrite the index

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip())
        return done.stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "-z", "--untracked-files=no").split("\0")
        untracked = git("ls-files", "-z", "--others", "--exclude-standard", "--", *SOURCE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return {}
    modified, skip = [], False
    for entry in status:  # "XY path", a rename's or copy's source path in the next entry
        if skip or len(entry) < 4:
            skip = False
            continue
        skip = "R" in entry[:2] or "C" in entry[:2]
        modified.append(entry[3:])
    return {
        "commit": commit,
        "modified": sorted(p for p in modified if not _is_output(p)),
        "untracked": sorted(p for p in untracked.split("\0") if p and not _is_output(p)),
    }


def _is_output(path: str) -> bool:
    """A path (relative to the checkout) under ``benchmarks/results/``: a benchmark's output."""
    return path.startswith(f"{RESULTS_DIR.relative_to(ROOT).as_posix()}/")


def uncommitted(state: Mapping[str, Any]) -> list[str]:
    """The files of a :func:`git_state` that make it not a commit's tree, untracked ones
    marked so."""
    return [*state.get("modified", ()), *(f"{p} (untracked)" for p in state.get("untracked", ()))]


class DirtyTreeError(SystemExit):
    """Refused: results into ``benchmarks/results/`` from a checkout with uncommitted changes
    (a ``SystemExit``: the command prints the message alone and exits with status 1)."""


def is_committed_results(path: str | Path) -> bool:
    """Whether ``path`` is in ``benchmarks/results/`` (the committed results), not in its
    ignored ``dirty/``."""
    p = Path(path).resolve()
    return p.is_relative_to(RESULTS_DIR.resolve()) and not p.is_relative_to(DIRTY_DIR.resolve())


def dirty_path(path: str | Path) -> Path:
    """Where ``--allow-dirty`` puts a JSON meant for ``benchmarks/results/``."""
    return DIRTY_DIR / Path(path).resolve().relative_to(RESULTS_DIR.resolve())


def _refusal(path: Path, recorded: Mapping[str, Any] | None = None) -> str | None:
    """Why ``path`` (in the committed results) may not be written now, or None: the checkout
    has uncommitted changes, or ``recorded`` (the payload's ``git``, taken when the benchmark
    started) says its figures were measured on such a tree."""
    where = _shown(path)
    state = git_state()
    if not state:
        return (
            f"refusing to write {where}: git cannot tell whether this checkout has uncommitted "
            "changes; results come from committed code. Run from a git checkout, or rerun with "
            f"--allow-dirty (writes {_shown(dirty_path(path))}, ignored by git)."
        )
    files = uncommitted(state)
    when = "has"
    if not files and recorded is not None:
        files, when = uncommitted(recorded), "had, when the run started,"
    if not files:
        return None
    return (
        f"refusing to write {where}: the checkout {when} uncommitted changes "
        f"({', '.join(files)}); results come from committed code. Commit first, or rerun with "
        f"--allow-dirty (writes {_shown(dirty_path(path))}, ignored by git)."
    )


def _shown(path: Path) -> str:
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)


def results_path(name: str, out: str | Path | None = None, allow_dirty: bool = False) -> Path:
    """Where a benchmark's JSON goes, decided before it measures anything: ``out``, else
    ``benchmarks/results/<name>.json``. A path in the committed results needs a checkout
    without uncommitted changes (else :class:`DirtyTreeError`, naming the files); with
    ``allow_dirty`` it becomes the same name under ``benchmarks/results/dirty/``, clean tree
    or not. Any other path is returned as it is."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    if not is_committed_results(path):
        return path
    if allow_dirty:
        return dirty_path(path)
    reason = _refusal(path)
    if reason:
        raise DirtyTreeError(reason)
    return path


def add_allow_dirty(parser: argparse.ArgumentParser) -> None:
    """The ``--allow-dirty`` option (:func:`benchmark_parser` adds it)."""
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="trying things on a checkout with uncommitted changes: the JSON goes to "
        "benchmarks/results/dirty/ (ignored by git), never over the committed results",
    )


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
    description, the paragraphs from ``epilog_from`` on (e.g. the usage lines) as the epilog;
    with ``--allow-dirty`` (:func:`add_allow_dirty`)."""
    paragraphs = doc.split("\n\n")
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=paragraphs[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(paragraphs[epilog_from:]),
    )
    add_allow_dirty(parser)
    return parser


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
    """Write ``payload`` to ``out`` or ``benchmarks/results/<name>.json``; returns the path.

    Into the committed results only when the checkout has no uncommitted changes now and had
    none when the run started (the payload's ``git``, added here if the benchmark did not
    record it): else the JSON goes to ``benchmarks/results/dirty/`` (so that a long run is not
    lost) and :class:`DirtyTreeError` says so."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    if "git" not in payload:
        payload["git"] = git_state()
    if is_committed_results(path):
        reason = _refusal(path, payload["git"])
        if reason:
            kept = _dump(dirty_path(path), payload)
            raise DirtyTreeError(f"{reason} This run's JSON was written to {_shown(kept)}.")
    return _dump(path, payload)


def _dump(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def results_comment(name: str, key: str) -> str:
    """The README tag that opens a block: the JSON it comes from and the block's key."""
    return f"<!-- results: benchmarks/results/{name}.json#{key} -->"


RESULTS_END = "<!-- /results -->"


def readme_snippet(name: str, blocks: Mapping[str, str]) -> str:
    """Every block of one benchmark between its tags, ready to paste into docs/results.md."""
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


# ----------------------------------------------------------------------------- verdicts

# DESIGN, "verdicts follow the rules": no ratio and no "met" between two scores at the floor; a
# target the independent check contradicts is reported as contradicted, in the table.
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"
UNDECIDABLE = "at the floor: undecidable"
CONTRADICTED = "contradicted by the independent check"
AT_FLOOR_SPREADS = 2.0  # objectives.fid.AT_FLOOR_SPREADS: a score within two floor spreads


def at_floor(value: float | None, floor: float | None, floor_spread: float | None) -> bool:
    """Whether a score is at the floor, ``value <= floor + 2 * floor_spread`` (the rule of
    ``objectives.fid.Floors.at_floor``); False where a figure is missing."""
    if value is None or floor is None or floor_spread is None:
        return False
    return value <= floor + AT_FLOOR_SPREADS * floor_spread


def floor_ratio(
    a: float | None, b: float | None, floor: float | None, floor_spread: float | None
) -> float | None:
    """``a / b``, or None where either is missing, ``b <= 0``, or both are at the floor."""
    if a is None or b is None or b <= 0:
        return None
    if at_floor(a, floor, floor_spread) and at_floor(b, floor, floor_spread):
        return None
    return a / b


def verdict(
    met: bool | None, *, undecidable: bool = False, independent_met: bool | None = None
) -> str:
    """A target's verdict, in words: :data:`NOT_MEASURED` (``met`` None and decidable),
    :data:`UNDECIDABLE` (the scores it compares are both at the floor), :data:`CONTRADICTED`
    (the independent check, where it judged the same target, says otherwise), else
    :data:`MET` or :data:`MISSED`."""
    if undecidable:
        return UNDECIDABLE
    if met is None:
        return NOT_MEASURED
    if independent_met is not None and bool(independent_met) != bool(met):
        return CONTRADICTED
    return MET if met else MISSED
