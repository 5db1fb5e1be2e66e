"""Forwarding the Detector API: raw bytes through, a retry for unary calls, replay for streams.

Unary requests and responses pass as bytes, unparsed. Stream messages are forwarded as received too;
the router parses each only to read its frame_id (router.wire), which tells which frames are still
unanswered, and to refuse a request the worker could not parse either.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from common.logs import event
from router.config import RouterConfig
from router.controller import Backend, Controller
from router.wire import WireError, request_frame_id, response_frame_id

log = logging.getLogger("eagleeye.proxy")

SERVICE = "eagleeye.detector.v1.Detector"
# A frame whose backend failed this many times in a row is not replayed again: it may be what kills
# backends, and a replay storm must not take both down.
MAX_FRAME_ATTEMPTS = 3
UNARY_METHODS = ("Detect", "GetModelInfo")
STREAM_METHOD = "DetectStream"
# Headers gRPC sets itself; everything else (custom metadata, traceparent, grpc-trace-bin) passes.
_HOP_BY_HOP = frozenset({"content-type", "te", "user-agent", "grpc-timeout", "grpc-encoding",
                         "grpc-accept-encoding", "host", "authorization"})
# When the router traces, its own client interceptor writes these (as the child of its span).
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "grpc-trace-bin", "baggage"})
Metadata = tuple[tuple[str, str | bytes], ...]


def forwardable(metadata: Sequence[Any] | None, tracing: bool = False) -> Metadata:
    """The caller's metadata that should reach the backend (trace headers too, unless the router traces)."""
    out = []
    for item in metadata or ():
        key, value = item[0], item[1]
        if not key.startswith(":") and key not in _HOP_BY_HOP and not (tracing and key in TRACE_HEADERS):
            out.append((key, value))
    return tuple(out)


def _code_name(code: Any) -> str:
    """The name of what context.code() returns (a StatusCode, a number, or None when cancelled)."""
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return str(next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN"))
    return "CANCELLED"


def retriable(code: grpc.StatusCode) -> bool:
    """Failures that say "this backend, now", not "this request": worth a try elsewhere.

    CANCELLED counts: while the router still waits for the answer, its client did not cancel; the
    backend did (a worker shutting down cancels calls that arrive as it stops).
    """
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class Proxy:
    """The Detector methods, forwarded to the backend the controller picks."""

    def __init__(self, cfg: RouterConfig, controller: Controller,
                 channels: dict[Backend, grpc.aio.Channel] | None = None, tracing: bool = False) -> None:
        self._cfg = cfg
        self._controller = controller
        self.tracing = tracing
        channels = channels or {b: w.channel for b, w in controller.watchers.items()}
        self._unary = {(b, m): ch.unary_unary(f"/{SERVICE}/{m}") for b, ch in channels.items() for m in UNARY_METHODS}
        self._stream = {b: ch.stream_stream(f"/{SERVICE}/{STREAM_METHOD}") for b, ch in channels.items()}
        self.active_streams = 0

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler for the Detector service; other services are UNIMPLEMENTED by the server."""
        handlers: dict[str, grpc.RpcMethodHandler] = {
            m: grpc.unary_unary_rpc_method_handler(self._make_unary(m)) for m in UNARY_METHODS}
        handlers[STREAM_METHOD] = grpc.stream_stream_rpc_method_handler(self._detect_stream)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _unavailable_message(self) -> str:
        views = {b.value: w.view() for b, w in self._controller.watchers.items()}
        return (f"no backend can serve: router state {self._controller.decision.state.value} ("
                + "; ".join(f"{name}: {v.reason or 'ready'}" for name, v in views.items()) + ")")

    def _make_unary(self, method: str) -> Any:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.monotonic()
            try:
                response = await self._forward_unary(method, request, context)
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                self._controller.metrics.request(method, _code_name(code))
                raise
            self._controller.metrics.request(method, "OK", time.monotonic() - started)
            return response
        return handle

    async def _forward_unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        cfg, ctl = self._cfg, self._controller
        remaining = context.time_remaining()
        deadline = time.monotonic() + (remaining if remaining is not None else cfg.default_deadline_s)
        metadata = forwardable(context.invocation_metadata(), self.tracing)
        picked = ctl.pick()
        if picked is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._unavailable_message())
            raise AssertionError("unreachable")
        target: Backend = picked
        for attempt in (0, 1):
            left = deadline - time.monotonic()
            alternative = ctl.alternative(target) if attempt == 0 else None
            # A per-try timeout only makes sense when there is somewhere else to try.
            timeout = min(cfg.per_try_timeout_s, left) if alternative is not None else left
            started = time.monotonic()
            call = self._unary[(target, method)](request, timeout=max(timeout, 0.001), metadata=metadata)
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if not retriable(code):
                    await context.abort(code, e.details() or "")
                out_of_time = deadline - time.monotonic() <= 0.001
                if not (code == grpc.StatusCode.DEADLINE_EXCEEDED and out_of_time):
                    ctl.record(target, ok=False)
                if alternative is None or out_of_time:
                    await context.abort(code, e.details() or "")
                    raise AssertionError("unreachable") from None
                event(log, "retry", logging.DEBUG, method=method, failed=target.value, code=code.name,
                      to=alternative.value)
                ctl.retries += 1
                ctl.metrics.retry(target.value)
                target = alternative
                continue
            ctl.record(target, ok=True, latency_ms=(time.monotonic() - started) * 1000)
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(forwardable(trailing))
            return response
        raise AssertionError("unreachable")

    async def _detect_stream(self, requests: AsyncIterator[bytes],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.active_streams += 1
        try:
            async for answer in StreamSession(self, requests, context).run():
                yield answer
        finally:
            self.active_streams -= 1


@dataclass
class _Frame:
    data: bytes
    frame_id: int
    received_at: float
    sent_at: float = 0.0
    attempts: int = 1


class _Leg:
    """One backend call carrying a client stream; `generation` tells its events from older legs'."""

    def __init__(self, backend: Backend, call: grpc.aio.StreamStreamCall, generation: int) -> None:
        self.backend = backend
        self.call = call
        self.generation = generation
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        self.call.cancel()
        for t in self.tasks:
            t.cancel()


class StreamSession:
    """One client DetectStream: every frame answered exactly once, in order, across backend changes.

    Frames sent to a backend and not yet answered stay in `pending`. If the backend fails (the call
    ends with an error, its oldest frame waits past stream_frame_timeout_s, or health says it is not
    ready), a new leg opens on the other backend and `pending` is replayed there. When the weights
    say the stream belongs elsewhere (the ramp), it moves at a frame boundary: new frames wait in
    `held` until the old leg has answered everything, then go to the new one.
    """

    def __init__(self, proxy: Proxy, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        self._proxy = proxy
        self._cfg = proxy._cfg
        self._ctl = proxy._controller
        self._requests = requests
        self._context = context
        self._metadata = forwardable(context.invocation_metadata(), proxy.tracing)
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self._room = asyncio.Semaphore(self._cfg.max_stream_pending)
        self.pending: collections.deque[_Frame] = collections.deque()
        self.held: collections.deque[_Frame] = collections.deque()
        self._affinity = random.random() * 100
        self._leg: _Leg | None = None
        self._generation = 0
        self._client_done = False
        self._moving_to: Backend | None = None
        self.gave_up = ""

    async def _read_client(self) -> None:
        try:
            async for data in self._requests:
                await self._room.acquire()  # at most max_stream_pending frames in the router
                try:
                    fid = request_frame_id(data)
                except WireError as e:
                    self._events.put_nowait(("bad", 0, str(e)))
                    return
                self._events.put_nowait(("frame", 0, _Frame(data, fid, time.monotonic())))
        finally:
            self._events.put_nowait(("client_end", 0, None))

    def _open(self, backend: Backend, replay: bool) -> None:
        self._generation += 1
        timeout = None if self._deadline is None else max(0.001, self._deadline - time.monotonic())
        call = self._proxy._stream[backend](timeout=timeout, metadata=self._metadata)
        leg = _Leg(backend, call, self._generation)
        leg.tasks = [asyncio.create_task(self._send(leg)), asyncio.create_task(self._receive(leg))]
        self._leg = leg
        now = time.monotonic()
        if replay:
            for f in self.pending:
                f.sent_at = now
                leg.outbox.put_nowait(f.data)
        if self._client_done and not self.held:
            leg.outbox.put_nowait(None)

    async def _send(self, leg: _Leg) -> None:
        try:
            while (data := await leg.outbox.get()) is not None:
                await leg.call.write(data)
            await leg.call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the receive side reports how the call ended

    async def _receive(self, leg: _Leg) -> None:
        error: grpc.aio.AioRpcError | None = None
        try:
            async for data in leg.call:
                self._events.put_nowait(("answer", leg.generation, data))
        except grpc.aio.AioRpcError as e:
            error = e
        self._events.put_nowait(("leg_end", leg.generation, error))

    def _send_frame(self, frame: _Frame) -> None:
        assert self._leg is not None
        frame.sent_at = time.monotonic()
        self.pending.append(frame)
        self._leg.outbox.put_nowait(frame.data)

    def _fail_over(self, why: str, retriable_failure: bool = True) -> bool:
        """Move to the other backend, replaying pending frames; False when there is nowhere to go."""
        leg = self._leg
        assert leg is not None
        if retriable_failure:
            self._ctl.record(leg.backend, ok=False)
        leg.close()
        if retriable_failure and self.pending:
            if self.pending[0].attempts >= MAX_FRAME_ATTEMPTS:
                self.gave_up = (f"frame {self.pending[0].frame_id} failed on {MAX_FRAME_ATTEMPTS} backend "
                                "streams in a row; not replaying it again")
                return False
            for f in self.pending:
                f.attempts += 1
        target = self._ctl.alternative(leg.backend)
        if target is None and self._ctl.usable(leg.backend):
            target = leg.backend  # the only usable one: try it again
        if target is None:
            return False
        event(log, "stream moved", logging.INFO, reason=why, frm=leg.backend.value, to=target.value,
              replayed=len(self.pending))
        self._ctl.stream_migrations += 1
        self._ctl.metrics.migration("failure")
        self._moving_to = None
        for f in self.held:  # frames held for a graceful move go with the replay
            self.pending.append(f)
        self.held.clear()
        self._open(target, replay=True)
        return True

    def _finish_move(self) -> None:
        """The old leg answered everything: continue on the new backend with the held frames."""
        leg, target = self._leg, self._moving_to
        assert leg is not None and target is not None
        leg.outbox.put_nowait(None)
        event(log, "stream moved", logging.DEBUG, reason="weights", frm=leg.backend.value, to=target.value,
              replayed=0)
        self._ctl.stream_migrations += 1
        self._ctl.metrics.migration("rebalance")
        self._moving_to = None
        self._open(target, replay=False)
        held, self.held = self.held, collections.deque()
        for f in held:
            self._send_frame(f)
        if self._client_done:
            assert self._leg is not None
            self._leg.outbox.put_nowait(None)

    def _check_placement(self) -> bool:
        """Health and weights: fail over from an unusable backend, move gracefully off an unwanted one."""
        leg = self._leg
        assert leg is not None
        now = time.monotonic()
        if not self._ctl.usable(leg.backend):
            return self._fail_over(f"{leg.backend.value} not ready", retriable_failure=False)
        if self.pending and now - self.pending[0].sent_at > self._cfg.stream_frame_timeout_s:
            return self._fail_over(f"frame {self.pending[0].frame_id} unanswered for "
                                   f"{self._cfg.stream_frame_timeout_s:g} s")
        wanted = self._ctl.placement(self._affinity)
        if self._moving_to is None and wanted is not None and wanted is not leg.backend and self._ctl.usable(wanted):
            self._moving_to = wanted
            if not self.pending:
                self._finish_move()
        return True

    async def run(self) -> AsyncIterator[bytes]:
        """The answers to send the client, in order (an async generator, as gRPC handlers may be)."""
        target = self._ctl.placement(self._affinity)
        if target is None or not self._ctl.usable(target):
            target = self._ctl.pick()
        if target is None:
            await self._context.abort(grpc.StatusCode.UNAVAILABLE, self._proxy._unavailable_message())
        assert target is not None
        reader = asyncio.create_task(self._read_client())
        ticker = asyncio.create_task(self._tick(min(0.1, self._cfg.stream_frame_timeout_s / 4)))
        self._open(target, replay=False)
        try:
            async for answer in self._loop():
                yield answer
        finally:
            reader.cancel()
            ticker.cancel()
            if self._leg is not None:
                self._leg.close()

    async def _tick(self, interval: float) -> None:
        """A "tick" event every `interval`: placement and stalls are checked even while frames keep
        arriving and nothing is answered (a per-event timeout would never fire then, and would cost a
        task and a timer per frame)."""
        while True:
            await asyncio.sleep(interval)  # a periodic timer, not a wait for some other task
            self._events.put_nowait(("tick", 0, None))

    async def _loop(self) -> AsyncIterator[bytes]:
        while True:
            kind, generation, payload = await self._events.get()
            leg = self._leg
            assert leg is not None
            if kind == "frame":
                if self._moving_to is not None:
                    self.held.append(payload)
                else:
                    self._send_frame(payload)
            elif kind == "client_end":
                self._client_done = True
                if self._moving_to is None:
                    leg.outbox.put_nowait(None)
            elif kind == "bad":
                await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed DetectRequest: {payload}")
            elif kind == "answer" and generation == leg.generation:
                if self._answer(payload):
                    yield payload
                    if self._moving_to is not None and not self.pending:
                        self._finish_move()
            elif kind == "leg_end" and generation == leg.generation:
                error: grpc.aio.AioRpcError | None = payload
                if error is None and not self.pending and not self.held and self._client_done:
                    return  # the stream is complete
                # The backend's answer about the stream (INVALID_ARGUMENT, ...) goes to the client. UNKNOWN and
                # INTERNAL say the backend or the transport broke, not the frames: replay elsewhere (a frame
                # that breaks every backend is given up after MAX_FRAME_ATTEMPTS).
                if error is not None and not retriable(error.code()) and \
                        error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    await self._context.abort(error.code(), error.details() or "")
                why = f"{leg.backend.value} stream ended: " + (error.code().name if error else "no error")
                if not self._fail_over(why):
                    await self._context.abort(grpc.StatusCode.UNAVAILABLE,
                                              self.gave_up or self._proxy._unavailable_message())
            if kind in ("tick", "answer", "leg_end") and not self._check_placement():
                await self._context.abort(grpc.StatusCode.UNAVAILABLE,
                                          self.gave_up or self._proxy._unavailable_message())

    def _answer(self, data: bytes) -> bool:
        """Whether an answer is the one for the oldest pending frame (then it is no longer pending)."""
        try:
            fid = response_frame_id(data)
        except WireError:
            fid = -1
        if not self.pending or self.pending[0].frame_id != fid:
            # Not the answer the client waits for: it came from a replay overlap. Never deliver twice.
            return False
        frame = self.pending.popleft()
        self._room.release()
        assert self._leg is not None
        now = time.monotonic()
        self._ctl.record(self._leg.backend, ok=True, latency_ms=(now - frame.sent_at) * 1000)
        self._ctl.metrics.request(STREAM_METHOD, "OK", now - frame.received_at)
        return True
