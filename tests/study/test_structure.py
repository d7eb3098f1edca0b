"""The structure docs/development.md describes, read from the code's own imports (every import
statement, those inside functions too): no import cycle; the study engine never imports a
command or ``dashboards``; a function imports a module itself only for an optional dependency;
Optuna's private names only in ``study/optuna_adapter.py``; stored keys only in
``study/records.py``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("objectives", "models", "study", "dashboards")
# what a function may import itself: dependencies of extras, absent from a plain install
OPTIONAL = {
    "grpc",
    "boto3",
    "botocore",
    "psycopg",
    "pymysql",
    "torchvision",
    "mlxtend",
    "torch_fidelity",
    "diffusers",
    "playwright",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["sigmatune." + ".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(path: Path) -> set[str]:
    """The project's modules ``path`` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imported(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_imports_inside_functions():
    assert _cycles(GRAPH) == []


def test_the_engine_imports_no_command_and_no_dashboard():
    bad = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith("sigmatune.study.") and not name.startswith("sigmatune.study.commands")
        for target in targets
        if target.startswith(("sigmatune.study.commands", "sigmatune.dashboards"))
    ]
    assert bad == []


def test_every_command_has_a_module_with_main():
    from sigmatune.study.commands.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse's subparsers
    assert sorted(sub.choices) == sorted(COMMANDS)
    for module in COMMANDS.values():
        tree = ast.parse((ROOT / "study" / "commands" / f"{module}.py").read_text())
        assert "main" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, module


def _local_imports(path: Path) -> list[str]:
    """Import statements inside functions that are not of an optional dependency (nor in a
    ``try`` that handles its ImportError)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.col_offset == 0:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        if all((n or "").split(".")[0] in OPTIONAL for n in names):
            continue
        p, guarded = parents.get(node), False
        while p is not None and not guarded:
            guarded = isinstance(p, ast.Try) and any(
                h.type is not None and "ImportError" in ast.unparse(h.type) for h in p.handlers
            )
            p = parents.get(p)
        if not guarded:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_study_imports_inside_functions_only_optional_dependencies():
    paths = sorted((ROOT / "study").rglob("*.py"))
    found = [line for path in paths for line in _local_imports(path)]
    assert found == []


OPTUNA_PRIVATE = re.compile(r"\._(trial_id|study_id|storage)\b|optuna\.[\w.]*\._[a-z]\w*")


def test_optuna_private_names_only_in_the_adapter():
    found = []
    for package in ("study", "dashboards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "optuna_adapter.py":
                continue
            for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if OPTUNA_PRIVATE.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize(
    "line", ["x = trial._trial_id", "from optuna.storages._heartbeat import BaseHeartbeat"]
)
def test_the_private_name_pattern_sees_private_uses(line):
    assert OPTUNA_PRIVATE.search(line)


ATTR_ACCESS = re.compile(r"\b(set_(trial_|study_)?(user|system)_attr|(user|system)_attrs\b)")


def test_stored_attributes_are_read_and_written_only_by_records():
    """Every key of a study is a constant of ``study/records.py`` and only its functions read
    or write one (the adapter is Optuna's plumbing: it writes what it is handed). An enqueued
    trial's attrs are built by records too (``records.start_attrs`` and such)."""
    found = []
    for package in ("study", "dashboards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name in ("records.py", "optuna_adapter.py"):
                continue
            for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not ATTR_ACCESS.search(line):
                    continue
                # passing a records-built mapping to Optuna's enqueue/create is allowed
                if re.search(r"(user|system)_attrs=(records|adapter)\.\w+\(", line):
                    continue
                found.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    # the dashboard server reads optuna-dashboard's own JSON API, not a storage
    found = [f for f in found if not f.startswith("dashboards/server.py")]
    assert found == []


def test_no_stored_key_literal_outside_records():
    key = re.compile(r"[\"'](sigmatune|outer):[a-z_]+[\"']")
    allowed = {
        "records.py",
        # document fields of files (not stored attributes): the export's and the model file's
        "formats.py",
        "modelfile.py",
    }
    found = []
    for package in ("study", "dashboards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name in allowed:
                continue
            for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if key.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert found == []


def test_the_adapters_dashboard_prefix_is_optuna_dashboards():
    from optuna_dashboard.artifact._backend import DASHBOARD_ARTIFACTS_ATTR_PREFIX

    from sigmatune.study import optuna_adapter

    assert optuna_adapter.DASHBOARD_ARTIFACTS_ATTR_PREFIX == DASHBOARD_ARTIFACTS_ATTR_PREFIX


def test_the_command_line_starts_without_the_dashboard_or_scikit_learn():
    """``sigmatune --help`` and the commands start without importing optuna-dashboard (and
    through it scikit-learn and scipy: 3 s per process); ``run`` imports it when it first
    publishes, so a run that stops at a bad config answers without it."""
    import subprocess
    import sys

    code = (
        "import sys, sigmatune.study.commands.cli\n"
        "from sigmatune.study.commands import export, hooks, run, schedule, status, "
        "tune_sampling\n"
        "print(sorted(m for m in ('optuna_dashboard', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sigmatune_help_and_a_mistyped_command_start_without_torch():
    """``sigmatune --help``, a command's ``--help`` and a usage error answer without importing
    torch or the config's registries (about 1 s instead of 5 on a 2-core machine): the
    command line's own module imports only the names it offers (``study.names``)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sigmatune.study.commands.cli import main\n"
        "for args in (['--help'], ['schedule', '--help'], ['status', '--help'], ['runn']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'sigmatune.study.config', 'sklearn')\n"
        "      if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "loaded: []", out.stdout + out.stderr
    assert "invalid choice: 'runn'" in out.stderr


def test_the_names_the_command_line_offers_are_the_registries():
    """``study.names`` spells out the presets and schedule methods for the command line; they
    are the ones ``study.config`` loads and ``study.schedules`` draws."""
    from sigmatune.study import config, names, schedules

    assert names.SCHEDULE_METHODS == schedules.METHODS
    for preset in names.preset_names():
        assert config.load_config(preset).name  # each one loads
    from sigmatune.study.commands.cli import build_parser

    schedule = build_parser()._subparsers._group_actions[0].choices["schedule"]
    method = next(a for a in schedule._actions if a.dest == "method")
    assert tuple(method.choices) == schedules.METHODS
