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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from opentelemetry import metrics

from eagleeye.api.names import LIVENESS, READINESS_NAMES, REDUNDANCY
from eagleeye.common.aio import wait_event
from eagleeye.common.latency import BackendTimers
from eagleeye.common.logs import event
from eagleeye.common.loopbehind import LoopBehind
from eagleeye.router.fleet import Backend, Role, StreamPlace
from eagleeye.router.fleetpolicy import FleetDecision, FleetPolicy, FleetTransition, Side
from eagleeye.router.metrics import RouterMetrics
from eagleeye.router.policy import Decision, PolicyConfig, State
from eagleeye.router.watcher import BackendWatcher

log = logging.getLogger("eagleeye.router")


TICK_S = 0.1          # the ramp advances in steps this fine
LATENCY_WINDOW_S = 5.0  # "latency before/after" a switch: medians over this long
# A worker that left the pool is removed once it has no calls or stream legs, or after this long
# (a stream moves off it at its next frame boundary; a call gets its deadline).
LEAVE_GRACE_S = 30.0
# Removed workers whose timers are kept for the calls and stream legs that outlive them.
REMOVED_TIMERS_KEPT = 64


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
    worker: str = ""      # in a pool: the primary whose slot changed ("" for the fleet's own state)


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


# How long after a worker last said it lacked headroom a wait on it still counts as its backlog
# draining (Fleet.loaded): the policy's first degraded hold, by the same reasoning.
AT_CAPACITY_HOLD_S = 5.0


class Controller:
    """Policy + watchers + observers; to the data path, the Fleet it asks about backends.

    Workers are primaries and standbys (`Backend.role`); a pair is the fleet of one and one. New work
    is placed by weight, and among the workers of a role by load: the one with the fewest calls and
    stream legs outstanding per unit of weight.
    """

    def __init__(self, policy_cfg: PolicyConfig, watchers: dict[Backend, BackendWatcher],
                 health: health_aio.HealthServicer, timers: dict[Backend, BackendTimers],
                 meter: metrics.Meter | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None,
                 behind: LoopBehind | None = None) -> None:
        self._policy = FleetPolicy(policy_cfg)
        self.watchers = watchers
        self.timers = timers
        # A removed worker's timers, for the calls and legs that outlive it (a hung one's stall time is
        # still needed to give up on it); the last few removed only.
        self._removed_timers: collections.OrderedDict[Backend, BackendTimers] = collections.OrderedDict()
        self._health = health
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self.decision = Decision(State.BOTH_DOWN, 0.0, 0.0)   # the fleet's, summed (a pair's: exactly its own)
        self.fleet_decision = FleetDecision(State.BOTH_DOWN, {}, {})
        self.events: collections.deque[SwitchEvent] = collections.deque(maxlen=100)
        self._subscribers: set[asyncio.Queue[SwitchEvent]] = set()
        self._published: dict[str, bool] = {}
        self.latency = LatencyLog()
        self.switches: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.hedges = 0
        self.stream_rebalances = 0     # streams re-homed onto a primary that joined
        self.stream_migrations = 0
        self.replayed_frames = 0
        self.active_streams = 0       # client DetectStreams open now (the proxy counts them)
        self._progress_at: dict[Backend, float] = {}  # last answer of any kind, per backend
        self._at_capacity_at: dict[Backend, float] = {}  # when each last said it lacked headroom
        self.behind = behind if behind is not None else LoopBehind()  # shared with the watchers' Checks
        self._load: dict[Backend, int] = dict.fromkeys(watchers, 0)   # calls and stream legs outstanding
        self._dirty = asyncio.Event()
        self._decision_listeners: list[Callable[[], None]] = []
        self._failure_listeners: list[Callable[[Backend], None]] = []
        self._removal_listeners: list[Callable[[Backend, BackendWatcher], None]] = []
        self._placement_listeners: list[Callable[[], None]] = []
        self._usable_seen: frozenset[Backend] = frozenset()   # ready and not leaving, at the last evaluation
        self._leaving: dict[Backend, float] = {}   # left the pool at: no new work; removed once idle
        # Primaries that joined while the router ran and have not been ready yet (a scaled-out pod loading
        # its model): no slot, no share, nothing for a standby to cover, until their first ready.
        self._joining: set[Backend] = set()
        self._rebalance_onto: list[Backend] = []
        self._places: weakref.WeakSet[StreamPlace] = weakref.WeakSet()  # every running stream's place
        self._was_ready: dict[Backend, bool] = {}
        self.leave_grace_s = LEAVE_GRACE_S
        self.metrics = RouterMetrics(
            meter or metrics.NoOpMeter("eagleeye"),
            weights=lambda: {b.value: self.weight(b) for b in self.watchers},
            ready=lambda: {b.value: w.view().ready for b, w in self.watchers.items()},
            state=lambda: self.decision.state, health=lambda: dict(self._published),
            streams=lambda: self.active_streams, backends=[b.value for b in watchers],
            outstanding=lambda: {b.value: n for b, n in self._load.items()},
            reported_queue=lambda: {b.value: q for b, w in self.watchers.items()
                                    if (q := w.reported_queue()) is not None})
        for w in watchers.values():
            w.subscribe(self.changed)

    # -- decisions ---------------------------------------------------------------------------------

    def changed(self) -> None:
        """A watcher saw something: re-evaluate now."""
        self.reevaluate()

    @property
    def pooled(self) -> bool:
        """Whether the workers are a pool (named by role and address) rather than a pair."""
        return any(b.name != b.role.value for b in self.watchers)

    def reevaluate(self) -> None:
        now = self._clock()
        views = {b: w.view() for b, w in self.watchers.items() if b not in self._leaving}
        for b in [b for b in self._joining if b in views]:
            if views[b].ready:
                self._joining.discard(b)
                event(log, "worker ready: taking its share", backend=b.value)
                self._rebalance_onto.append(b)
            else:
                del views[b]  # a new pod loading its model is not a failed primary
        for b, v in views.items():
            if not v.headroom:
                self._at_capacity_at[b] = now
            if self._was_ready.get(b) and not v.ready:
                for failed in self._failure_listeners:
                    failed(b)
            self._was_ready[b] = v.ready
        d = self.fleet_decision = self._policy.update({b.name: v for b, v in views.items() if b.primary},
                                                      {b.name: v for b, v in views.items() if not b.primary}, now)
        rehomed = 0
        while self._rebalance_onto:
            rehomed += self._rebalance(self._rebalance_onto.pop(0))
        self.decision = _summary(d, self.pooled)
        for t in d.transitions:
            self._emit(t, now)
        for listener in self._decision_listeners:
            listener()
        usable = frozenset(b for b, v in views.items() if v.ready)
        if usable != self._usable_seen or rehomed:
            self._usable_seen = usable
            for moved in self._placement_listeners:
                moved()
        self._dirty.set()

    def on_placement_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` when where running streams belong may have changed at once: a worker became
        usable or not (health, ejection, an operator's drain), began leaving the pool, or a rebalance
        re-homed streams. (Ramps change weights a little at every tick: a stream follows them at its
        next frame.)"""
        self._placement_listeners.append(listener)

    def on_decision(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every evaluation of the policy (signals changed, or time passed)."""
        self._decision_listeners.append(listener)

    def _emit(self, ft: FleetTransition, now: float) -> None:
        d, t = self.decision, ft.transition
        reason = t.reason
        ev = SwitchEvent(time_unix=self._wall(), from_state=t.from_state.value, to_state=t.to_state.value,
                         reason=reason, detection_ms=t.detection_ms, primary_weight=round(d.primary_weight, 2),
                         standby_weight=round(d.standby_weight, 2),
                         latency_before_ms=self.latency.median(now - LATENCY_WINDOW_S, now), worker=ft.worker)
        self.events.append(ev)
        self.switches[t.to_state.value if t.from_state != t.to_state else "RAMP_START"] += 1
        self.metrics.switch(t.to_state.value, t.cause, t.detection_ms)
        bad = t.to_state in (State.FAILOVER, State.BOTH_DOWN, State.STANDBYS_SHORT)
        event(log, "switch", logging.WARNING if bad else logging.INFO,
              from_state=ev.from_state, to_state=ev.to_state, reason=ev.reason,
              detection_ms=None if ev.detection_ms is None else round(ev.detection_ms, 1),
              primary_weight=ev.primary_weight, standby_weight=ev.standby_weight,
              **({"worker": ft.worker or "fleet"} if self.pooled else {}))
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
            self._reap()
            await self._publish_health()
            self._dirty.clear()
            await wait_event(self._dirty, TICK_S)

    async def _publish_health(self) -> None:
        can_serve = self.decision.state is not State.BOTH_DOWN
        # Redundancy: every primary serving and a standby ready to take the next one's share.
        ready = {b: w.view().ready for b, w in self.watchers.items() if b not in self._leaving}
        redundant = all(ok for b, ok in ready.items() if b.primary) and any(
            ok for b, ok in ready.items() if not b.primary)
        statuses = {**dict.fromkeys(READINESS_NAMES, can_serve), LIVENESS: True, REDUNDANCY: redundant}
        for name, ok in statuses.items():
            if self._published.get(name) != ok:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if ok
                                       else health_pb2.HealthCheckResponse.NOT_SERVING)
                self._published[name] = ok

    # -- routing -----------------------------------------------------------------------------------

    def weight(self, backend: Backend) -> float:
        return self.fleet_decision.weights.get(backend.name, 0.0)

    def load(self, backend: Backend, delta: int) -> None:
        """A call or stream leg started (+1) or ended (-1) on `backend`."""
        if backend in self._load:
            self._load[backend] += delta

    def outstanding(self, backend: Backend) -> int:
        return self._load.get(backend, 0)

    def work(self, backend: Backend) -> float:
        """A worker's work for placement: this router's outstanding calls and stream legs, or the queue
        the worker itself reports (its load from every caller: other router replicas, zero-hop
        clients), whichever is more. Its own counts are exact and current; the report sees the rest."""
        own = float(self.outstanding(backend))
        watcher = self.watchers.get(backend)
        reported = watcher.reported_queue() if watcher is not None else None
        return own if reported is None else max(own, reported)

    def _least_loaded(self, candidates: list[Backend], weighted: bool = True) -> Backend | None:
        """The candidate with the least work (`work`) per unit of weight (with `weighted` False: the least
        work); ties broken at random, in proportion to weight.

        The router's counts of its own calls are exact and current, so it takes the least loaded of all
        (a few dozen workers at most) rather than the best of two random ones, which is for stale load
        alone; between two reports, its own counts keep a burst of new streams from piling onto the
        worker that reported least.
        """
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        work = [self.work(b) for b in candidates]
        scores = [(w + 1) / self.weight(b) for b, w in zip(candidates, work)] if weighted else work
        best = min(scores)
        tied = [b for b, score in zip(candidates, scores, strict=True) if score <= best * (1 + 1e-9)]
        if len(tied) == 1:
            return tied[0]
        return self._rng.choices(tied, [self.weight(b) for b in tied] if weighted else None)[0]

    def _weighted(self, primary: bool, exclude: Backend | None = None) -> list[Backend]:
        return [b for b in self.watchers if b.primary is primary and b != exclude and self.weight(b) > 0]

    # -- membership (router/membership.py) ---------------------------------------------------------

    def add(self, backend: Backend, watcher: BackendWatcher, timers: BackendTimers) -> None:
        """A worker joins (or one leaving comes back): it gets work once its health says ready."""
        if backend in self.watchers:
            if self._leaving.pop(backend, None) is not None:
                event(log, "worker stays", backend=backend.value)
                self.reevaluate()
            return
        self.watchers[backend] = watcher
        self.timers[backend] = timers
        if backend.primary:
            self._joining.add(backend)
        self._load.setdefault(backend, 0)
        self.metrics.backend_added(backend.value)
        watcher.subscribe(self.changed)
        self.reevaluate()

    def retire(self, backend: Backend) -> None:
        """A worker leaves the pool: no new work from now on; its streams move at their next frame
        boundary, its calls finish; once it has none (or after `leave_grace_s`) it is removed."""
        if backend in self.watchers and backend not in self._leaving:
            self._leaving[backend] = self._clock()
            event(log, "worker leaving", backend=backend.value, outstanding=self.outstanding(backend))
            self.reevaluate()

    def leaving(self, backend: Backend) -> bool:
        return backend in self._leaving

    def _reap(self) -> None:
        now = self._clock()
        for b, since in list(self._leaving.items()):
            if self.outstanding(b) <= 0 or now - since >= self.leave_grace_s:
                del self._leaving[b]
                watcher = self.watchers.pop(b)
                gone = self.timers.pop(b, None)
                if gone is not None:
                    self._removed_timers[b] = gone
                    while len(self._removed_timers) > REMOVED_TIMERS_KEPT:
                        self._removed_timers.popitem(last=False)
                self._load.pop(b, None)
                self._progress_at.pop(b, None)
                self._at_capacity_at.pop(b, None)
                self._was_ready.pop(b, None)
                self._joining.discard(b)
                event(log, "worker removed", backend=b.value, after_s=round(now - since, 1))
                for removed in self._removal_listeners:
                    removed(b, watcher)

    def on_failure(self, listener: Callable[[Backend], None]) -> None:
        """Call `listener` when a worker that was ready is not any more."""
        self._failure_listeners.append(listener)

    def on_removed(self, listener: Callable[[Backend, BackendWatcher], None]) -> None:
        """Call `listener` when a worker that left is removed (its channels may close)."""
        self._removal_listeners.append(listener)

    def pick(self) -> Backend | None:
        """A worker for a new call: a role by weight, then the least loaded of that role's workers; None
        when none may be used (BOTH_DOWN)."""
        p = sum(self.weight(b) for b in self.watchers if b.primary)
        s = sum(self.weight(b) for b in self.watchers if not b.primary)
        if p + s <= 0:
            return None
        return self._least_loaded(self._weighted(self._rng.random() * (p + s) < p))

    def place_new(self, place: StreamPlace) -> Backend | None:
        """Where a new stream goes: a home among the primaries by load, then where its affinity puts it."""
        place.home = self._new_home()
        self._places.add(place)
        return self.placement(place, None)

    def _rebalance(self, joined: Backend) -> int:
        """A primary that joined the pool takes its part of the running streams: from each primary with
        more than an even share of the streams homed on it, the excess is re-homed onto `joined`, up to
        an even share in all. Each such stream moves once, at its next frame boundary (placement says so
        and the stream core moves it as a switch-back does: nothing replayed); the others do not move.
        """
        d = self.fleet_decision
        primaries = [n for n in d.slots if d.weights.get(n, 0.0) > 0]
        if joined.name not in primaries or len(primaries) < 2:
            return 0
        homed: dict[str, list[StreamPlace]] = {n: [] for n in primaries}
        for place in list(self._places):
            home = place.home
            if home is not None and home.name in homed and d.side(home.name, place.affinity) is Side.HOME:
                homed[home.name].append(place)
        fair = sum(len(v) for v in homed.values()) // len(primaries)
        room, moved = fair - len(homed[joined.name]), 0
        for name, places in sorted(homed.items(), key=lambda kv: -len(kv[1])):
            if name == joined.name:
                continue
            for place in places[fair:]:
                if moved >= room:
                    break
                place.home = joined
                moved += 1
        if moved:
            self.stream_rebalances += moved
            event(log, "streams rebalanced onto a new primary", backend=joined.value, streams=moved, fair_share=fair)
        return moved

    def _new_home(self) -> Backend | None:
        homes = self._weighted(True) or [b for b in self.watchers if b.primary and b not in self._leaving]
        return self._least_loaded(homes) if all(self.weight(b) > 0 for b in homes) else self._rng.choice(homes) \
            if homes else None

    def placement(self, place: StreamPlace, current: Backend | None) -> Backend | None:
        """Where a running stream belongs: its home, or as its slot's weights send it away from home (each
        stream moves back exactly once as a ramp raises its home's share). DEGRADED moves no running
        stream: under overload a stream is often the load itself; moved off a primary lacking headroom it
        would take the overload along and come back when headroom returns, so DEGRADED shifts new
        streams only. Off home, a stream stays on the worker it is on while that one may take traffic.
        """
        d = self.fleet_decision
        home = place.home
        if home is None or home.name not in d.slots:
            home = place.home = self._new_home()
        side = d.side(home.name, place.affinity) if home is not None else Side.STANDBYS
        if side is Side.HOME or (side is Side.STAY and current is None):
            return home
        if side is Side.STAY:
            return current
        if side is Side.NOWHERE:
            return None
        primary = side is Side.PRIMARIES
        if current is not None and current.primary is primary and current != home and self.weight(current) > 0 \
                and self.usable(current):
            return current
        return self._least_loaded(self._weighted(primary, exclude=home))

    def alternative(self, backend: Backend | None) -> Backend | None:
        """Another usable worker (even at weight 0, not one leaving) for what `backend` did not answer: the
        least loaded."""
        return self._least_loaded([b for b in self.watchers if b != backend and b not in self._leaving
                                   and self.usable(b)], weighted=False)

    def hedge_delay_s(self, backend: Backend) -> float:
        return self._timers(backend).hedge_delay_s()

    def stall_s(self, backend: Backend) -> float:
        return self._timers(backend).stall_s()

    def _timers(self, backend: Backend) -> BackendTimers:
        timers = self.timers.get(backend) or self._removed_timers.get(backend)
        if timers is None:  # removed long ago: any worker's will do for a call that old
            timers = next(iter(self._removed_timers.values()))
        return timers

    def progress_at(self, backend: Backend) -> float:
        return self._progress_at.get(backend, float("-inf"))

    def heard_since(self, t: float) -> float:
        return t + self.behind.after(t)

    def woke(self, due: float, now: float) -> None:
        """A timer due at `due` ran at `now` (the loop-lag probe's, a stream's): see LoopBehind."""
        self.behind.woke(due, now)

    def usable(self, backend: Backend) -> bool:
        """Ready by every signal (a retry or a stream may go there even at weight 0)."""
        w = self.watchers.get(backend)
        return w is not None and w.view().ready

    def loaded(self, backend: Backend) -> bool:
        """At capacity now, or within AT_CAPACITY_HOLD_S: a worker's headroom comes back once its backlog
        falls under its threshold, while the frames still queued there wait their turn."""
        w = self.watchers.get(backend)
        if w is None:
            return False
        if not w.view().headroom:
            return True
        return self._clock() - self._at_capacity_at.get(backend, float("-inf")) < AT_CAPACITY_HOLD_S

    def record(self, backend: Backend, ok: bool, latency_s: float | None = None, why: str = "") -> None:
        """A real call's outcome (ok, or a failure of the backend) and its latency; nothing for a worker
        already removed from the pool (a call or leg that outlived it)."""
        watcher = self.watchers.get(backend)
        if watcher is None:
            return
        watcher.record_call(ok, why)
        if ok:
            now = self._clock()
            self._progress_at[backend] = now
            if latency_s is not None:
                self.latency.add(now, latency_s * 1000)

    def unary_answered(self, backend: Backend, latency_s: float) -> None:
        self.record(backend, True, latency_s)
        if (timers := self.timers.get(backend)) is not None:
            timers.unary_answered(latency_s)

    def stream_answered(self, backend: Backend, latency_s: float, waited_s: float) -> None:
        self.record(backend, True, latency_s)
        if (timers := self.timers.get(backend)) is not None:
            timers.stream_progress(waited_s)

    # -- admin -------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[SwitchEvent]:
        q: asyncio.Queue[SwitchEvent] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[SwitchEvent]) -> None:
        self._subscribers.discard(q)

    def members(self, backend: Backend) -> list[Backend]:
        """The workers `backend` stands for: itself, or in a pool `Backend.PRIMARY`/`STANDBY` for its role."""
        return [backend] if backend in self.watchers else [b for b in self.watchers if b.role is backend.role]

    def set_drain(self, backend: Backend, drained: bool) -> None:
        for b in self.members(backend):
            event(log, "drain" if drained else "undrain", logging.WARNING, backend=b.value)
            self.watchers[b].set_drained(drained)

    def switch_to(self, backend: Backend) -> None:
        if backend.role is Role.STANDBY:
            self.set_drain(Backend.PRIMARY, True)
        else:
            self._policy.skip_hold_down(self._clock())
            self.set_drain(Backend.PRIMARY, False)


def _summary(d: FleetDecision, pooled: bool) -> Decision:
    """The fleet's decision as one Decision (admin, metrics, request defaults): a pair's is its slot's."""
    if not pooled and len(d.slots) == 1:
        slot = next(iter(d.slots.values()))
        return replace(slot, state=d.state, transitions=())
    names = set(d.slots)
    primary = sum(w for n, w in d.weights.items() if n in names)
    standby = sum(w for n, w in d.weights.items() if n not in names)
    recovering = [s for s in d.slots.values() if s.state is State.RECOVERING]
    return Decision(d.state, primary, standby,
                    hold_down_remaining_s=max((s.hold_down_remaining_s for s in recovering), default=0.0),
                    ramp_progress=min((s.ramp_progress for s in recovering), default=0.0),
                    next_hold_down_s=max((s.next_hold_down_s for s in d.slots.values()), default=0.0),
                    degraded_hold_s=max((s.degraded_hold_s for s in d.slots.values()), default=0.0))
