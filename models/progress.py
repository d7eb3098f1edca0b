"""Progress for terminals and for logs: a tqdm bar on a terminal, a plain line now and then.

A tqdm bar redraws itself with carriage returns several times a second; written to a file or a
pipe, a toy study's bars filled 38 KB of log. :class:`Progress` asks its stream whether it is a
terminal: if so it is a tqdm bar, else it writes one short line when it starts, at most one line
every ``min_interval_s`` seconds, and one when it closes::

    train: 0/25,600 img (0%)
    train: 9,728/25,600 img (38%), 00:30, 324 img/s, loss=0.4211
    train: 25,600/25,600 img (100%), 01:19, 324 img/s, loss=0.3962
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """Progress of ``total`` units, labelled ``desc``; a context manager that closes itself.

    Args:
        total: units of the whole task.
        desc: the label that starts every line (the bar's description on a terminal).
        initial: units already done (a resumed task).
        unit: the unit's name (``"img"`` for training images).
        enabled: False: nothing is written at all.
        stream: where to write; default: ``sys.stderr`` at the time of the call.
        min_interval_s: in a log, at least this many seconds between two lines.
        leave: on a terminal, keep the finished bar (tqdm's ``leave``).
        clock: seconds, monotonic (a test passes its own).

    Use ``update(n)`` (n more units), ``set_postfix(loss=...)`` (shown on the bar, or in the
    next line) and ``close()``; ``n`` is the units done so far.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        initial: int = 0,
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval_s: float = 30.0,
        leave: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, but got {min_interval_s=}")
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._initial = initial
        self._stream = stream if stream is not None else sys.stderr
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._postfix: dict[str, Any] = {}
        self._closed = not enabled
        self._bar: tqdm | None = None
        if not enabled:
            return
        if _is_terminal(self._stream):
            self._bar = tqdm(
                total=total,
                initial=initial,
                unit=unit,
                unit_scale=True,
                desc=desc,
                dynamic_ncols=True,
                leave=leave,
                file=self._stream,
            )
        else:
            self._started = clock()
            self._write_line(self._started)

    def update(self, n: int = 1) -> None:
        """``n`` more units done; in a log, a line if ``min_interval_s`` has passed."""
        self.n += n
        if self._closed:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self._min_interval_s:
            self._write_line(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (on the bar now, or in the next line of a log)."""
        self._postfix = values
        if self._bar is not None and not self._closed:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        """The final line (or the bar's final state); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._write_line(self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_line(self, now: float) -> None:
        """``desc: n/total unit (pct%)[, elapsed, rate][, postfix]`` and a newline."""
        self._last_line = now
        parts = [f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}"]
        if self.total > 0:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = now - self._started
        if elapsed > 0:
            parts.append(tqdm.format_interval(elapsed))
            rate = (self.n - self._initial) / elapsed
            parts.append(
                f"{rate:,.0f} {self.unit}/s" if rate >= 100 else f"{rate:.3g} {self.unit}/s"
            )
        parts += [f"{key}={value}" for key, value in self._postfix.items()]
        self._stream.write(", ".join(parts) + "\n")
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False
