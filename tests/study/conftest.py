"""Fixtures of tests/study: a real PostgreSQL server for the session (tests/pgserver.py), a
fresh database on it per test, and a gRPC storage proxy process in front of that database."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_pgserver():
    """tests/pgserver.py as a module (``tests`` is no package: another one of that name may
    be installed)."""
    name = "sigmatune_tests_pgserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "pgserver.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


pgserver = load_pgserver()


@pytest.fixture(scope="session")
def postgres_factory():
    """``postgres_factory(hosts)``: a context manager running a fresh PostgreSQL server that
    listens on ``hosts`` (tests/pgserver.py). No skip: a machine without PostgreSQL fails
    these tests with a message that says how to install it."""
    try:
        pgserver.find_postgres_bin()
    except pgserver.PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    return pgserver.postgres_server


@pytest.fixture(scope="session")
def postgres(postgres_factory) -> Iterator[pgserver.PostgresServer]:
    """A PostgreSQL server of this test session on 127.0.0.1."""
    with postgres_factory(max_connections=60) as pg:
        yield pg


@pytest.fixture
def pg_database(postgres: pgserver.PostgresServer, request: pytest.FixtureRequest) -> str:
    """A new, empty database for this test; returns its name."""
    base = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    return postgres.create_database(f"{base}_{len(postgres.databases)}")


def _run_python(code: str, *args: str) -> subprocess.Popen:
    """``python -c code ARGS`` with this interpreter, stdout and stderr captured together."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="session")
def run_python():
    """``run_python(code, *args)``: a ``python -c`` process, output captured."""
    return _run_python


@pytest.fixture(scope="session")
def free_port():
    """``free_port(host="127.0.0.1")``: a TCP port nothing listens on now."""
    return pgserver.free_port


@pytest.fixture
def grpc_proxy(postgres: pgserver.PostgresServer, pg_database: str) -> Iterator[str]:
    """``sigmatune``'s storage proxy (study.commands.storage_proxy.serve_storage_proxy) in its
    own process, in front of this test's database; returns the ``grpc://127.0.0.1:PORT`` URL."""
    port = pgserver.free_port()
    url = postgres.url(pg_database)
    proc = _run_python(
        "from sigmatune.study.commands.storage_proxy import serve_storage_proxy; "
        f"serve_storage_proxy({url!r}, '127.0.0.1', {port})"
    )
    try:
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                proc.kill()
                pytest.fail(f"the storage proxy did not start:\n{proc.communicate()[0]}")
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
