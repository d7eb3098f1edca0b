"""Storage URLs → Optuna storages, and the artifact store beside them.

Accepted forms:

- ``sqlite:///PATH`` (default ``sqlite:///sigmatune.db`` in the current folder), or a bare
  ``PATH`` ending ``.db``, ``.sqlite`` or ``.sqlite3``: one SQLite file, opened with a 60 s lock
  timeout so several processes can share it, and with trial heartbeats so that the trials of
  a killed process are failed and retried (``RetryHeartbeatStaleTrialCallback``).
- ``journal:PATH``, or a bare ``PATH`` ending ``.log`` or ``.jsonl``: an Optuna journal file
  (``JournalStorage(JournalFileBackend)``; for file systems where SQLite locking is unreliable,
  such as NFS). Journal storages have no heartbeats, so crashed trials stay RUNNING.
- ``postgresql://...``, ``mysql://...`` (any SQLAlchemy driver suffix, e.g.
  ``mysql+pymysql://``): a database server for many machines, with ``pool_pre_ping``.

Errors are :class:`StorageError`, one paragraph naming the URL, what failed and the accepted
forms; a URL that fails is never left behind as a new, empty database file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

__all__ = [
    "DEFAULT_STORAGE_URL",
    "StorageError",
    "StorageLocation",
    "artifact_dir_for",
    "artifact_store_for",
    "check_storage_exists",
    "make_storage",
    "parse_storage_url",
]

DEFAULT_STORAGE_URL = "sqlite:///sigmatune.db"
DEFAULT_HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
DEFAULT_GRACE_PERIOD = 30  # seconds without a heartbeat before a trial counts as stale
DEFAULT_MAX_RETRY = 3  # retries of a stale trial
SQLITE_LOCK_TIMEOUT_S = 60
SERVER_CONNECT_TIMEOUT_S = 10
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".jsonl")
SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")
DEFAULT_ARTIFACT_DIR = "sigmatune-artifacts"

ACCEPTED = (
    "accepted storage URLs: sqlite:///PATH.db (default sqlite:///sigmatune.db) or a PATH ending "
    ".db/.sqlite/.sqlite3; journal:PATH or a PATH ending .log/.jsonl (an Optuna journal file); "
    "postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE; mysql+pymysql://USER:PASSWORD@HOST/DATABASE"
)


class StorageError(RuntimeError):
    """A storage URL that is malformed, unsupported or cannot be opened."""


@dataclass(frozen=True)
class StorageLocation:
    """What a storage URL points at: ``kind`` is sqlite, memory, journal or server."""

    url: str  # the URL given (the default filled in)
    kind: str
    rdb_url: str | None = None  # the SQLAlchemy URL for sqlite / memory / server
    path: Path | None = None  # the file for sqlite / journal
    backend: str | None = None  # SQLAlchemy backend name for server


def _error(url: str, what: str) -> StorageError:
    what = " ".join(str(what).split())  # one paragraph
    return StorageError(f"cannot use storage {url!r}: {what}. {ACCEPTED}.")


def parse_storage_url(url: str | None = None) -> StorageLocation:
    """Classify a storage URL without touching anything (no file or connection is made)."""
    given = DEFAULT_STORAGE_URL if url is None or not str(url).strip() else str(url).strip()
    if given.startswith("journal:"):
        path = given[len("journal:") :]
        if path.startswith("//"):  # journal:///abs/path or journal://rel/path
            path = path[2:]
        if not path:
            raise _error(given, "journal: needs a file path (journal:PATH)")
        return StorageLocation(given, "journal", path=Path(path))
    if "://" not in given:
        path = Path(given)
        if path.suffix in JOURNAL_SUFFIXES:
            return StorageLocation(given, "journal", path=path)
        if path.suffix in SQLITE_SUFFIXES:
            return StorageLocation(given, "sqlite", rdb_url=f"sqlite:///{given}", path=path)
        raise _error(
            given,
            "it is neither a URL with a scheme (such as sqlite:///) nor a file "
            "path with a known suffix",
        )
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(given)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise _error(given, f"the URL is malformed ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            return StorageLocation(given, "memory", rdb_url=given)
        return StorageLocation(given, "sqlite", rdb_url=given, path=Path(database))
    if backend in SERVER_BACKENDS:
        return StorageLocation(given, "server", rdb_url=given, backend=backend)
    raise _error(given, f"the scheme {parsed.drivername!r} is not supported")


def _reason(exc: BaseException) -> str:
    """The first line of the cause, without SQLAlchemy's statement and background link."""
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        text = f"{type(exc.orig).__name__}: {exc.orig}"
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage at ``url`` (default
    ``sqlite:///sigmatune.db``).

    For SQLite and database servers, ``heartbeat_interval`` (None: no heartbeats) and
    ``grace_period`` in seconds make a trial whose process died stale, and
    ``RetryHeartbeatStaleTrialCallback(max_retry)`` re-queues it. Raises :class:`StorageError`.
    """
    loc = parse_storage_url(url)
    if loc.kind == "journal":
        _check_parent(loc)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        existed = loc.path.exists()
        try:
            return JournalStorage(JournalFileBackend(str(loc.path)))
        except Exception as exc:
            _remove_if_created(loc.path, existed)
            raise _error(loc.url, _reason(exc)) from exc

    engine_kwargs: dict[str, Any] = {}
    if loc.kind == "sqlite":
        _check_parent(loc)
    if loc.kind in ("sqlite", "memory"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_LOCK_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": SERVER_CONNECT_TIMEOUT_S}
    existed = loc.path.exists() if loc.path is not None else True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat: dict[str, Any] = {}
            if heartbeat_interval is not None:
                heartbeat = {
                    "heartbeat_interval": int(heartbeat_interval),
                    "grace_period": None if grace_period is None else int(grace_period),
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                    ),
                }
            return _create_rdb(loc.rdb_url, engine_kwargs, heartbeat)
    except ImportError as exc:
        raise _error(
            loc.url,
            f"the database driver is not installed ({_reason(exc.__cause__ or exc)}); install "
            "one, e.g. pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)",
        ) from exc
    except Exception as exc:
        if loc.path is not None:
            _remove_if_created(loc.path, existed)
        what = _reason(exc)
        if "no longer compatible" in what or "storage upgrade" in str(exc):
            what += " (upgrade it with `optuna storage upgrade --storage URL`)"
        raise _error(loc.url, what) from exc


SCHEMA_RACE_RETRIES = 5


def _create_rdb(
    rdb_url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """RDBStorage, retried when another process creates the same new database's tables at
    the same moment (the loser sees "table ... already exists" or a unique-constraint error
    on the schema version)."""
    import time

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            return optuna.storages.RDBStorage(rdb_url, engine_kwargs=engine_kwargs, **heartbeat)
        except (IntegrityError, OperationalError) as exc:
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


def check_storage_exists(url: str | None = None) -> None:
    """For commands that read a study (status, export, dashboard): a SQLite or journal file
    that does not exist is a :class:`StorageError`, and nothing is created. Server URLs are
    checked when opened."""
    loc = parse_storage_url(url)
    if loc.kind == "memory":
        raise StorageError(
            f"storage {loc.url!r} is an in-memory database, which holds no saved study; "
            "give the storage URL a study was run with (e.g. sqlite:///sigmatune.db)"
        )
    if loc.path is not None and not loc.path.is_file():
        raise StorageError(
            f"no study database at {str(loc.path)!r} (storage {loc.url!r}): the file does not "
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
            f"cannot create the artifact folder {str(path)!r} for storage {url!r}: {exc}"
        ) from exc
    return optuna.artifacts.FileSystemArtifactStore(path), path
