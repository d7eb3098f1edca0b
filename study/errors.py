"""Errors a user can fix, which the CLI prints as one paragraph without a traceback."""

from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from sigmatune.study.config import ConfigError
    from sigmatune.study.storage import StorageError

    return (ConfigError, StorageError, ValueError, FileNotFoundError, ImportError)


USER_ERRORS = _user_errors()
