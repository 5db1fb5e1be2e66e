"""A one-line progress display on a terminal: how many, how fast, and how long is left when the total is known."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Counts `unit`s and redraws one line on `out` (at most 10 times a second); `clear` before other output."""

    def __init__(self, unit: str, total: int | None, out: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unit = unit
        self.total = total
        self.count = 0
        self._out = out
        self._clock = clock
        self._start = clock()
        self._drawn = float("-inf")

    def line(self) -> str:
        """`  37/120 images  12.3/s  ETA 7 s` (no total: no ETA)."""
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.count / elapsed
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        text = f"{done} {self.unit}  {rate:.1f}/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f"  ETA {(self.total - self.count) / rate:.0f} s"
        return text

    def step(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if now - self._drawn >= 0.1 or self.count == self.total:
            self._drawn = now
            self._out.write("\r\x1b[K" + self.line())
            self._out.flush()

    def clear(self) -> None:
        self._out.write("\r\x1b[K")
        self._out.flush()
        self._drawn = float("-inf")

    def done(self) -> None:
        self._out.write("\r\x1b[K" + self.line() + "\n")
        self._out.flush()
