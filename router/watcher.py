"""What the router knows of one backend: its Watch streams, an active Check, and real calls' outcomes.

Three signals, because each alone misses something: Watch pushes changes at once but a hung process
keeps its connection and says nothing; an active Check with a short deadline sees the hang; real
calls failing in a row eject a backend that health still calls fine, until a Check confirms it.

A worker that refuses a Watch (RESOURCE_EXHAUSTED: its Watch slots are taken; UNIMPLEMENTED) has
answered, so it is up: its readiness and headroom then come from Checks while the Watch is retried.
Any other end of a Watch (connection lost, UNAVAILABLE) still means "unknown" at once.

A Check is judged on the router's own timer, and only for time the router's loop was awake to read an
answer: a loop held by a burst of calls or a large frame (LoopBehind) blames no worker for its lateness.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api.names import HEADROOM, READINESS
from eagleeye.common import loadreport
from eagleeye.common.loadreport import Load
from eagleeye.common.logs import event
from eagleeye.common.loopbehind import BEHIND_S, LoopBehind
from eagleeye.common.tls import channel_credentials
from eagleeye.router.config import RouterConfig
from eagleeye.router.policy import BackendView

log = logging.getLogger("eagleeye.watcher")

SERVING = health_pb2.HealthCheckResponse.SERVING
# Load reports: one a second; one older than three intervals is not used; a worker without them
# (UNIMPLEMENTED) is asked again after a minute.
LOAD_REPORT_INTERVAL_S = 1.0
LOAD_REPORT_FRESH_S = 3 * LOAD_REPORT_INTERVAL_S
LOAD_REPORT_UNIMPLEMENTED_RETRY_S = 60.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class WatchEnd(Enum):
    """What the end of a Watch stream means for the backend's status."""

    REFUSED = "refused"  # the worker answered "not for you": it is up; ask it by Check instead
    BROKEN = "broken"    # connection lost, stream ended, any other error: unknown at once


# Status codes by which a live worker turns a Watch away: its Watch slots are taken, or it has no Watch.
WATCH_REFUSALS = frozenset({"RESOURCE_EXHAUSTED", "UNIMPLEMENTED"})


def watch_end(code: str, received: bool) -> WatchEnd:
    """What a Watch that ended with status `code` ("" for a clean end) means; `received`: it had
    delivered a status. Only a refusal at the start is one: a stream that broke off later is broken."""
    return WatchEnd.REFUSED if code in WATCH_REFUSALS and not received else WatchEnd.BROKEN


def backend_channel(address: str, cfg: RouterConfig, interceptors: list[Any] | None = None) -> grpc.aio.Channel:
    """A channel with a connection of its own that notices a dead peer and reconnects quickly.

    The router opens one per backend for health, one for unary calls and one for streams: on a
    connection whose flow-control window a stream has filled, a partitioned peer holds every other
    call on it too (FACTS.md), and health probes must not wait behind frames.
    """
    options: list[tuple[str, Any]] = [
        # gRPC shares one connection among channels with equal settings unless told otherwise.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        # gRPC's default reconnect backoff starts at 1 s and grows to 120 s: a restarted worker
        # would wait minutes for its first connection.
        ("grpc.initial_reconnect_backoff_ms", int(cfg.reconnect_backoff_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(cfg.reconnect_backoff_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(cfg.reconnect_backoff_max_s * 1000)),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 0),  # the router decides about retries itself
    ]
    if cfg.backend_tls_ca is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors or None)
    if cfg.backend_tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.backend_tls_server_name))
    creds = channel_credentials(cfg.backend_tls_ca, cfg.backend_tls_cert, cfg.backend_tls_key)
    return grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors or None)


@dataclass
class BackendStatus:
    """The raw signals; `view` combines them."""

    watch_connected: bool = False
    watch_error: str = ""
    watch_refused: str = ""                  # the code the worker refused the readiness Watch with; "": not refused
    headroom_refused: str = ""               # ... the headroom Watch; then headroom_status comes from Checks
    ready_status: int | None = None          # last readiness status on Watch
    headroom_status: int | None = None
    check_ready_status: int | None = None    # last readiness status a Check answered (None since a Watch broke)
    check_failures: int = 0
    check_error: str = ""
    healthy_checks: int = 0
    last_ok_at: float | None = None
    call_failures: int = 0
    ejected_at: float | None = None
    drained: bool = False
    been_ready: bool = False                 # ready at least once since the router started


# A Check waits at most this many check timeouts for its answer while the router's loop runs behind.
CHECK_WAIT_MAX_TIMEOUTS = 4


class BackendWatcher:
    """Keeps a BackendStatus current and tells its listeners (`on_change`, `subscribe`) whenever it changes."""

    def __init__(self, name: str, address: str, channel: grpc.aio.Channel, cfg: RouterConfig,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 behind: LoopBehind | None = None) -> None:
        self.name = name
        self.address = address
        self.channel = channel
        self._cfg = cfg
        self._failure_causes: collections.deque[str] = collections.deque(maxlen=cfg.eject_after_failures)
        self._listeners: list[Callable[[], None]] = [on_change] if on_change is not None else []
        self._clock = clock
        self._behind = behind if behind is not None else LoopBehind()  # the router's own, shared with its controller
        self._stub = health_pb2_grpc.HealthStub(channel)
        self.status = BackendStatus()
        self.load: Load | None = None      # the worker's last load report (None: none, or its stream ended)
        self.load_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    def use_channel(self, channel: grpc.aio.Channel) -> None:
        """Check on `channel` from now on, and open Watch streams there when they reconnect."""
        self.channel = channel
        self._stub = health_pb2_grpc.HealthStub(channel)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the backend's status changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def view(self) -> BackendView:
        """All signals combined into what the policy needs.

        While the worker refuses the readiness Watch, the last Check's answer stands in for it (and the
        reason says so even when ready); a Watch down for any other reason is "not ready" at once.
        """
        s, cfg = self.status, self._cfg
        reasons, notes = [], []
        if s.drained:
            reasons.append("drained by operator")
        if s.watch_connected:
            if s.ready_status != SERVING:
                reasons.append("readiness NOT_SERVING" if s.ready_status == NOT_SERVING else "readiness unknown")
        elif s.watch_refused:
            refused = f"Watch refused ({s.watch_refused}): status from Checks"
            if s.check_ready_status == SERVING:
                notes.append(refused)
            elif s.check_ready_status == NOT_SERVING:
                reasons.append(f"{refused}; readiness NOT_SERVING")
            else:
                reasons.append(f"{refused}; no Check answered yet")
        else:
            reasons.append(f"Watch stream down ({s.watch_error or 'connecting'})")
        if s.check_failures >= cfg.check_failures:
            reasons.append(f"{s.check_failures} Checks failed in a row ({s.check_error})")
        if s.ejected_at is not None:
            reasons.append(f"ejected after {cfg.eject_after_failures} failed calls in a row")
        ready = not reasons
        s.been_ready = s.been_ready or ready
        headroom = s.headroom_status != NOT_SERVING
        if ready and not headroom:
            reasons.append("headroom NOT_SERVING")
        return BackendView(ready=ready, headroom=headroom, healthy_checks=s.healthy_checks,
                           last_ok_at=s.last_ok_at, reason="; ".join(reasons + notes), been_ready=s.been_ready)

    def start(self) -> None:
        """Watch readiness and headroom, Check on an interval, and follow the worker's load reports."""
        self._tasks = [asyncio.create_task(self._watch(READINESS)), asyncio.create_task(self._watch(HEADROOM)),
                       asyncio.create_task(self._check_loop()), asyncio.create_task(self._load_reports())]

    def reported_load(self) -> Load | None:
        """The worker's last load report; None without one fresh enough to count (LOAD_REPORT_FRESH_S)."""
        load = self.load
        return None if load is None or self._clock() - self.load_at > LOAD_REPORT_FRESH_S else load

    def reported_queue(self) -> float | None:
        """Frames waiting or in the model, as the worker last reported (all its callers', not only this
        router's); None without a fresh report that says."""
        load = self.reported_load()
        return None if load is None else load.queue

    async def _load_reports(self) -> None:
        """The worker's ORCA load reports, out of band (common/loadreport.py), into `load`.

        A worker that does not serve them (UNIMPLEMENTED: an older version, another server) is asked
        again rarely; other ends reconnect with the Watch's back-off. A report is a hint for placement:
        its absence changes nothing else.
        """
        backoff = self._cfg.reconnect_backoff_s
        while True:
            call = loadreport.subscribe(self.channel, LOAD_REPORT_INTERVAL_S)
            wait = backoff
            try:
                async for report in call:
                    self.load, self.load_at = Load.parse(report), self._clock()
                    backoff = self._cfg.reconnect_backoff_s
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    wait = LOAD_REPORT_UNIMPLEMENTED_RETRY_S
            finally:
                call.cancel()
            self.load = None
            await asyncio.sleep(wait)  # reconnection backoff, not a synchronisation stand-in
            backoff = min(backoff * 2, self._cfg.reconnect_backoff_max_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _set_watch(self, service: str, status: int | None) -> None:
        if service == READINESS:
            self.status.ready_status = status
        else:
            self.status.headroom_status = status

    async def _watch(self, service: str) -> None:
        backoff = self._cfg.reconnect_backoff_s
        while True:
            call = self._stub.Watch(health_pb2.HealthCheckRequest(service=service))
            received = False
            try:
                async for resp in call:
                    if not received:
                        received = True
                        self._watch_accepted(service)
                    backoff = self._cfg.reconnect_backoff_s
                    self._set_watch(service, resp.status)
                    self._changed()
                code, error = "", "stream ended"
            except grpc.aio.AioRpcError as e:
                code, error = e.code().name, f"{e.code().name}: {e.details()}"
            self._watch_ended(service, watch_end(code, received), code, error)
            self._changed()
            # A refused Watch is retried too: the worker may have a slot free by then.
            await asyncio.sleep(backoff)  # reconnection backoff, not a synchronisation stand-in
            backoff = min(backoff * 2, self._cfg.reconnect_backoff_max_s)

    def _watch_accepted(self, service: str) -> None:
        s = self.status
        if service != READINESS:
            s.headroom_refused = ""
            return
        if s.watch_refused:
            event(log, "watch stream accepted after refusals", backend=self.name)
        s.watch_connected, s.watch_error, s.watch_refused = True, "", ""

    def _watch_ended(self, service: str, end: WatchEnd, code: str, error: str) -> None:
        s = self.status
        refused = code if end is WatchEnd.REFUSED else ""
        if service != READINESS:
            s.headroom_refused = refused
            if not refused:
                s.headroom_status = None
            return  # when refused, what Checks learned of headroom stands
        if refused and not s.watch_refused:
            event(log, "watch refused: status from Checks", logging.WARNING, backend=self.name, error=error)
        elif not refused and (s.watch_connected or s.watch_refused):
            event(log, "watch stream broken", logging.WARNING, backend=self.name, error=error)
        s.watch_connected, s.watch_error, s.watch_refused = False, error, refused
        s.ready_status = None
        if not refused:
            # "unknown" at once: the process behind the address may be another by the next answer.
            s.check_ready_status = None

    async def check_once(self) -> None:
        """One active Check with a short deadline."""
        started = self._clock()
        s = self.status
        answered = False
        try:
            resp = await self._ask(READINESS)
            answered, s.check_ready_status = True, resp.status
            ok = resp.status == SERVING
            error = "" if ok else "NOT_SERVING"
        except grpc.aio.AioRpcError as e:
            ok, error = False, e.code().name
        except TimeoutError:
            ok, error = False, "DEADLINE_EXCEEDED"
        if s.headroom_refused and answered:  # a worker that did not answer is not asked twice a period
            await self._check_headroom()
        if ok:
            s.check_failures, s.check_error = 0, ""
            s.healthy_checks += 1
            s.last_ok_at = self._clock()
            if s.ejected_at is not None and started >= s.ejected_at:
                s.ejected_at = None
                s.call_failures = 0
                event(log, "backend restored after ejection", backend=self.name)
        else:
            s.check_failures += 1
            s.check_error = error
            s.healthy_checks = 0
        self._changed()

    async def _check_headroom(self) -> None:
        """Headroom by Check, while the worker refuses this router a Watch on it."""
        try:
            resp = await self._ask(HEADROOM)
            self.status.headroom_status = resp.status
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                self.status.headroom_status = None  # a worker without the name is not penalised
            # Otherwise no answer: the last one stands (the readiness Check judges the worker itself).
        except TimeoutError:
            pass

    async def _ask(self, service: str) -> health_pb2.HealthCheckResponse:
        """One Check of `service`; TimeoutError when no answer came within check_timeout_s.

        The timer is the router's own as well as gRPC's deadline: behind a dead connection the deadline
        may not fire until keepalive gives up, seconds later (FACTS.md). It counts only time the router's
        loop was awake: a timer that fires late found the loop behind (a burst of new calls, a large frame
        being copied), and an answer that arrived meanwhile may be waiting unread, one loop turn from
        being seen. So a late timer gives the answer back the time the loop lost (up to one more timeout),
        and again while it keeps losing time, until CHECK_WAIT_MAX_TIMEOUTS timeouts in all: a hung
        worker is still found while the router runs behind, later."""
        timeout = self._cfg.check_timeout_s
        started = self._clock()
        give_up = started + CHECK_WAIT_MAX_TIMEOUTS * timeout
        call = self._stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=give_up - started)
        answer: asyncio.Future[health_pb2.HealthCheckResponse] = asyncio.ensure_future(call)
        due = started + timeout
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=max(0.0, due - self._clock()))
                if done:
                    return answer.result()
                now = self._clock()
                self._behind.woke(due, now)
                lost = self._behind.after(started)
                if lost < BEHIND_S or now >= give_up:
                    raise TimeoutError
                due = min(give_up, now + min(timeout, lost))
        finally:
            if not answer.done():
                answer.cancel()
                call.cancel()

    async def _check_loop(self) -> None:
        while True:
            started = self._clock()
            await self.check_once()
            await asyncio.sleep(max(0.0, self._cfg.check_interval_s - (self._clock() - started)))  # the probe period

    def record_call(self, ok: bool, why: str = "") -> None:
        """Outcome of a real call: success, or a retriable failure (connection, UNAVAILABLE, per-try timeout;
        `why` names it, and the last few go into the ejection's log line)."""
        s = self.status
        if ok:
            s.call_failures = 0
            self._failure_causes.clear()
            return
        s.call_failures += 1
        self._failure_causes.append(why or "unnamed")
        if s.call_failures >= self._cfg.eject_after_failures and s.ejected_at is None:
            s.ejected_at = self._clock()
            event(log, "backend ejected", logging.WARNING, backend=self.name, failures=s.call_failures,
                  causes=list(self._failure_causes))
            self._changed()

    def set_drained(self, drained: bool) -> None:
        """Operator maintenance."""
        self.status.drained = drained
        self._changed()
