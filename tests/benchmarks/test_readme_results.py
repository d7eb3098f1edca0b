"""Every figure of docs/results.md (and of any Results block left in the README) comes from a
committed JSON file.

The convention (benchmarks/_common.py): a Results block sits between
``<!-- results: benchmarks/results/<name>.json#<key> -->`` and ``<!-- /results -->``, in
docs/results.md (the README has a summary that links there). Blocks are followed wherever they
are, in README.md and every docs/*.md. Where the JSON holds rendered blocks (``"readme": {key:
text}``, rendered by the benchmark from its own figures), the shown block is exactly that text,
every block a JSON holds is shown somewhere, and the benchmark's renderer gives the same text
again from the JSON alone. For a JSON without rendered blocks, every number in the block's
table rows must be one of the JSON's numbers, rounded as printed. Every Markdown table of
docs/results.md and of the README's Results section lies inside a block.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks._common import README_KEY, RESULTS_END, ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS_DOC = DOCS / "results.md"  # where the benchmarks' blocks are shown
RESULTS = ROOT / "benchmarks" / "results"
TAG = re.compile(r"<!-- results: (benchmarks/results/[\w.-]+\.json)#([\w-]+) -->")
RENDERERS = {"overhead": "benchmarks.overhead.__main__"}  # else benchmarks.<benchmark>
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w])")


def results_section(text: str) -> str:
    """The README's Results section ("" when it has none)."""
    start = text.find("\n## Results")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def shown_blocks() -> list[tuple[Path, str, str, str]]:
    """(document, json path, key, text) of every tagged block of README.md and docs/*.md."""
    return [
        (doc, path, key, text)
        for doc in documents()
        for path, key, text, *_ in blocks(doc.read_text(encoding="utf-8"))
    ]


def blocks(section: str) -> list[tuple[str, str, str, int, int]]:
    """(json path, key, text, start, end) of every tagged block."""
    found = []
    for m in TAG.finditer(section):
        end = section.index(RESULTS_END, m.end())
        found.append((m.group(1), m.group(2), section[m.end() : end].strip(), m.start(), end))
    return found


def numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numbers(x)]
    return []


def printed_as(token: str, values: list[float]) -> bool:
    """Whether some value, rounded as ``token`` is printed, is ``token``."""
    text, scale = token.replace(",", ""), 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 100.0
    mantissa = text.split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    target = float(text)
    for v in values:
        v = v * scale
        if "e" in text:
            if f"{v:.{decimals}e}" == f"{target:.{decimals}e}":
                return True
        elif abs(v - target) <= 0.5 * 10**-decimals * (1 + 1e-9):
            return True
    return False


def table_numbers(text: str) -> list[str]:
    """The number tokens of a block's table rows (header and rule rows left out)."""
    tokens, header = [], True
    for line in text.splitlines():
        if not line.startswith("|"):
            header = True  # the next table starts with its header
            continue
        if not header and not set(line) <= set("|-: "):
            tokens += NUMBER.findall(line)
        header = False
    return tokens


def test_the_results_doc_has_blocks() -> None:
    text = RESULTS_DOC.read_text(encoding="utf-8")
    assert blocks(text), f"{RESULTS_DOC.name} has no <!-- results: ... --> block"


def test_every_block_is_its_json() -> None:
    for doc, path, key, text in shown_blocks():
        payload = json.loads((ROOT / path).read_text(encoding="utf-8"))
        if README_KEY in payload:
            assert key in payload[README_KEY], f"{path} has no rendered block {key!r}"
            assert text == payload[README_KEY][key].strip(), f"{path}#{key} differs in {doc.name}"
        else:
            values = numbers(payload)
            missing = [t for t in table_numbers(text) if not printed_as(t, values)]
            assert not missing, f"{doc.name}, {path}#{key}: {missing} are not figures of the JSON"


@pytest.mark.parametrize("doc", [RESULTS_DOC, README], ids=lambda p: p.name)
def test_every_table_is_in_a_block(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    section = text if doc == RESULTS_DOC else results_section(text)
    spans = [(start, end) for *_, start, end in blocks(section)]
    offset = 0
    for line in section.splitlines(keepends=True):
        if line.startswith("|"):
            assert any(s <= offset < e for s, e in spans), f"a table outside a block: {line!r}"
        offset += len(line)


def test_every_rendered_block_is_shown() -> None:
    shown = {(path, key) for _, path, key, _ in shown_blocks()}
    for path in _rendered():
        rel = path.relative_to(ROOT).as_posix()
        for key in json.loads(path.read_text(encoding="utf-8"))[README_KEY]:
            assert (rel, key) in shown, f"{rel}#{key} is shown in neither README.md nor docs/"


def _rendered() -> list[Path]:
    """The committed JSON files that hold README blocks (the others, e.g.
    storage_overhead.json, are checked number by number in test_every_block_is_its_json)."""
    return sorted(
        p for p in RESULTS.glob("*.json") if README_KEY in json.loads(p.read_text(encoding="utf-8"))
    )


def test_most_results_hold_their_rendered_blocks() -> None:
    assert len(_rendered()) >= 6  # presets, quality x2, peers, outer_study, overhead


@pytest.mark.parametrize("path", _rendered(), ids=lambda p: p.name)
def test_committed_blocks_are_rendered_from_their_figures(path: Path) -> None:
    payload = json.loads(path.read_text(encoding="utf-8"))
    module = importlib.import_module(
        RENDERERS.get(payload["benchmark"], f"benchmarks.{payload['benchmark']}")
    )
    assert module.render_readme(payload) == payload[README_KEY]


def test_number_matching() -> None:
    assert printed_as("12,111", [12111.4]) and not printed_as("12,111", [12112.0])
    assert printed_as("0.985", [0.98512]) and not printed_as("0.985", [0.9856])
    assert printed_as("9.1%", [0.0912]) and printed_as("1.3e-15", [1.26e-15])
    assert table_numbers("| a | b |\n|---|---|\n| 5 | 0.25 ± 0.0024 |") == ["5", "0.25", "0.0024"]
