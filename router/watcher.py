"""What the router knows of one backend: its Watch streams, an active Check, and real calls' outcomes.

Three signals, because each alone misses something: Watch pushes changes at once but a hung process
keeps its connection and says nothing; an active Check with a short deadline sees the hang; real
calls failing in a row eject a backend that health still calls fine, until a Check confirms it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.common.logs import event
from eagleeye.common.names import HEADROOM, READINESS
from eagleeye.common.tls import channel_credentials
from eagleeye.router.config import RouterConfig
from eagleeye.router.policy import BackendView

log = logging.getLogger("eagleeye.watcher")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
    ready_status: int | None = None          # last readiness status on Watch
    headroom_status: int | None = None
    check_failures: int = 0
    check_error: str = ""
    healthy_checks: int = 0
    last_ok_at: float | None = None
    call_failures: int = 0
    ejected_at: float | None = None
    drained: bool = False
    been_ready: bool = False                 # ready at least once since the router started


class BackendWatcher:
    """Keeps a BackendStatus current and tells its listeners (`on_change`, `subscribe`) whenever it changes."""

    def __init__(self, name: str, address: str, channel: grpc.aio.Channel, cfg: RouterConfig,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.address = address
        self.channel = channel
        self._cfg = cfg
        self._listeners: list[Callable[[], None]] = [on_change] if on_change is not None else []
        self._clock = clock
        self._stub = health_pb2_grpc.HealthStub(channel)
        self.status = BackendStatus()
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
        """All signals combined into what the policy needs."""
        s, cfg = self.status, self._cfg
        reasons = []
        if s.drained:
            reasons.append("drained by operator")
        if not s.watch_connected:
            reasons.append(f"Watch stream down ({s.watch_error or 'connecting'})")
        elif s.ready_status != SERVING:
            reasons.append("readiness NOT_SERVING" if s.ready_status == NOT_SERVING else "readiness unknown")
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
                           last_ok_at=s.last_ok_at, reason="; ".join(reasons), been_ready=s.been_ready)

    def start(self) -> None:
        """Watch readiness and headroom, and Check on an interval."""
        self._tasks = [asyncio.create_task(self._watch(READINESS)), asyncio.create_task(self._watch(HEADROOM)),
                       asyncio.create_task(self._check_loop())]

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
            try:
                async for resp in call:
                    if service == READINESS:
                        self.status.watch_connected = True
                        self.status.watch_error = ""
                    backoff = self._cfg.reconnect_backoff_s
                    self._set_watch(service, resp.status)
                    self._changed()
                error = "stream ended"
            except grpc.aio.AioRpcError as e:
                error = f"{e.code().name}: {e.details()}"
            # A broken stream means "unknown" at once; the next one is tried after a backoff.
            if service == READINESS:
                was = self.status.watch_connected
                self.status.watch_connected = False
                self.status.watch_error = error
                if was:
                    event(log, "watch stream broken", logging.WARNING, backend=self.name, error=error)
            self._set_watch(service, None)
            self._changed()
            await asyncio.sleep(backoff)  # reconnection backoff, not a synchronisation stand-in
            backoff = min(backoff * 2, self._cfg.reconnect_backoff_max_s)

    async def check_once(self) -> None:
        """One active Check with a short deadline."""
        started = self._clock()
        s = self.status
        timeout = self._cfg.check_timeout_s
        try:
            # The router's own timer as well as gRPC's deadline: behind a dead connection the
            # deadline may not fire until keepalive gives up, seconds later (FACTS.md).
            async with asyncio.timeout(timeout):
                resp = await self._stub.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=timeout)
            ok = resp.status == SERVING
            error = "" if ok else "NOT_SERVING"
        except grpc.aio.AioRpcError as e:
            ok, error = False, e.code().name
        except TimeoutError:
            ok, error = False, "DEADLINE_EXCEEDED"
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

    async def _check_loop(self) -> None:
        while True:
            started = self._clock()
            await self.check_once()
            await asyncio.sleep(max(0.0, self._cfg.check_interval_s - (self._clock() - started)))  # the probe period

    def record_call(self, ok: bool) -> None:
        """Outcome of a real call: success, or a retriable failure (connection, UNAVAILABLE, per-try timeout)."""
        s = self.status
        if ok:
            s.call_failures = 0
            return
        s.call_failures += 1
        if s.call_failures >= self._cfg.eject_after_failures and s.ejected_at is None:
            s.ejected_at = self._clock()
            event(log, "backend ejected", logging.WARNING, backend=self.name, failures=s.call_failures)
            self._changed()

    def set_drained(self, drained: bool) -> None:
        """Operator maintenance."""
        self.status.drained = drained
        self._changed()
