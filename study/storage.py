"""Storage URLs → Optuna storages, and the artifact store beside them.

Accepted forms:

- ``sqlite:///PATH`` (default ``sqlite:///sigmatune.db`` in the current folder), or a bare
  ``PATH`` ending ``.db``, ``.sqlite`` or ``.sqlite3``: one SQLite file, opened with a 60 s lock
  timeout so several processes can share it, and with trial heartbeats so that the trials of
  a killed process are failed and retried (``RetryHeartbeatStaleTrialCallback``).
- ``journal:PATH``, or a bare ``PATH`` ending ``.log`` or ``.jsonl``: an Optuna journal file
  (``JournalStorage(JournalFileBackend)``; for file systems where SQLite locking is unreliable,
  such as NFS). Journal storages have no heartbeats, so crashed trials stay RUNNING.
- ``postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB`` (``postgresql://`` is the same: psycopg 3,
  the ``postgres`` extra), ``mysql+pymysql://...``: a database server for many machines. Each
  process opens at most ``WORKER_MAX_CONNECTIONS`` connections (checked with
  ``pool_pre_ping``), so a server with ``max_connections`` takes about that many divided by
  it workers; heartbeats use the server's clock.
- ``grpc://HOST:PORT``: Optuna's gRPC storage proxy (``sigmatune storage-proxy``, see
  ``study.commands.storage_proxy``), for very many workers: they hold no database
  connections, the proxy holds a few. Optuna's proxy client has no heartbeats;
  :class:`~sigmatune.study.optuna_adapter.HeartbeatGrpcStorageProxy` adds them as a trial
  system attribute written with each worker's own clock (see :func:`storage_capabilities` for
  what that asks of the machines).

Errors are :class:`StorageError`, one paragraph naming the URL (its password replaced by
``***``), what failed and the accepted forms; a URL that fails is never left behind as a new,
empty database file, and nothing is written to a server that refused the connection.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records
from sigmatune.study.urls import (  # re-exported: the names callers import from here
    ACCEPTED,
    DEFAULT_GRPC_PORT,
    DEFAULT_STORAGE_URL,
    JOURNAL_SUFFIXES,
    SERVER_BACKENDS,
    SQLITE_SUFFIXES,
    StorageError,
    StorageLocation,
    _error,
    grpc_target,
    parse_storage_url,
    redact_url,
)

__all__ = [
    "ACCEPTED",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_STORAGE_URL",
    "JOURNAL_SUFFIXES",
    "SERVER_BACKENDS",
    "SQLITE_SUFFIXES",
    "grpc_target",
    "StorageCapabilities",
    "StorageError",
    "StorageLocation",
    "WORKER_MAX_CONNECTIONS",
    "artifact_dir_for",
    "artifact_store_for",
    "check_storage_exists",
    "make_storage",
    "parse_storage_url",
    "redact_url",
    "storage_capabilities",
]

DEFAULT_HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
DEFAULT_GRACE_PERIOD = 30  # seconds without a heartbeat before a trial counts as stale
DEFAULT_MAX_RETRY = 3  # retries of a stale trial
SQLITE_LOCK_TIMEOUT_S = 60
SERVER_CONNECT_TIMEOUT_S = 10
DEFAULT_ARTIFACT_DIR = "sigmatune-artifacts"
# Connections one worker process opens to a database server, at most: its main thread and
# Optuna's heartbeat thread each hold one while they talk to the server (2 measured, see
# tests/study/test_postgres.py), and the pool keeps no more open than were needed at once.
WORKER_MAX_CONNECTIONS = 4
DRIVER_HINT = (
    'pip install "psycopg[binary]" (psycopg 3, the PostgreSQL driver SQLAlchemy uses for '
    'postgresql://; or the extra: pip install "sigmatune[postgres]") or pymysql (MySQL)'
)
GRPC_HINT = 'pip install grpcio protobuf (or the extra: pip install "sigmatune[grpc]")'


def _reason(exc: BaseException) -> str:
    """The first line of the cause, without SQLAlchemy's statement and background link."""

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        text = f"{type(exc.orig).__name__}: {exc.orig}"
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


OPTUNA_TABLES = frozenset({"studies", "version_info"})  # what every Optuna RDB schema has
SQLITE_MAGIC = b"SQLite format 3\x00"


def _listing(tables: list[str]) -> str:
    shown = ", ".join(sorted(tables)[:5])
    return shown + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")


def _foreign(loc: StorageLocation, tables: list[str], create: bool) -> None:
    """Refuse a database that is not an Optuna one (another program's tables), and, for a
    command that only reads (``create`` False), one that holds no study at all. A database
    with only some of Optuna's tables is one whose schema another process is creating (two
    runs started together on a new file): a creating command goes on and retries."""
    complete = OPTUNA_TABLES <= set(tables)
    if tables and not complete and not set(tables) <= adapter.SCHEMA_TABLES:
        raise _error(
            loc.url,
            f"the database holds another program's tables ({_listing(tables)}) and no Optuna "
            "study tables; sigmatune never adds its tables to another program's database, so "
            "nothing was written. Give a new file (e.g. sqlite:///sigmatune.db) or the "
            "database of a sigmatune study",
            accepted=False,
        )
    if not create and not complete:
        raise _error(
            loc.url,
            "the database holds no study (it is empty, or its tables are still being "
            "created), and a command that only reads does not create one. Run `sigmatune "
            "run` first, or give the storage URL a study was run with",
            accepted=False,
        )


def check_sqlite_file(loc: StorageLocation, *, create: bool) -> None:
    """An existing SQLite file must be an Optuna database (read through a read-only
    connection, so checking never changes it); an empty file counts as a new database."""

    assert loc.path is not None
    try:
        if not loc.path.is_file() or loc.path.stat().st_size == 0:
            if not create and loc.path.is_file():
                _foreign(loc, [], create)
            return
        with loc.path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise _error(loc.url, f"cannot read {str(loc.path)!r} ({exc})", accepted=False) from None
    if head != SQLITE_MAGIC:
        raise _error(
            loc.url,
            f"{str(loc.path)!r} is not a SQLite database (its first bytes are not SQLite's "
            "header); sigmatune will not write into it, so nothing was written. Give a new "
            "file or the database of a sigmatune study",
        )
    uri = loc.path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_LOCK_TIMEOUT_S)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _error(loc.url, f"cannot read the database ({exc})", accepted=False) from None
    _foreign(loc, [r[0] for r in rows], create)


def check_journal_file(loc: StorageLocation) -> None:
    """An existing, non-empty journal file must be an Optuna journal (its first line a JSON
    operation with an ``op_code``): another program's log is never appended to."""

    assert loc.path is not None
    try:
        if not loc.path.is_file() or loc.path.stat().st_size == 0:
            return
        with loc.path.open("rb") as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise _error(loc.url, f"cannot read {str(loc.path)!r} ({exc})", accepted=False) from None
    try:
        op = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        op = None
    if not (isinstance(op, dict) and "op_code" in op):
        raise _error(
            loc.url,
            f"{str(loc.path)!r} is not an Optuna journal file (its first line is no journal "
            "operation); sigmatune will not append to it, so nothing was written. Give a new "
            "file or the journal of a sigmatune study",
            accepted=False,
        )


def _server_tables(rdb_url: str, engine_kwargs: dict[str, Any]) -> list[str]:
    """The tables of a database server's database (read; nothing is created)."""

    engine = sqlalchemy.create_engine(rdb_url, **engine_kwargs)
    try:
        return list(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _check_parent(loc: StorageLocation) -> None:
    assert loc.path is not None
    if loc.path.is_dir():
        raise _error(loc.url, f"{str(loc.path)!r} is a directory, not a database file")
    parent = loc.path.parent
    if not parent.is_dir():
        raise _error(loc.url, f"the folder {str(parent)!r} of {str(loc.path)!r} does not exist")


def make_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int | None = DEFAULT_GRACE_PERIOD,
    max_retry: int = DEFAULT_MAX_RETRY,
    max_connections: int = WORKER_MAX_CONNECTIONS,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage at ``url`` (default
    ``sqlite:///sigmatune.db``). A database or journal of another program is refused before
    anything is written to it; with ``create`` False (the commands that only read) so is one
    that holds no Optuna study tables, so reading never creates them.

    For SQLite, database servers and the gRPC proxy, ``heartbeat_interval`` (None: no
    heartbeats) and ``grace_period`` in seconds make a trial whose process died stale, and
    ``RetryHeartbeatStaleTrialCallback(max_retry)`` re-queues it. ``max_connections``: the most
    connections this process opens to a database server. Raises :class:`StorageError`.
    """
    loc = parse_storage_url(url)
    backend = BACKENDS[loc.kind]
    if backend.check is not None:
        backend.check(loc, create)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None and backend.heartbeats != "none":
        with warnings.catch_warnings():  # experimental in Optuna, and stable since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        heartbeat = {
            "heartbeat_interval": int(heartbeat_interval),
            "grace_period": None if grace_period is None else int(grace_period),
            "heartbeat_stale_trial_callback": retry,
        }
    return backend.open(loc, heartbeat, create, max_connections)


def _open_journal(
    loc: StorageLocation, heartbeat: dict[str, Any], create: bool, max_connections: int
) -> optuna.storages.BaseStorage:
    """An Optuna journal file (``JournalStorage(JournalFileBackend)``; no heartbeats)."""
    assert loc.path is not None
    existed = loc.path.exists()
    try:
        return JournalStorage(JournalFileBackend(str(loc.path)))
    except Exception as exc:
        _remove_if_created(loc.path, existed)
        raise _error(loc.url, _reason(exc)) from exc


def _open_rdb(
    loc: StorageLocation, heartbeat: dict[str, Any], create: bool, max_connections: int
) -> optuna.storages.BaseStorage:
    """Optuna's RDBStorage on a SQLite file, an in-memory SQLite or a database server."""
    assert loc.rdb_url is not None
    engine_kwargs: dict[str, Any] = {}
    if loc.kind in ("sqlite", "memory"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_LOCK_TIMEOUT_S}
    else:
        engine_kwargs.update(_server_engine_kwargs(loc, max_connections))
    existed = loc.path.exists() if loc.path is not None else True
    try:
        if loc.kind == "server":
            _foreign(loc, _server_tables(loc.rdb_url, engine_kwargs), create)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _create_rdb(loc.rdb_url, engine_kwargs, heartbeat)
    except StorageError:
        raise
    except ImportError as exc:
        raise _error(
            loc.url,
            f"the database driver is not installed ({_reason(exc.__cause__ or exc)}); "
            f"install it: {DRIVER_HINT}",
        ) from exc
    except Exception as exc:
        if loc.path is not None:
            _remove_if_created(loc.path, existed)
        what = _reason(exc)
        if "no longer compatible" in what or "storage upgrade" in str(exc):
            what += " (upgrade it with `optuna storage upgrade --storage URL`)"
        elif loc.kind == "server" and _is_connection_error(exc):
            what += (
                "; nothing was written. Check that the database server runs and is reachable "
                "from this machine, and the user, password and database name in the URL"
            )
            raise _error(loc.url, what, accepted=False) from exc
        raise _error(loc.url, what) from exc


def _is_connection_error(exc: BaseException) -> bool:
    """The server refused the connection or could not be reached (the URL itself parsed)."""

    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


def _server_engine_kwargs(loc: StorageLocation, max_connections: int) -> dict[str, Any]:
    """A small pool (at most ``max_connections``, opened only as needed, checked before use)
    and a connect timeout, so that many workers fit in the server's ``max_connections`` and a
    server that does not answer is an error within seconds."""
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, but got {max_connections=}")
    connect_args: dict[str, Any] = {"connect_timeout": SERVER_CONNECT_TIMEOUT_S}
    if loc.backend == "postgresql":
        connect_args["application_name"] = "sigmatune"  # what pg_stat_activity shows
    return {
        "pool_size": max_connections,
        "max_overflow": 0,
        "pool_pre_ping": True,
        "connect_args": connect_args,
    }


def _open_grpc(
    loc: StorageLocation, heartbeat: dict[str, Any], create: bool, max_connections: int
) -> optuna.storages.BaseStorage:
    """A client of the gRPC storage proxy at ``loc``, once the proxy answers."""
    assert loc.host is not None and loc.port is not None
    try:
        adapter.check_grpc_installed()
    except ImportError as exc:
        raise _error(loc.url, f"gRPC is not installed ({exc}); install it: {GRPC_HINT}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            proxy: optuna.storages.GrpcStorageProxy = adapter.HeartbeatGrpcStorageProxy(
                host=grpc_target(loc.host),
                port=loc.port,
                heartbeat_attr=records.HEARTBEAT,
                **heartbeat,
            )
        else:
            proxy = optuna.storages.GrpcStorageProxy(host=grpc_target(loc.host), port=loc.port)
    try:
        proxy.wait_server_ready(timeout=SERVER_CONNECT_TIMEOUT_S)
    except ConnectionError:
        proxy.close()
        raise _error(
            loc.url,
            f"no gRPC storage proxy answers at {loc.host}:{loc.port} within "
            f"{SERVER_CONNECT_TIMEOUT_S} s; nothing was written. Start one there with "
            f"`sigmatune storage-proxy --storage DATABASE_URL --host {loc.host} "
            f"--port {loc.port}`, or check that this machine can reach it",
            accepted=False,
        ) from None
    return proxy


@dataclass(frozen=True)
class StorageCapabilities:
    """What a storage does for the study: ``heartbeats`` is "server" (the database server's
    clock), "workers" (each worker's clock: the gRPC proxy) or "none"; ``note`` is what a
    run should print at its start ("" when there is nothing to say)."""

    kind: str
    heartbeats: str
    many_machines: bool
    note: str


GRPC_NOTE = (
    "through the gRPC storage proxy, Optuna itself records no trial heartbeats; sigmatune's "
    "workers record them as a trial system attribute stamped with their own clock, so a trial "
    "of a killed worker is failed and retried only if the worker machines' clocks agree to well "
    "within --grace-period (keep them synchronised, e.g. NTP); the proxy is one process without "
    "authentication or TLS: run it on a trusted network. For up to a few dozen workers, "
    "connect them to PostgreSQL directly (heartbeats by the server's clock)"
)
JOURNAL_NOTE = (
    "journal file storages have no trial heartbeats: a trial of a killed process stays RUNNING "
    "and the other processes wait for it; use SQLite (one machine) or PostgreSQL (many) to "
    "have such trials failed and retried"
)


def storage_capabilities(url: str | None = None) -> StorageCapabilities:
    """What the storage at ``url`` supports (from the URL alone; nothing is opened)."""
    loc = parse_storage_url(url)
    backend = BACKENDS[loc.kind]
    return StorageCapabilities(loc.kind, backend.heartbeats, backend.many_machines, backend.note)


SCHEMA_RACE_RETRIES = 5


def _create_rdb(
    rdb_url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """RDBStorage, retried when another process creates the same new database's tables at
    the same moment: the loser sees "table ... already exists" (SQLite's OperationalError,
    PostgreSQL's DuplicateTable, a ProgrammingError) or a unique-constraint error (a row of
    the schema version, or PostgreSQL's catalogue of type names)."""

    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            return optuna.storages.RDBStorage(rdb_url, engine_kwargs=engine_kwargs, **heartbeat)
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            race = isinstance(exc, IntegrityError) or "already exists" in str(exc)
            if not race or attempt == SCHEMA_RACE_RETRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _remove_if_created(path: Path | None, existed: bool) -> None:
    """Leave nothing behind for a URL that failed: remove an empty file this call created."""
    if path is None or existed:
        return
    try:
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def check_storage_location(url: str | None = None) -> StorageLocation:
    """For commands that create a study: the URL parses and a SQLite or journal file's
    folder exists (checked before anything, the artifact folder included, is created)."""
    loc = parse_storage_url(url)
    check = BACKENDS[loc.kind].check
    if check is not None:
        check(loc, True)
    return loc


def check_storage_exists(url: str | None = None) -> None:
    """For commands that read a study (status, export, dashboard): a SQLite or journal file
    that does not exist is a :class:`StorageError`, and nothing is created. Server URLs are
    checked when opened."""
    loc = parse_storage_url(url)
    if loc.kind == "memory":
        raise StorageError(
            f"storage {redact_url(loc.url)!r} is an in-memory database, which holds no saved "
            "study; "
            "give the storage URL a study was run with (e.g. sqlite:///sigmatune.db)"
        )
    if loc.path is not None and not loc.path.is_file():
        raise StorageError(
            f"no study database at {str(loc.path)!r} (storage {redact_url(loc.url)!r}): the "
            "file does not "
            "exist. Run `sigmatune run` first, or give the storage URL a study was run with."
        )


def artifact_dir_for(url: str | None = None, artifact_dir: str | Path = "") -> Path:
    """Where artifacts (checkpoints, FID caches) go: ``artifact_dir`` if given, else
    ``<db stem>-artifacts`` beside a SQLite or journal file, else ``sigmatune-artifacts``."""
    if artifact_dir:
        return Path(artifact_dir)
    loc = parse_storage_url(url)
    if loc.path is not None:
        return loc.path.parent / f"{loc.path.stem}-artifacts"
    return Path(DEFAULT_ARTIFACT_DIR)


def artifact_store_for(
    url: str | None = None, artifact_dir: str | Path = ""
) -> tuple[optuna.artifacts.FileSystemArtifactStore, Path]:
    """The artifact store beside the storage (created on demand) and its folder."""
    path = artifact_dir_for(url, artifact_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the artifact folder {str(path)!r} for storage "
            f"{redact_url(url or DEFAULT_STORAGE_URL)!r}: {exc}"
        ) from exc
    return optuna.artifacts.FileSystemArtifactStore(path), path


# ----------------------------------------------------------------------------- file names


def safe_name(name: str) -> str:
    """A name made safe for a file name (the result may be shared by several names: pair it
    with something unique)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def short_hash(*parts: Any) -> str:
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return digest[:16]


def open_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """Open an existing storage for reading; a missing SQLite/journal file is a
    ``StorageError`` and nothing is created."""
    check_storage_exists(storage_url)
    return make_storage(storage_url, heartbeat_interval=None, create=False)


def read_stored_study(storage_url: str, study_name: str | None) -> records.StudyRecord:
    """The record of the study ``study_name`` (None: the only outer study) in an existing
    storage, read without creating or changing anything."""
    storage = open_storage(storage_url)
    name = records.resolve_study_name(storage, storage_url, study_name)
    return records.read_study(storage, name)


# --------------------------------------------------------------------------------------------
# The storage backends, one row each


def _check_sqlite(loc: StorageLocation, create: bool) -> None:
    _check_parent(loc)
    check_sqlite_file(loc, create=create)


def _check_journal(loc: StorageLocation, create: bool) -> None:
    _check_parent(loc)
    check_journal_file(loc)


@dataclass(frozen=True)
class Backend:
    """One kind of storage (``StorageLocation.kind``, which ``urls.parse_storage_url`` reads
    from the URL): ``check(loc, create)`` what can be checked before opening (a file's folder
    and contents; None: nothing), ``open(loc, heartbeat, create, max_connections)`` the Optuna
    storage, ``heartbeats`` whose clock beats ("server", "workers" or "none"),
    ``many_machines`` whether workers on several machines can share it, ``note`` what a run
    prints at its start."""

    check: Callable[[StorageLocation, bool], None] | None
    open: Callable[[StorageLocation, dict[str, Any], bool, int], optuna.storages.BaseStorage]
    heartbeats: str
    many_machines: bool
    note: str = ""


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(_check_sqlite, _open_rdb, "server", False),
    "memory": Backend(None, _open_rdb, "server", False),
    "server": Backend(None, _open_rdb, "server", True),
    "journal": Backend(_check_journal, _open_journal, "none", True, JOURNAL_NOTE),
    "grpc": Backend(None, _open_grpc, "workers", True, GRPC_NOTE),
}
