"""Results from committed code (issue 19, item 5): a benchmark refuses to write into
``benchmarks/results/`` from a checkout with uncommitted changes, naming them; ``--allow-dirty``
writes to the ignored ``benchmarks/results/dirty/`` instead, with its list of changed files;
any other ``--out`` (the tests' temporary folders) is written as it is.

The committed files written before the rule (their ``git.modified`` is not empty) can only be
mended by rerunning their benchmarks; what is checked here is that no benchmark can add
another: every benchmark that writes a JSON refuses up front, before it measures anything, and
the writer refuses again at the end."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _common
from benchmarks._common import (
    DIRTY_DIR,
    RESULTS_DIR,
    ROOT,
    DirtyTreeError,
    git_state,
    new_payload,
    results_path,
    write_json,
)

DIRTY = {"commit": "0" * 40, "modified": ["study/inner.py"], "untracked": ["models/new.py"]}
CLEAN = {"commit": "0" * 40, "modified": [], "untracked": []}

# How each benchmark that writes a JSON is started with its default output (the committed
# results); a benchmark missing here fails test_every_benchmark_is_checked.
DEFAULT_RUNS = {
    "benchmarks.gpu": ["--device", "cpu", "--out", str(RESULTS_DIR / "gpu.json")],
    "benchmarks.inner_sampler": [],
    "benchmarks.interim_ceiling": [],
    "benchmarks.outer_check": ["--source", "outer_study.json", "--dir", "bench-out"],
    "benchmarks.outer_study": [],
    "benchmarks.overhead.__main__": [],
    "benchmarks.paired_objective": [],
    "benchmarks.peers": [],
    "benchmarks.presets": [],
    "benchmarks.quality_analytic": [],
    "benchmarks.quality_trained": [],
    "benchmarks.scorer_resolution": [],
    "benchmarks.scorer_separation": [],
    "benchmarks.search_images": [],
    "benchmarks.search_images_check": [],
    "benchmarks.storage_overhead": [],
}


def _writers() -> set[str]:
    """The benchmark modules that write a JSON (through ``publish`` or ``write_json``)."""
    found = set()
    for path in (ROOT / "benchmarks").rglob("*.py"):
        if path.name == "_common.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "publish(" in text or "write_json(" in text:
            found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def _git_in(monkeypatch: pytest.MonkeyPatch, state: dict) -> None:
    """``git_state`` returns ``state``: in ``benchmarks._common`` and in the ``_common`` that
    storage_overhead.py (a script) imports by that name."""
    for module in (_common, sys.modules.get("_common")):
        if module is not None:
            monkeypatch.setattr(module, "git_state", lambda: dict(state))


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for benchmarks/results/ (with its dirty/) in a temporary folder."""
    folder = tmp_path / "results"
    monkeypatch.setattr(_common, "RESULTS_DIR", folder)
    monkeypatch.setattr(_common, "DIRTY_DIR", folder / "dirty")
    return folder


# ----------------------------------------------------------------------------- what counts


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_git_state_counts_source_changes_not_the_results_nor_scratch(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for rel in ("study/inner.py", "README.md", "benchmarks/results/peers.json"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("committed\n")
    (repo / ".gitignore").write_text("*.db\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    monkeypatch.setattr(_common, "ROOT", repo)
    monkeypatch.setattr(_common, "RESULTS_DIR", repo / "benchmarks" / "results")
    assert git_state()["modified"] == [] and git_state()["untracked"] == []

    (repo / "benchmarks/results/peers.json").write_text("rewritten by its benchmark\n")
    (repo / "benchmarks/results/new.json").write_text("a new benchmark's first JSON\n")
    (repo / "notes.txt").write_text("scratch beside the code\n")
    (repo / "study/runs.db").write_text("ignored\n")
    assert git_state()["modified"] == [] and git_state()["untracked"] == []

    (repo / "README.md").write_text("edited\n")
    (repo / "study/inner.py").write_text("edited\n")
    (repo / "study/new_module.py").write_text("not committed\n")
    state = git_state()
    assert state["modified"] == ["README.md", "study/inner.py"]
    assert state["untracked"] == ["study/new_module.py"]
    assert _common.uncommitted(state) == [
        "README.md",
        "study/inner.py",
        "study/new_module.py (untracked)",
    ]


def test_the_dirty_folder_is_ignored_by_git():
    done = subprocess.run(
        ["git", "check-ignore", "-q", str(DIRTY_DIR / "peers.json")], cwd=ROOT, check=False
    )
    assert done.returncode == 0, "benchmarks/results/dirty/ must be in .gitignore"


# ----------------------------------------------------------------------------- the writer


def test_a_dirty_tree_refuses_the_committed_results_naming_the_files(results, monkeypatch):
    _git_in(monkeypatch, DIRTY)
    with pytest.raises(DirtyTreeError) as refused:
        results_path("peers")
    message = str(refused.value)
    assert "study/inner.py" in message and "models/new.py (untracked)" in message
    assert "Commit first" in message and "--allow-dirty" in message
    assert str(results / "dirty" / "peers.json") in message
    assert refused.value.code == message  # SystemExit: the command prints it, exits 1
    with pytest.raises(DirtyTreeError):
        results_path("peers", results / "peers.json")
    assert not results.exists()


def test_allow_dirty_writes_elsewhere_and_keeps_the_changed_files(results, monkeypatch):
    _git_in(monkeypatch, DIRTY)
    results.mkdir()
    committed = results / "peers.json"
    committed.write_text('{"committed": true}\n')
    path = results_path("peers", allow_dirty=True)
    assert path == results / "dirty" / "peers.json"
    assert results_path("peers", committed, allow_dirty=True) == path
    written = write_json("peers", new_payload("peers", ["--allow-dirty"]), path)
    assert written == path
    assert json.loads(path.read_text())["git"]["modified"] == DIRTY["modified"]
    assert json.loads(path.read_text())["git"]["untracked"] == DIRTY["untracked"]
    assert committed.read_text() == '{"committed": true}\n'


def test_other_paths_are_written_on_a_dirty_tree(results, tmp_path, monkeypatch):
    _git_in(monkeypatch, DIRTY)
    out = tmp_path / "elsewhere" / "qa.json"
    assert results_path("quality_analytic", out) == out
    assert results_path("quality_analytic", out, allow_dirty=True) == out
    assert write_json("quality_analytic", {"figures": 1}, out) == out
    assert json.loads(out.read_text())["git"] == DIRTY  # recorded where the payload had none


def test_a_clean_tree_writes_the_committed_results(results, monkeypatch):
    _git_in(monkeypatch, CLEAN)
    path = results_path("peers")
    assert path == results / "peers.json"
    write_json("peers", new_payload("peers", []), path)
    assert json.loads(path.read_text())["git"]["modified"] == []


def test_the_writer_refuses_at_the_end_and_keeps_the_run(results, monkeypatch):
    """The tree was clean when the run started, not when it ends (or the other way round):
    nothing lands in the committed results, the run's JSON is kept in dirty/."""
    _git_in(monkeypatch, CLEAN)
    path = results_path("peers")
    payload = new_payload("peers", [])
    _git_in(monkeypatch, DIRTY)
    with pytest.raises(DirtyTreeError, match="study/inner.py") as refused:
        write_json("peers", payload, path)
    assert not path.exists()
    kept = results / "dirty" / "peers.json"
    assert str(kept) in str(refused.value) and json.loads(kept.read_text())["benchmark"] == "peers"

    _git_in(monkeypatch, CLEAN)  # figures measured on a dirty tree, written from a clean one
    with pytest.raises(DirtyTreeError, match="when the run started"):
        write_json("peers", {"git": DIRTY, "figures": 1}, path)
    assert not path.exists()


def test_without_git_the_committed_results_are_refused(results, monkeypatch):
    _git_in(monkeypatch, {})
    with pytest.raises(DirtyTreeError, match="git cannot tell"):
        results_path("peers")


# ----------------------------------------------------------------------------- every benchmark


def test_every_benchmark_is_checked():
    assert _writers() == set(DEFAULT_RUNS), "add the new benchmark to DEFAULT_RUNS"


@pytest.mark.parametrize("name", sorted(DEFAULT_RUNS))
def test_every_benchmark_refuses_before_measuring(name, monkeypatch):
    """Started for the committed results on a dirty tree, each benchmark stops before it
    measures anything (a tripwire on what would start the work) and writes nothing."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # storage_overhead.py extends it
    module = importlib.import_module(name)
    _git_in(monkeypatch, DIRTY)

    def tripwire(*_a, **_k):
        raise AssertionError(f"{name} started measuring on a dirty tree")

    for attr in ("run", "new_payload", "limited_threads", "check_only"):
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, tripwire)
    before = sorted(p.name for p in RESULTS_DIR.glob("*.json"))
    with pytest.raises(SystemExit, match="study/inner.py") as refused:
        module.main(DEFAULT_RUNS[name])
    # storage_overhead.py, a script, has its own copy of _common and of the error class
    assert type(refused.value).__name__ == DirtyTreeError.__name__
    assert sorted(p.name for p in RESULTS_DIR.glob("*.json")) == before


def test_render_only_with_allow_dirty_leaves_the_committed_json(results, monkeypatch):
    """peers.py --render-only reads the JSON it is given and, with --allow-dirty, writes the
    rendering to dirty/."""
    from benchmarks import peers

    _git_in(monkeypatch, DIRTY)
    results.mkdir()
    source = results / "peers.json"
    shutil.copy(RESULTS_DIR / "peers.json", source)
    before = source.read_text()
    peers.main(["--render-only", "--out", str(source), "--allow-dirty"])
    assert source.read_text() == before
    rendered = json.loads((results / "dirty" / "peers.json").read_text())
    assert rendered["readme"] == json.loads(before)["readme"]


def test_committed_results_name_no_path_of_the_machine_that_ran_them():
    """A results JSON names its files relative to the checkout (``bench-out/...``), never an
    absolute path of the machine it ran on."""
    for path in sorted(RESULTS_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        for marker in ("/tmp/", "/home/", "/root/", "/work/"):
            assert marker not in text, f"{path.name} names {marker}..."
