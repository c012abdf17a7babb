"""Progress reporting for loops over images (``evaluate``, ``predict``, ``demo``).

On a terminal this is a tqdm bar, as before. When the stream is not a terminal (a log file, a
pipe, CI), a bar would write one ``\\r`` redraw per update into the log; there the progress is a
plain line instead, written when another tenth of the work is done or ``interval_s`` seconds
have passed since the last line, and once at the end::

    evaluate: 40/400 img (10 %), 12.1 s, 3.31 img/s
"""

from __future__ import annotations

import sys
import time
from typing import IO


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Plain-line progress for logs: at most ~11 lines plus one per ``interval_s`` of run time."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        stream: IO[str] | None = None,
        interval_s: float = 10.0,
        steps: int = 10,
    ):
        self.total = int(total) if total is not None else None
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s, self.steps = float(interval_s), max(1, int(steps))
        self.n = 0
        self._start = self._last_time = time.monotonic()
        self._last_step = 0  # tenths of the total reported so far
        self._last_n = 0  # n at the last line written
        self._closed = False

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        rate = f", {self.n / elapsed:.2f} {self.unit}/s" if elapsed > 0 and self.n else ""
        if self.total:
            count = f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total} %)"
        else:
            count = f"{self.n} {self.unit}"
        print(f"{self.desc}: {count}, {elapsed:.1f} s{rate}", file=self.stream, flush=True)
        self._last_time, self._last_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        if self._closed:
            return
        self.n += n
        step = self.n * self.steps // self.total if self.total else 0
        if step > self._last_step:
            self._last_step = step
            self._line()
        elif time.monotonic() - self._last_time >= self.interval_s:
            self._line()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._last_n or self.n == 0:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "img",
    enabled: bool = True,
    stream: IO[str] | None = None,
    interval_s: float = 10.0,
):
    """A progress reporter with ``update(n)`` and ``close()`` (also a context manager).

    ``enabled=False``: reports nothing. ``stream`` (default: ``sys.stderr`` at call time) a terminal:
    a tqdm bar that is cleared when done (interactive use as before). Otherwise: :class:`LineProgress`.
    """
    if not enabled:
        return _NoProgress()
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False)
    return LineProgress(total, desc, unit=unit, stream=stream, interval_s=interval_s)
