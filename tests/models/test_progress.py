from __future__ import annotations

import io

import pytest

from sigmatune.models.progress import Progress


class FakeClock:
    """Seconds that advance only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_a_start_line_one_line_per_interval_and_a_final_line():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(25_600, "train", unit="img", stream=stream, clock=clock) as bar:
        for step in range(1, 101):  # 100 s, one step a second, 256 images a step
            clock.now += 1.0
            bar.set_postfix(loss=f"{1 / step:.4g}")
            bar.update(256)
    lines = stream.getvalue().splitlines()
    # start, then after 30 s, 60 s and 90 s (min_interval_s=30), and the final line at 100 s
    assert lines == [
        "train: 0/25,600 img (0%)",
        "train: 7,680/25,600 img (30%), 00:30, 256 img/s, loss=0.03333",
        "train: 15,360/25,600 img (60%), 01:00, 256 img/s, loss=0.01667",
        "train: 23,040/25,600 img (90%), 01:30, 256 img/s, loss=0.01111",
        "train: 25,600/25,600 img (100%), 01:40, 256 img/s, loss=0.01",
    ]
    assert "\r" not in stream.getvalue()


def test_fast_task_in_a_log_writes_two_short_lines():
    stream = io.StringIO()
    with Progress(100_000, "fast", stream=stream) as bar:
        for _ in range(100_000):
            bar.update(1)
    text = stream.getvalue()
    assert len(text.splitlines()) == 2 and len(text) < 120 and "\r" not in text
    assert text.splitlines()[-1].startswith("fast: 100,000/100,000 it (100%)")


def test_resumed_task_counts_its_rate_from_where_it_started():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(100, "resumed", initial=60, stream=stream, clock=clock) as bar:
        for _ in range(4):
            clock.now += 2.0
            bar.update(10)
    assert stream.getvalue().splitlines() == [
        "resumed: 60/100 it (60%)",
        "resumed: 100/100 it (100%), 00:08, 5 it/s",
    ]


@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_disabled_progress_writes_nothing(stream_type):
    stream = stream_type()
    with Progress(10, "quiet", enabled=False, stream=stream) as bar:
        bar.update(5)
        bar.set_postfix(loss=1.0)
        bar.update(5)
    assert stream.getvalue() == "" and bar.n == 10


def test_terminal_gets_a_tqdm_bar():
    stream = Terminal()
    with Progress(10, "bar", stream=stream) as bar:
        for _ in range(10):
            bar.update(1)
    text = stream.getvalue()
    assert "\r" in text and "bar: 100%|" in text


def test_an_error_inside_still_writes_the_final_line_once():
    stream, clock = io.StringIO(), FakeClock()
    with pytest.raises(KeyError):
        with Progress(10, "broken", stream=stream, clock=clock) as bar:
            clock.now = 4.0
            bar.update(3)
            raise KeyError("x")
    bar.close()
    bar.update(1)
    assert stream.getvalue().splitlines() == [
        "broken: 0/10 it (0%)",
        "broken: 3/10 it (30%), 00:04, 0.75 it/s",
    ]


def test_negative_interval_is_refused():
    with pytest.raises(ValueError, match="min_interval_s must be >= 0, but got min_interval_s=-1"):
        Progress(10, "x", stream=io.StringIO(), min_interval_s=-1)
