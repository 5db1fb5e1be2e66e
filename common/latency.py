"""Recent latencies of a backend, summarised as a quantile (pure; no clock).

The data path derives two timers from them: the hedge delay of unary calls (a backend's recent p95)
and the stall time of streams (a multiple of the recent p99 wait for progress). Both are clamped by
a floor and a ceiling from the settings, and fall back to the ceiling until enough samples exist.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort


class RecentQuantile:
    """The `q` quantile of the last `size` samples, exact and current after every sample.

    The samples are kept twice: in arrival order (to know which one leaves) and sorted (so the
    quantile is an index). A sample costs two binary searches and two short moves of a list of
    `size` floats, about 0.3 us at 256: it is added once per answered frame.
    """

    def __init__(self, q: float, size: int = 256, min_samples: int = 20) -> None:
        if not 0.0 < q <= 1.0 or size < 1 or min_samples < 1:
            raise ValueError("RecentQuantile needs 0 < q <= 1, size >= 1 and min_samples >= 1")
        self._q = q
        self._arrived: list[float] = []
        self._sorted: list[float] = []
        self._size = size
        self._next = 0
        self._min = min_samples

    def add(self, x: float) -> None:
        arrived, ordered = self._arrived, self._sorted
        if len(arrived) < self._size:
            arrived.append(x)
        else:
            del ordered[bisect_left(ordered, arrived[self._next])]
            arrived[self._next] = x
            self._next = (self._next + 1) % self._size
        insort(ordered, x)

    def value(self) -> float | None:
        """The quantile, or None while there are fewer than `min_samples` samples."""
        n = len(self._sorted)
        if n < self._min:
            return None
        return self._sorted[min(n - 1, math.ceil(self._q * n) - 1)]

    def estimate(self) -> float | None:
        """The quantile; with fewer than `min_samples` samples, the largest so far (a cautious guess at
        a high quantile); None with none."""
        n = len(self._sorted)
        if n >= self._min:
            return self._sorted[min(n - 1, math.ceil(self._q * n) - 1)]
        return self._sorted[-1] if n else None


def clamped(value: float | None, floor: float, ceiling: float, scale: float = 1.0) -> float:
    """`value * scale` within [floor, ceiling]; the ceiling when nothing is known yet."""
    if value is None:
        return ceiling
    return min(ceiling, max(floor, value * scale))


class BackendTimers:
    """A backend's hedge delay and stall time, learned from its recent answers."""

    def __init__(self, hedge_quantile: float, hedge_bounds: tuple[float, float],
                 stall_multiplier: float, stall_bounds: tuple[float, float]) -> None:
        self._unary = RecentQuantile(hedge_quantile)
        self._progress = RecentQuantile(0.99)
        self._hedge_bounds = hedge_bounds
        self._stall = (stall_multiplier, stall_bounds)
        self._hedge_s = hedge_bounds[1]
        self._stall_s = stall_bounds[1]

    def unary_answered(self, seconds: float) -> None:
        self._unary.add(seconds)
        self._hedge_s = clamped(self._unary.value(), *self._hedge_bounds)

    def stream_progress(self, waited_s: float) -> None:
        """A stream leg waited this long for its next answer."""
        self._progress.add(waited_s)
        scale, bounds = self._stall
        self._stall_s = clamped(self._progress.value(), *bounds, scale=scale)

    def hedge_delay_s(self) -> float:
        return self._hedge_s

    def stall_s(self) -> float:
        return self._stall_s


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
