"""How late the asyncio event loop runs what is due: the one figure that shows a frozen process.

Every task of a process (health answers included) waits behind whatever holds the loop: a wait that
spins, a long computation on the loop thread, a thread that keeps the GIL. `LoopLagMonitor` asks the
loop to wake it every `interval_s` and records how late it woke, as a histogram
(`eagleeye_<service>_event_loop_lag_seconds`); a lag at or over `warn_s` is also logged as an
`event loop lag` line (at most one a second, with the worst lag, the loop thread's CPU time meanwhile
and how many were over), which is what the test suite looks for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import metrics

from eagleeye.common.logs import event

log = logging.getLogger("eagleeye.loop")

# Ten probes a second: a lag of a tenth of a second is what a person notices in a health probe, and a
# probe is a few microseconds of loop time.
INTERVAL_S = 0.1
# Over this, a line in the log: a health Check answered this late is close to a kubelet's 1 s timeout.
WARN_S = 0.1
REPORT_EVERY_S = 1.0


@dataclass(frozen=True)
class Lag:
    """One late wake-up: how late, and how much CPU the loop's own thread used meanwhile.

    `cpu_s` tells the two causes apart: close to the whole wait, the loop itself was running (a spin,
    a long computation on it, too many callbacks); small, the thread was not running at all (the
    machine had no core for it, or another thread of the process held the GIL).
    """

    lag_s: float
    cpu_s: float
    count: int = 1


class LagReport:
    """Lags at or over a threshold, folded into at most one report per `every_s` (pure; time passed in)."""

    def __init__(self, warn_s: float, every_s: float = REPORT_EVERY_S) -> None:
        self._warn_s = warn_s
        self._every_s = every_s
        self._worst: Lag | None = None
        self._count = 0
        self._last_report = float("-inf")

    def add(self, lag: Lag, now: float) -> Lag | None:
        """Record one lag; returns the worst since the last report, with how many, when one is due."""
        if lag.lag_s >= self._warn_s:
            if self._worst is None or lag.lag_s > self._worst.lag_s:
                self._worst = lag
            self._count += 1
        if self._worst is not None and now - self._last_report >= self._every_s:
            report = Lag(self._worst.lag_s, self._worst.cpu_s, self._count)
            self._worst, self._count, self._last_report = None, 0, now
            return report
        return None


class LoopLagMonitor:
    """A task measuring the running loop's lag until it is cancelled."""

    def __init__(self, service: str, meter: metrics.Meter, interval_s: float = INTERVAL_S,
                 warn_s: float = WARN_S, clock: Callable[[], float] = time.monotonic,
                 on_wake: Callable[[float, float], None] | None = None) -> None:
        self._histogram = meter.create_histogram(
            f"eagleeye_{service}_event_loop_lag", unit="s",
            description="How late the event loop ran a timer that was due (every 0.1 s)")
        self._interval_s = interval_s
        self._report = LagReport(warn_s)
        self._clock = clock
        self._on_wake = on_wake  # (due, now) at every wake: who else wants to know the loop was behind
        self._task: asyncio.Task[None] | None = None
        self.warn = True

    def start(self, warn: bool = True) -> None:
        """Measure from now on; log lags only once `warn` is true (a worker sets it when its model is
        ready: importing torch and loading a model hold the GIL for stretches, and that is start-up)."""
        self.warn = warn
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            due = self._clock() + self._interval_s
            cpu = time.thread_time()
            await asyncio.sleep(self._interval_s)  # the probe itself: its lateness is the measurement
            now = self._clock()
            if self._on_wake is not None:
                self._on_wake(due, now)
            lag = Lag(max(0.0, now - due), time.thread_time() - cpu)
            self._histogram.record(lag.lag_s)
            report = self._report.add(lag, now) if self.warn else None
            if report is not None:
                event(log, "event loop lag", logging.WARNING, lag_ms=round(report.lag_s * 1000, 1),
                      loop_cpu_ms=round(report.cpu_s * 1000, 1), count=report.count)
