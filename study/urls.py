"""Where a study lives, as text: storage URLs and artifact-store URLs, parsed and redacted.

Nothing here opens a file or a connection; :mod:`sigmatune.study.storage` and
:mod:`sigmatune.study.artifacts` open what these functions classify, and
:mod:`sigmatune.study.config` checks a config's URLs with them when it loads. Errors are
:class:`StorageError`: one paragraph naming the URL (its password replaced by ``***``), the
fault and the accepted forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy.engine
import sqlalchemy.exc

DEFAULT_STORAGE_URL = "sqlite:///sigmatune.db"


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


JOURNAL_SUFFIXES = (".log", ".jsonl")


SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")


DEFAULT_GRPC_PORT = 13000  # Optuna's default for run_grpc_proxy_server


ACCEPTED = (
    "accepted storage URLs: sqlite:///PATH.db (default sqlite:///sigmatune.db) or a PATH ending "
    ".db/.sqlite/.sqlite3; journal:PATH or a PATH ending .log/.jsonl (an Optuna journal file); "
    "postgresql+psycopg://USER:PASSWORD@HOST[:PORT]/DATABASE; "
    "mysql+pymysql://USER:PASSWORD@HOST/DATABASE; grpc://HOST:PORT (sigmatune storage-proxy)"
)


class StorageError(RuntimeError):
    """A storage URL that is malformed, unsupported or cannot be opened."""


@dataclass(frozen=True)
class StorageLocation:
    """What a storage URL points at: ``kind`` is sqlite, memory, journal, server or grpc."""

    url: str  # the URL given (the default filled in; with its password: never print it)
    kind: str
    rdb_url: str | None = None  # the SQLAlchemy URL for sqlite / memory / server
    path: Path | None = None  # the file for sqlite / journal
    backend: str | None = None  # SQLAlchemy backend name for server
    host: str | None = None  # the proxy's host for grpc
    port: int | None = None  # the proxy's port for grpc


def _userinfo_end(rest: str) -> int:
    """Where the ``user:password`` part of a URL's remainder (after ``scheme://``) ends: the
    index of its last ``@``, or -1 when there is none or the remainder starts with ``/`` (no
    host part). The last ``@``, so that a password with unescaped reserved characters is
    hidden whole (at worst, more than the password is hidden, never less)."""
    if not rest or rest.startswith("/"):
        return -1
    return rest.rfind("@")


def redact_url(url: str) -> str:
    """The storage URL with its password replaced by ``***`` (for messages, reports and
    what a study stores); everything between the user name and the host is hidden, also a
    password with reserved characters that were not percent-encoded."""
    url = str(url)
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    end = _userinfo_end(rest)
    if end < 0:
        return url
    userinfo = rest[:end]
    if ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{rest[end + 1 :]}"


def _password(url: str) -> str | None:
    url = str(url)
    if "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    end = _userinfo_end(rest)
    userinfo = rest[:end] if end >= 0 else ""
    return userinfo.split(":", 1)[1] if ":" in userinfo else None


def _error(url: str, what: str, *, accepted: bool = True) -> StorageError:
    """One paragraph naming the (redacted) URL and the fault; ``accepted``: list the URL
    forms too (for a URL that is wrong, not for a server that could not be reached)."""
    what = " ".join(str(what).split())  # one paragraph
    secret = _password(url)
    if secret:  # a driver's message could quote it
        what = what.replace(str(secret), "***")
    tail = f" {ACCEPTED}." if accepted else ""
    return StorageError(f"cannot use storage {redact_url(url)!r}: {what}.{tail}")


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
    if given.startswith("grpc://"):
        return _parse_grpc(given)
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
    rest = given.split("://", 1)[1]
    end = _userinfo_end(rest)
    if end >= 0 and any(c in rest[:end] for c in "@/?#"):
        raise _error(
            given,
            "the user name or password holds a character that a URL reserves (@ / ? #) "
            "without percent-encoding, so where the host starts cannot be told; write them "
            "percent-encoded (@ as %40, / as %2F, ? as %3F, # as %23, : as %3A, % as %25), "
            "e.g. with Python's urllib.parse.quote(password, safe='')",
            accepted=False,
        )
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


def _parse_grpc(url: str) -> StorageLocation:
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_GRPC_PORT
    except ValueError:
        raise _error(url, "the port must be a number from 1 to 65535") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise _error(url, "a gRPC proxy URL is grpc://HOST:PORT, nothing more")
    return StorageLocation(url, "grpc", host=parts.hostname, port=port)


def grpc_target(host: str) -> str:
    """``host`` as gRPC writes it before ``:PORT`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


ARTIFACT_ACCEPTED = (
    'accepted: "" (the artifact folder is the store: a folder every worker mounts), '
    '"s3://BUCKET" or "s3://BUCKET/PREFIX" (Optuna\'s Boto3ArtifactStore; credentials from '
    'the usual AWS settings), "file:///ABSOLUTE/PATH" (a folder used as a bucket)'
)


def _url_error(url: str, what: str) -> StorageError:
    return StorageError(f"cannot use the artifact store {url!r}: {what}; {ARTIFACT_ACCEPTED}")


def parse_artifact_store_url(url: str) -> tuple[str, str, str]:
    """``(kind, where, prefix)`` of an ``artifact_store`` value, without touching anything:
    ``("folder", "", "")`` for ``""``, ``("s3", BUCKET, PREFIX)``, ``("file", PATH, "")``."""
    text = str(url).strip()
    if not text:
        return "folder", "", ""
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise _url_error(text, "it has a query or fragment")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise _url_error(text, "s3:// needs a bucket name (s3://BUCKET/PREFIX)")
        return "s3", parts.netloc, parts.path.strip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _url_error(text, "file:// needs an absolute path (file:///PATH)")
        return "file", parts.path, ""
    raise _url_error(text, f"the scheme {parts.scheme or '(none)'!r} is not supported")
