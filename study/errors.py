"""Errors a user can fix, which the CLI prints as one paragraph without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class WriteError(OSError):
    """An output file could not be written (full disk, no permission, a name too long); the
    message names the file and says whether a previous one is unchanged."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from sigmatune.study.config import ConfigError
    from sigmatune.study.storage import StorageError

    return (ConfigError, StorageError, WriteError, ValueError, FileNotFoundError, ImportError)


USER_ERRORS = _user_errors()


def quiet_optuna() -> None:
    """sigmatune prints its own line per trial (a failed one with its reason, which is also
    stored in the trial's user attrs), so Optuna's per-trial log and tracebacks are noise."""
    import logging
    import warnings

    import optuna

    logging.getLogger("optuna").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_command(command: Callable[[], int], interrupted: str) -> int:
    """Run a command as the CLI does: a user's error is one paragraph on stderr (exit 2),
    Ctrl-C says ``interrupted`` (exit 130)."""
    quiet_optuna()
    try:
        return int(command())
    except USER_ERRORS as exc:
        print(f"sigmatune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sigmatune: {interrupted}", file=sys.stderr)
        return 130
