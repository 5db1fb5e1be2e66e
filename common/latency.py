"""Recent latencies of a backend, summarised as a quantile (pure; no clock).

The data path derives two timers from them: the hedge delay of unary calls (a backend's recent p95)
and the stall time of streams (a multiple of the recent p99 wait for progress). Both are clamped by
a floor and a ceiling from the settings, and fall back to the ceiling until enough samples exist.
"""

from __future__ import annotations

import math


class RecentQuantile:
    """The `q` quantile of the last `size` samples, recomputed every `refresh` new samples."""

    def __init__(self, q: float, size: int = 256, min_samples: int = 20, refresh: int = 16) -> None:
        self._q = q
        self._samples: list[float] = []
        self._size = size
        self._next = 0
        self._min = min_samples
        self._refresh = refresh
        self._since = 0
        self._value: float | None = None

    def add(self, x: float) -> None:
        if len(self._samples) < self._size:
            self._samples.append(x)
        else:
            self._samples[self._next] = x
            self._next = (self._next + 1) % self._size
        self._since += 1
        if len(self._samples) >= self._min and (self._value is None or self._since >= self._refresh):
            ordered = sorted(self._samples)
            self._value = ordered[min(len(ordered) - 1, math.ceil(self._q * len(ordered)) - 1)]
            self._since = 0

    def value(self) -> float | None:
        """The quantile, or None while there are fewer than `min_samples` samples."""
        return self._value


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
