"""The retry budget: hedges and retries together stay a bounded share of the calls (pure; time passed in).

A hung or overloaded fleet must not be hit by a storm of extra attempts: every hedge and retry spends
from a budget that refills with traffic, `ratio` extra attempts per call over a sliding window, plus
a floor of `min_per_s` so that a quiet router can still retry (Finagle's RetryBudget has the same
shape; gRPC's retry throttling is a token bucket with a similar intent).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetConfig:
    """How much extra traffic hedges and retries may add."""

    ratio: float = 0.1          # at most 10 % extra attempts over the window ...
    min_per_s: float = 3.0      # ... but always this many per second, so a quiet router can retry
    window_s: float = 10.0


class RetryBudget:
    """Counts calls and extra attempts in `buckets` slices of a sliding window."""

    def __init__(self, cfg: BudgetConfig, buckets: int = 10) -> None:
        self._cfg = cfg
        self._width = cfg.window_s / buckets
        self._calls = [0] * buckets
        self._extra = [0] * buckets
        self._slice = [-1] * buckets   # which time slice each bucket holds now
        self.refused = 0

    def _bucket(self, now: float) -> int:
        n = int(now // self._width)
        i = n % len(self._calls)
        if self._slice[i] != n:        # an old slice: the window has moved past it
            self._slice[i] = n
            self._calls[i] = 0
            self._extra[i] = 0
        return i

    def _current(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._width) - len(self._calls) + 1
        calls = extra = 0
        for i, s in enumerate(self._slice):
            if s >= oldest:
                calls += self._calls[i]
                extra += self._extra[i]
        return calls, extra

    def note_call(self, now: float) -> None:
        """A new client call (the base the ratio applies to)."""
        self._calls[self._bucket(now)] += 1

    def allowance(self, now: float) -> float:
        """Extra attempts still allowed in the window now."""
        calls, extra = self._current(now)
        return self._cfg.ratio * calls + self._cfg.min_per_s * self._cfg.window_s - extra

    def try_spend(self, now: float) -> bool:
        """Take one extra attempt from the budget; False (and counted as refused) when it is spent."""
        if self.allowance(now) < 1:
            self.refused += 1
            return False
        self._extra[self._bucket(now)] += 1
        return True
