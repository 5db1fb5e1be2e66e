"""When a process's own event loop ran behind: time that is no evidence against a peer.

A timer that fires late says the loop was busy meanwhile (a burst of new calls to set up, a large
message being copied, a host short of CPU): an answer that arrived then waited unread. The router
(its Checks, stream stall timers and per-try timeouts) and the client library (its stream watchdog)
subtract that time before they call a worker silent. Pure: times are passed in.
"""

from __future__ import annotations

import bisect

# A timer this late means the process's own loop was behind: no peer is judged silent for that time.
# Above a busy host's usual jitter, well below the 0.2 s stall floor.
BEHIND_S = 0.02
# How long spans of running behind are kept: longer than any stall time or per-try timeout.
BEHIND_KEPT_S = 120.0


class LoopBehind:
    """Spans of time a process's loop ran behind itself, merged: answers that arrived then waited
    unread, so that time is no evidence that a peer was silent (pure; times passed in). `after` is
    asked on every stream check: a bisection over the spans' ends and running totals."""

    MAX_SPANS = 1024

    def __init__(self) -> None:
        self._starts: list[float] = []  # disjoint spans, in order
        self._ends: list[float] = []
        self._before: list[float] = []  # seconds behind before each span, from the first one kept
        self._total = 0.0

    def woke(self, due: float, now: float) -> None:
        """A timer due at `due` ran at `now`: at least BEHIND_S late, the loop was behind meanwhile."""
        if now - due < BEHIND_S:
            return
        start, end = due, now
        while self._ends and self._ends[-1] >= start:  # overlaps the last span(s): merge
            start, end = min(start, self._starts.pop()), max(end, self._ends.pop())
            self._total = self._before.pop()
        self._starts.append(start)
        self._ends.append(end)
        self._before.append(self._total)
        self._total += end - start
        drop = 0
        while drop < len(self._ends) - 1 and (self._ends[drop] < now - BEHIND_KEPT_S
                                              or len(self._ends) - drop > self.MAX_SPANS):
            drop += 1
        if drop:
            del self._starts[:drop], self._ends[:drop], self._before[:drop]

    def after(self, t: float) -> float:
        """Seconds the loop was behind since `t`."""
        i = bisect.bisect_right(self._ends, t)
        if i == len(self._ends):
            return 0.0
        start, end, before = self._starts[i], self._ends[i], self._before[i]
        return (end - max(start, t)) + (self._total - before - (end - start))
