"""Errors a user can fix, which the CLI prints as one paragraph without a traceback."""

from __future__ import annotations


class WriteError(OSError):
    """An output file could not be written (full disk, no permission, a name too long); the
    message names the file and says whether a previous one is unchanged."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from sigmatune.study.config import ConfigError
    from sigmatune.study.storage import StorageError

    return (ConfigError, StorageError, WriteError, ValueError, FileNotFoundError, ImportError)


USER_ERRORS = _user_errors()
