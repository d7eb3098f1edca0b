"""Errors a user can fix, which the CLI prints as one paragraph without a traceback."""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna

from sigmatune.study.urls import StorageError


class ConfigError(ValueError):
    """A config that cannot be used; ``errors`` holds one line per fault (``study.config``
    raises it; it lives here so that the command line can catch it without importing the
    config's registries, and with them torch)."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors) or [message]


# errno values of a full disk (ENOSPC) or a spent quota (EDQUOT): every later write fails too.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
# PostgreSQL's SQLSTATE disk_full (a server's full disk reaches the client as this code).
POSTGRES_DISK_FULL = "53100"


class WriteError(OSError):
    """An output file could not be written (full disk, no permission, a name too long); the
    message names the file and says whether a previous one is unchanged."""


class DenoiserError(ValueError):
    """A user's denoiser failed: its ``module:function`` raised, or ``D(x, sigma)`` raised,
    returned no tensor, a tensor of another shape or on another device, or non-finite values.
    The message names the denoiser, the call and the shapes."""


def out_of_space(exc: BaseException | None) -> BaseException | None:
    """The exception in ``exc``'s chain (causes and contexts) that says a disk is full: an
    ``OSError`` with ENOSPC or EDQUOT, SQLite's "database or disk is full", PostgreSQL's
    disk_full; None when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE:
            return exc
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(exc)
        ):
            return exc
        if POSTGRES_DISK_FULL in (getattr(exc, "sqlstate", None), getattr(exc, "pgcode", None)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace collapsed), at most ``limit`` characters: a
    user's exception quoted inside a paragraph."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _user_errors() -> tuple[type[BaseException], ...]:

    return (ConfigError, StorageError, WriteError, ValueError, FileNotFoundError, ImportError)


USER_ERRORS = _user_errors()


def quiet_optuna() -> None:
    """sigmatune prints its own line per trial (a failed one with its reason, which is also
    stored in the trial's user attrs), so Optuna's per-trial log and tracebacks are noise."""

    logging.getLogger("optuna").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextlib.contextmanager
def quiet_full_disk_in_threads() -> Iterator[None]:
    """A background thread that meets a full disk (Optuna's heartbeat, writing to a database
    on that disk) ends without a traceback: the command meets the same full disk and says so
    in one paragraph. Other errors of threads are printed as before."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if args.exc_value is not None and out_of_space(args.exc_value) is not None:
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def run_command(command: Callable[[], int], interrupted: str) -> int:
    """Run a command as the CLI does: a user's error, or a full disk met anywhere, is one
    paragraph on stderr (exit 2), Ctrl-C says ``interrupted`` (exit 130)."""
    quiet_optuna()
    try:
        with quiet_full_disk_in_threads():
            return int(command())
    except USER_ERRORS as exc:
        print(f"sigmatune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sigmatune: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk wherever it was met (the commands name most)
        full = out_of_space(exc)
        if full is None:
            raise
        print(
            f"sigmatune: error: a disk is full ({one_line(full)}); free space on it and run "
            "the same command again",
            file=sys.stderr,
        )
        return 2
