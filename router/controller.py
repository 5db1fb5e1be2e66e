"""The router's shell around the policy: feeds it the watchers' views, applies its decisions.

It owns the current weights (read by the proxy on every call), the router's own health statuses,
and the switch events that observers (log, admin stream, counters) receive.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from opentelemetry import metrics

from eagleeye.common.aio import wait_event
from eagleeye.common.logs import event
from eagleeye.common.names import LIVENESS, READINESS_NAMES, REDUNDANCY
from eagleeye.router.fleet import Backend
from eagleeye.router.latency import BackendTimers
from eagleeye.router.metrics import RouterMetrics
from eagleeye.router.policy import Decision, Policy, PolicyConfig, State, Transition
from eagleeye.router.watcher import BackendWatcher

log = logging.getLogger("eagleeye.router")

TICK_S = 0.1          # the ramp advances in steps this fine
LATENCY_WINDOW_S = 5.0  # "latency before/after" a switch: medians over this long


@dataclass(frozen=True)
class SwitchEvent:
    """A transition as observers see it, with the latency around it."""

    time_unix: float
    from_state: str
    to_state: str
    reason: str
    detection_ms: float | None
    primary_weight: float
    standby_weight: float
    latency_before_ms: float | None
    latency_after_ms: float | None = None


class LatencyLog:
    """Recent call latencies with their times, for medians over a window."""

    def __init__(self, keep_s: float = 60.0) -> None:
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=20_000)
        self._keep_s = keep_s

    def add(self, at: float, ms: float) -> None:
        self._samples.append((at, ms))

    def median(self, start: float, end: float) -> float | None:
        values = sorted(ms for at, ms in self._samples if start <= at < end)
        return values[len(values) // 2] if values else None


class Controller:
    """Policy + watchers + observers; to the data path, the Fleet it asks about backends."""

    def __init__(self, policy_cfg: PolicyConfig, watchers: dict[Backend, BackendWatcher],
                 health: health_aio.HealthServicer, timers: dict[Backend, BackendTimers],
                 meter: metrics.Meter | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self._policy = Policy(policy_cfg)
        self.watchers = watchers
        self.timers = timers
        self._health = health
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self.decision = Decision(State.BOTH_DOWN, 0.0, 0.0)
        self.events: collections.deque[SwitchEvent] = collections.deque(maxlen=100)
        self._subscribers: set[asyncio.Queue[SwitchEvent]] = set()
        self._published: dict[str, bool] = {}
        self.latency = LatencyLog()
        self.switches: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.hedges = 0
        self.stream_migrations = 0
        self.replayed_frames = 0
        self.active_streams = 0       # client DetectStreams open now (the proxy counts them)
        self._progress_at = dict.fromkeys(Backend, float("-inf"))  # last answer of any kind, per backend
        self._dirty = asyncio.Event()
        self._decision_listeners: list[Callable[[], None]] = []
        self.metrics = RouterMetrics(
            meter or metrics.NoOpMeter("eagleeye"),
            weights=lambda: {b.value: self.weight(b) for b in Backend},
            ready=lambda: {b.value: w.view().ready for b, w in self.watchers.items()},
            state=lambda: self.decision.state, health=lambda: dict(self._published),
            streams=lambda: self.active_streams)
        for w in watchers.values():
            w.subscribe(self.changed)

    # -- decisions ---------------------------------------------------------------------------------

    def changed(self) -> None:
        """A watcher saw something: re-evaluate now."""
        self.reevaluate()

    def reevaluate(self) -> None:
        now = self._clock()
        p, s = self.watchers[Backend.PRIMARY].view(), self.watchers[Backend.STANDBY].view()
        self.decision = self._policy.update(p, s, now)
        for t in self.decision.transitions:
            self._emit(t, now)
        for listener in self._decision_listeners:
            listener()
        self._dirty.set()

    def on_decision(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every evaluation of the policy (signals changed, or time passed)."""
        self._decision_listeners.append(listener)

    def _emit(self, t: Transition, now: float) -> None:
        d = self.decision
        ev = SwitchEvent(time_unix=self._wall(), from_state=t.from_state.value, to_state=t.to_state.value,
                         reason=t.reason, detection_ms=t.detection_ms, primary_weight=round(d.primary_weight, 2),
                         standby_weight=round(d.standby_weight, 2),
                         latency_before_ms=self.latency.median(now - LATENCY_WINDOW_S, now))
        self.events.append(ev)
        self.switches[t.to_state.value if t.from_state != t.to_state else "RAMP_START"] += 1
        self.metrics.switch(t.to_state.value, t.cause, t.detection_ms)
        event(log, "switch", logging.WARNING if t.to_state in (State.FAILOVER, State.BOTH_DOWN) else logging.INFO,
              from_state=ev.from_state, to_state=ev.to_state, reason=ev.reason,
              detection_ms=None if ev.detection_ms is None else round(ev.detection_ms, 1),
              primary_weight=ev.primary_weight, standby_weight=ev.standby_weight)
        for q in self._subscribers:
            q.put_nowait(ev)
        asyncio.get_running_loop().call_later(LATENCY_WINDOW_S, self._fill_latency_after, ev, now)

    def _fill_latency_after(self, ev: SwitchEvent, at: float) -> None:
        after = self.latency.median(at, at + LATENCY_WINDOW_S)
        for i, e in enumerate(self.events):
            if e is ev:
                self.events[i] = replace(ev, latency_after_ms=after)

    async def run(self) -> None:
        """Advance time for the policy (ramps) and publish the router's own health."""
        while True:
            self.reevaluate()
            await self._publish_health()
            self._dirty.clear()
            await wait_event(self._dirty, TICK_S)

    async def _publish_health(self) -> None:
        can_serve = self.decision.state is not State.BOTH_DOWN
        both = all(w.view().ready for w in self.watchers.values())
        statuses = {**dict.fromkeys(READINESS_NAMES, can_serve), LIVENESS: True, REDUNDANCY: both}
        for name, ok in statuses.items():
            if self._published.get(name) != ok:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if ok
                                       else health_pb2.HealthCheckResponse.NOT_SERVING)
                self._published[name] = ok

    # -- routing -----------------------------------------------------------------------------------

    def weight(self, backend: Backend) -> float:
        d = self.decision
        return d.primary_weight if backend is Backend.PRIMARY else d.standby_weight

    def pick(self) -> Backend | None:
        """A backend for a new call, by weight; None when none may be used (BOTH_DOWN)."""
        p, s = self.decision.primary_weight, self.decision.standby_weight
        if p + s <= 0:
            return None
        return Backend.PRIMARY if self._rng.random() * (p + s) < p else Backend.STANDBY

    def place_new(self, affinity: float) -> Backend | None:
        """Where a new stream with `affinity` in [0, 100) goes: the primary while affinity < its weight."""
        p, s = self.decision.primary_weight, self.decision.standby_weight
        if p + s <= 0:
            return None
        return Backend.PRIMARY if affinity < p * 100 / (p + s) else Backend.STANDBY

    def placement(self, affinity: float) -> Backend | None:
        """Where a running stream belongs: as a new one would, but DEGRADED moves no running stream.

        As the ramp raises the primary's weight, each stream moves back exactly once. Under overload a
        stream is often the load itself: moved off a primary lacking headroom it would take the
        overload along and come back when headroom returns, so DEGRADED shifts new streams only.
        """
        if self.decision.state is State.DEGRADED:
            return None
        return self.place_new(affinity)

    def hedge_delay_s(self, backend: Backend) -> float:
        return self.timers[backend].hedge_delay_s()

    def stall_s(self, backend: Backend) -> float:
        return self.timers[backend].stall_s()

    def progress_at(self, backend: Backend) -> float:
        return self._progress_at[backend]

    def usable(self, backend: Backend) -> bool:
        """Ready by every signal (a retry or a stream may go there even at weight 0)."""
        return self.watchers[backend].view().ready

    def record(self, backend: Backend, ok: bool, latency_s: float | None = None) -> None:
        """A real call's outcome (ok, or a failure of the backend) and its latency."""
        self.watchers[backend].record_call(ok)
        if ok:
            now = self._clock()
            self._progress_at[backend] = now
            if latency_s is not None:
                self.latency.add(now, latency_s * 1000)

    def unary_answered(self, backend: Backend, latency_s: float) -> None:
        self.record(backend, True, latency_s)
        self.timers[backend].unary_answered(latency_s)

    def stream_answered(self, backend: Backend, latency_s: float, waited_s: float) -> None:
        self.record(backend, True, latency_s)
        self.timers[backend].stream_progress(waited_s)

    # -- admin -------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[SwitchEvent]:
        q: asyncio.Queue[SwitchEvent] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[SwitchEvent]) -> None:
        self._subscribers.discard(q)

    def set_drain(self, backend: Backend, drained: bool) -> None:
        event(log, "drain" if drained else "undrain", logging.WARNING, backend=backend.value)
        self.watchers[backend].set_drained(drained)

    def switch_to(self, backend: Backend) -> None:
        if backend is Backend.STANDBY:
            self.set_drain(Backend.PRIMARY, True)
        else:
            self._policy.skip_hold_down(self._clock())
            self.set_drain(Backend.PRIMARY, False)
