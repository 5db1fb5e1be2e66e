"""Forwarding the Detector API: the shell that carries out router.unary's and router.stream's decisions.

Unary requests and responses pass as bytes, unparsed. Stream messages are forwarded as received too;
the router parses each only to read its frame_id (router.wire), which tells which frames are still
unanswered, and to refuse a request the worker could not parse either. Every timer is the router's
own (asyncio), not only gRPC's deadline: behind a partitioned connection that may not fire for
seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from eagleeye.api.names import DETECTOR_SERVICE, ORCA_TRAILER, REQUEST_DEFAULTS_KEY, RETRY_ELSEWHERE_KEY
from eagleeye.common.admission import Full, Slots, peer_key
from eagleeye.common.aio import PassGate
from eagleeye.common.errors import IncidentLog
from eagleeye.common.logs import event
from eagleeye.common.memory import LargeMessageReclaimer
from eagleeye.router import stream as st
from eagleeye.router import unary as un
from eagleeye.router.budget import RetryBudget
from eagleeye.router.config import RouterConfig
from eagleeye.router.controller import Controller
from eagleeye.router.fleet import Backend
from eagleeye.router.requestpolicy import RequestPolicy
from eagleeye.router.wire import WireError, parse_request, response_frame_id

log = logging.getLogger("eagleeye.proxy")

SERVICE = DETECTOR_SERVICE
UNARY_METHODS = ("Detect", "GetModelInfo")
STREAM_METHOD = "DetectStream"
# Headers gRPC sets itself; everything else (custom metadata, traceparent, grpc-trace-bin) passes.
# A worker's load report (common/loadreport.py) describes that worker, not the router: a client that
# balances router replicas by load must not read a worker's report as the replica's.
_HOP_BY_HOP = frozenset({"content-type", "te", "user-agent", "grpc-timeout", "grpc-encoding",
                         "grpc-accept-encoding", "host", "authorization", ORCA_TRAILER})
# When the router traces, its own client interceptor writes these (as the child of its span).
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "grpc-trace-bin", "baggage"})
Metadata = tuple[tuple[str, str | bytes], ...]
# A backend call ending with one of these says "this backend, now", not "this request".
# CANCELLED counts: while the router still waits for the answer, its client did not cancel; the
# backend did (a worker shutting down cancels calls that arrive as it stops).
_BACKEND_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                               grpc.StatusCode.CANCELLED})
# On a stream, UNKNOWN and INTERNAL say the backend or the transport broke, not the frames.
_STREAM_FAILURES = _BACKEND_FAILURES | {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_CODES = {c.name: c for c in grpc.StatusCode}
# The longest a unary call waits for room in its client's share and the router's window before it is
# refused RESOURCE_EXHAUSTED (or its deadline, if sooner): a burst of large requests is slowed, not refused.
UNARY_ROOM_WAIT_S = 5.0
DRAIN_BATCH = 64    # streams drained per loop pass at shutdown
# New streams set up per loop pass (about 0.3 ms each, most of it gRPC's call to the worker): a
# burst waits its turn over several passes instead of holding the loop in one.
STREAM_SETUPS_PER_PASS = 16
DRAIN_MESSAGE = ("router shutting down: every frame it read has been answered; reconnect (to another router "
                 "replica) and send the frames after the last answer")


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


def outcome(error: grpc.aio.AioRpcError | None) -> un.Outcome:
    """How a backend attempt ended, for the unary decisions."""
    if error is None:
        return un.Outcome.OK
    code = error.code()
    if code in _BACKEND_FAILURES:
        return un.Outcome.FAILED
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and \
            any(k == RETRY_ELSEWHERE_KEY for k, _ in (error.trailing_metadata() or ())):
        return un.Outcome.OVERLOADED
    return un.Outcome.FINAL


class Proxy:
    """The Detector methods, forwarded to the backends the controller's view allows."""

    def __init__(self, cfg: RouterConfig, controller: Controller, unary_channels: dict[Backend, grpc.aio.Channel],
                 stream_channels: dict[Backend, grpc.aio.Channel], tracing: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.controller = controller
        self.tracing = tracing
        self.unary_cfg = cfg.unary()
        self.stream_cfg = cfg.stream()
        self.budget = RetryBudget(cfg.budget())
        self.pool = st.BytePool(cfg.max_pending_bytes_total)
        self.pool.on_freed = self._pool_freed
        self._peer_pools: dict[str, st.BytePool] = {}  # each client's share, while it has calls or streams
        self._unary_sizes: dict[str, collections.deque[int]] = {}  # ... and its recent unary requests' sizes
        self._pool_waiters: set[asyncio.Event] = set()
        self.use_channels(unary_channels, stream_channels)
        self.clock = clock or asyncio.get_running_loop().time
        # Calls and streams held, in total and per client (address, with mTLS also its identity): one
        # client reaching its share is refused while the others notice nothing.
        self.unary_slots = Slots(cfg.max_concurrent_rpcs, cfg.max_concurrent_rpcs_per_peer)
        self.stream_slots = Slots(cfg.max_concurrent_streams, cfg.max_concurrent_streams_per_peer)
        self._sessions: set[StreamSession] = set()
        self.stream_setups = PassGate(STREAM_SETUPS_PER_PASS)
        controller.on_placement_change(self._fleet_changed)
        self.frames_read = 0          # stream frames read from clients ...
        self.frames_answered = 0      # ... and answers handed to them: equal once every stream has ended
        self.draining = False
        self.incidents = IncidentLog(log, where="router")
        self.request_policy = RequestPolicy(cfg.request_defaults)
        self.reclaimer = LargeMessageReclaimer()

    def fill_defaults(self, request: bytes, parsed: Any | None = None) -> tuple[bytes, str]:
        """`request` with the current state's request defaults for what it leaves unset, and the state
        whose defaults were applied ("" when none were)."""
        if not self.request_policy:
            return request, ""
        if parsed is None:
            try:
                parsed = parse_request(request)
            except WireError:
                return request, ""  # the worker refuses it with its own message
        state = self.controller.decision.state.value
        filled = self.request_policy.fill(state, parsed, request)
        if not filled.fields:
            return request, ""
        self.controller.metrics.defaults_applied(state)
        return filled.data, state

    def use_channels(self, unary_channels: dict[Backend, grpc.aio.Channel],
                     stream_channels: dict[Backend, grpc.aio.Channel]) -> None:
        """Make new calls on these channels (calls already open stay where they are)."""
        self.unary = {(b, m): ch.unary_unary(f"/{SERVICE}/{m}") for b, ch in unary_channels.items()
                      for m in UNARY_METHODS}
        self.streams = {b: ch.stream_stream(f"/{SERVICE}/{STREAM_METHOD}") for b, ch in stream_channels.items()}

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler for the Detector service; other services are UNIMPLEMENTED by the server."""
        handlers: dict[str, grpc.RpcMethodHandler] = {
            m: grpc.stream_unary_rpc_method_handler(self._make_unary(m)) for m in UNARY_METHODS}
        handlers[STREAM_METHOD] = grpc.stream_stream_rpc_method_handler(self._detect_stream)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def unavailable_message(self) -> str:
        """For the client: the router's state and an error id; the backends' reasons (with addresses and
        transport errors) go to the log under that id."""
        views = {b.value: w.view() for b, w in self.controller.watchers.items()}
        return self.incidents.report(
            f"no detector worker can serve: router state {self.controller.decision.state.value}",
            "; ".join(f"{name}: {v.reason or 'ready'}" for name, v in views.items()), logging.WARNING,
            what="no worker can serve")

    def client_details(self, code: grpc.StatusCode, details: str) -> str:
        """A backend's error text as the client may see it: a transport failure's text (addresses, core
        errors) is replaced by an error id; the worker's own messages pass (its internals carry ids)."""
        if code not in _STREAM_FAILURES or "error id" in details:
            return details
        return self.incidents.report(f"detector worker call failed ({code.name})", details, logging.WARNING,
                                     what="worker call failed")

    def _fleet_changed(self) -> None:
        """Every stream looks at health and placement now (an idle one has no timer to do it)."""
        for session in list(self._sessions):
            session.fleet_changed()

    async def drain(self) -> None:
        """Shutting down: every stream stops reading frames, gets the answers to those it sent already,
        then ends UNAVAILABLE with a message to reconnect; new streams are refused the same way.

        A few dozen streams at a time, the loop running between: thousands of them drained in one pass
        would hold it (health answers included) for as many times 0.1 ms."""
        self.draining = True
        for i, session in enumerate(list(self._sessions)):
            if session in self._sessions:   # not ended meanwhile
                session.drain(DRAIN_MESSAGE)
            if i % DRAIN_BATCH == DRAIN_BATCH - 1:
                await asyncio.sleep(0)      # let the loop run what is due before the next batch

    def peer_pool(self, peer: str) -> st.BytePool:
        """`peer`'s share of the router's bytes (max_pending_bytes_per_peer), while it holds a call or stream."""
        pool = self._peer_pools.get(peer)
        if pool is None:
            pool = self._peer_pools[peer] = st.BytePool(self.cfg.max_pending_bytes_per_peer, self.pool)
        return pool

    def peer_done(self, peer: str) -> None:
        """`peer` gave back a call or stream: forget its share once it holds none."""
        if not self.unary_slots.held_by(peer) and not self.stream_slots.held_by(peer):
            self._peer_pools.pop(peer, None)
            self._unary_sizes.pop(peer, None)

    def wait_for_pool(self, room: asyncio.Event) -> None:
        """Set `room` when the router-wide window has space again."""
        self._pool_waiters.add(room)

    def _pool_freed(self) -> None:
        waiters, self._pool_waiters = self._pool_waiters, set()
        for room in waiters:
            room.set()

    # -- unary -------------------------------------------------------------------------------------

    def _make_unary(self, method: str) -> Any:
        """A unary method served as a stream-request one (the same bytes on the wire): grpcio reads a unary
        request before any code of ours runs, so admission could only come after the bytes were in.
        Here the call takes its slot, and waits for room in its client's share and the router's window,
        before its request is read; until then the request waits in the client (HTTP/2 flow control)."""
        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            started = self.clock()
            try:
                peer = peer_key(context.peer(), context.peer_identities())
                refusal = self._take_unary_slot(peer)
                if refusal:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                size = 0
                try:
                    pool = self.peer_pool(peer)
                    request = await self._read_unary(requests, context, peer, pool)
                    size = len(request)
                    # The request, and gRPC's copy in the call to a backend (a hedge's or retry's replaces it).
                    held = st.COPIES_WHILE_SENT * len(request)
                    pool.take(held)  # held for retries and hedges until the call ends
                    try:
                        applied = ""
                        if method == "Detect":
                            request, applied = self.fill_defaults(request)
                        trailers = ((REQUEST_DEFAULTS_KEY, f"{applied}=1"),) if applied else ()
                        response = await UnaryForward(self, method, request, context, trailers).run()
                    finally:
                        pool.give(held)
                finally:
                    self.unary_slots.give_back(peer)
                    self.peer_done(peer)
                    self.reclaimer.released(size)
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                self.controller.metrics.request(method, _code_name(code))
                raise
            self.controller.metrics.request(method, "OK", self.clock() - started)
            return response
        return handle

    async def _read_unary(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, peer: str,
                          pool: st.BytePool) -> bytes:
        """Wait for room for a request as large as the client's recent ones, then read it."""
        sizes = self._unary_sizes.setdefault(peer, collections.deque(maxlen=st.RECENT_FRAMES))
        expected = st.COPIES_WHILE_SENT * max(sizes, default=self.stream_cfg.min_frame_reserve)
        remaining = context.time_remaining()
        limit = self.cfg.default_deadline_s if remaining is None else remaining
        if not pool.room_for(expected):  # (the common case, room at once, costs no event and no task)
            give_up = self.clock() + min(limit, UNARY_ROOM_WAIT_S)
            room = asyncio.Event()
            while True:
                room.clear()  # then check, then wait: a wake from here on is not lost
                self.wait_for_pool(room)
                if pool.room_for(expected):
                    break
                left = give_up - self.clock()
                if left <= 0:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        self._bytes_refusal(peer, pool, expected))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await room.wait()
        pool.take(expected)  # reserved while it is read: calls waiting together do not all find the same room
        try:
            async with asyncio.timeout(limit):
                request = await anext(aiter(requests))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"request message not received within {limit:g} s")
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
        finally:
            pool.give(expected)  # the caller takes what the request holds, before anything else runs
        sizes.append(len(request))
        return request

    def _bytes_refusal(self, peer: str, own: st.BytePool, size: int) -> str:
        if own.used and own.used + size > own.capacity:
            return (f"too many request bytes from one client: {peer} holds {own.used} bytes of unanswered "
                    f"requests and this one needs room for {size} (max_pending_bytes_per_peer {own.capacity}); "
                    "wait for answers before sending more")
        return (f"router busy: {self.pool.used} bytes of unanswered requests held, and this one needs room for "
                f"{size} (max_pending_bytes_total {self.pool.capacity}); retry with backoff")

    def _take_unary_slot(self, peer: str) -> str:
        """Why a new unary call is refused ("" when it is not, and its slot is taken)."""
        full = self.unary_slots.take(peer)
        if full is Full.PEER:
            return (f"too many unary calls from one client: {peer} has {self.cfg.max_concurrent_rpcs_per_peer} "
                    "in flight (max_concurrent_rpcs_per_peer); wait for answers before sending more")
        if full is Full.TOTAL:
            return (f"router busy: {self.cfg.max_concurrent_rpcs} unary calls in flight (max_concurrent_rpcs); "
                    "retry with backoff")
        return ""

    # -- streams -----------------------------------------------------------------------------------

    async def _detect_stream(self, requests: AsyncIterator[bytes],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if self.draining:
            self.controller.metrics.request(STREAM_METHOD, "UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
        peer = peer_key(context.peer(), context.peer_identities())
        full = self.stream_slots.take(peer)
        if full is not None:
            self.controller.metrics.request(STREAM_METHOD, "RESOURCE_EXHAUSTED")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"too many streams from one client: {peer} has {self.cfg.max_concurrent_streams_per_peer} open "
                "(max_concurrent_streams_per_peer); close idle streams or spread them over router replicas"
                if full is Full.PEER else f"router busy: {self.cfg.max_concurrent_streams} streams open "
                "(max_concurrent_streams); retry with backoff"))
        try:
            await self.stream_setups.turn()  # a burst of new streams is set up over several loop passes
            if self.draining:  # began while this stream waited for its turn
                self.controller.metrics.request(STREAM_METHOD, "UNAVAILABLE")
                await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
            self.controller.active_streams += 1
            session = StreamSession(self, requests, context, self.peer_pool(peer))
            self._sessions.add(session)
            try:
                async for answer in session.run():
                    yield answer
            finally:
                self._sessions.discard(session)
                session.release_reservation()   # at once, even before the abandoned session.run() is closed
                self.controller.active_streams -= 1
        finally:
            self.stream_slots.give_back(peer)
            self.peer_done(peer)


async def _settle(call: grpc.aio.UnaryUnaryCall[bytes, bytes]) -> tuple[bytes | None, grpc.aio.AioRpcError | None]:
    try:
        return await call, None
    except grpc.aio.AioRpcError as e:
        return None, e


def _unload(ctl: Controller, backend: Backend, _: object) -> None:
    ctl.load(backend, -1)


class UnaryForward:
    """One unary call: carries out router.unary's decisions with real backend calls and timers."""

    def __init__(self, proxy: Proxy, method: str, request: bytes, context: grpc.aio.ServicerContext,
                 trailers: Metadata = ()) -> None:
        self._proxy = proxy
        self._method = method
        self._request = request
        self._context = context
        self._trailers = trailers  # the router's own, added to the backend's

    async def run(self) -> bytes:
        proxy, ctl, ctx = self._proxy, self._proxy.controller, self._context
        now = proxy.clock()
        remaining = ctx.time_remaining()
        deadline = now + (remaining if remaining is not None else proxy.cfg.default_deadline_s)
        picked = ctl.pick()
        if picked is None:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, proxy.unavailable_message())
            raise AssertionError("unreachable")
        core = un.UnaryCall(proxy.unary_cfg, ctl, proxy.budget, deadline, size=len(self._request))
        metadata = forwardable(ctx.invocation_metadata(), proxy.tracing)
        calls: list[tuple[Backend, grpc.aio.UnaryUnaryCall[bytes, bytes]]] = []
        results: dict[int, tuple[bytes | None, grpc.aio.AioRpcError | None]] = {}
        running: dict[asyncio.Future[tuple[bytes | None, grpc.aio.AioRpcError | None]], int] = {}
        actions: list[un.Action] = core.start(picked, now)
        try:
            while True:
                for act in actions:
                    if isinstance(act, un.Send):
                        call = proxy.unary[(act.backend, self._method)](
                            self._request, timeout=max(deadline - proxy.clock(), 0.001), metadata=metadata)
                        calls.append((act.backend, call))
                        settle = asyncio.ensure_future(_settle(call))
                        ctl.load(act.backend, 1)
                        settle.add_done_callback(functools.partial(_unload, ctl, act.backend))
                        running[settle] = act.attempt
                        if act.why != "first":
                            self._count_extra(act)
                    elif isinstance(act, un.Cancel):
                        calls[act.attempt][1].cancel()
                        running = {f: i for f, i in running.items() if i != act.attempt}
                    elif isinstance(act, un.Observe):
                        if act.ok and act.latency_s is not None:
                            ctl.unary_answered(act.backend, act.latency_s)
                        else:
                            ctl.record(act.backend, act.ok, why=act.why)
                    elif isinstance(act, un.Refused):
                        ctl.metrics.budget_refused(act.why)
                    elif isinstance(act, un.Reply):
                        return await self._reply(calls[act.attempt][1], results[act.attempt])
                    elif isinstance(act, un.Expire):
                        await ctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        "deadline exceeded waiting for a detector worker")
                timer = core.next_timer()
                timeout = None if timer is None else max(0.0, timer - proxy.clock())
                done, _ = await asyncio.wait(running.keys(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                now = proxy.clock()
                actions = []
                for fut in done:
                    attempt = running.pop(fut)
                    if fut.cancelled():
                        continue
                    results[attempt] = fut.result()
                    actions += core.on_result(attempt, outcome(results[attempt][1]), now)
                if timer is not None and now >= timer:
                    actions += core.on_timer(max(now, timer))
        finally:
            for fut, attempt in running.items():
                calls[attempt][1].cancel()
                fut.cancel()

    def _count_extra(self, act: un.Send) -> None:
        ctl = self._proxy.controller
        slow = act.frm
        assert slow is not None
        if act.why == "hedge":
            ctl.hedges += 1
            ctl.metrics.hedge(slow.value)
        else:
            ctl.retries += 1
            ctl.metrics.retry(slow.value)
        event(log, act.why, logging.DEBUG, method=self._method, frm=slow.value, to=act.backend.value)

    async def _reply(self, call: grpc.aio.UnaryUnaryCall[bytes, bytes],
                     result: tuple[bytes | None, grpc.aio.AioRpcError | None]) -> bytes:
        response, error = result
        if error is not None:
            trailing = (*forwardable(error.trailing_metadata()), *self._trailers)
            if trailing:
                self._context.set_trailing_metadata(trailing)
            await self._context.abort(error.code(), self._proxy.client_details(error.code(), error.details() or ""))
            raise AssertionError("unreachable")
        assert response is not None
        trailing = (*forwardable(await call.trailing_metadata()), *self._trailers)
        if trailing:
            self._context.set_trailing_metadata(trailing)
        return response


class _Leg:
    """One backend call carrying a client stream."""

    def __init__(self, gen: int, backend: Backend, call: grpc.aio.StreamStreamCall[bytes, bytes],
                 ctl: Controller) -> None:
        self.gen = gen
        self.backend = backend
        self.call = call
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self._ctl: Controller | None = ctl
        ctl.load(backend, 1)  # an open leg is load on its worker until it ends

    def ended(self) -> None:
        if self._ctl is not None:
            self._ctl.load(self.backend, -1)
            self._ctl = None

    def close(self) -> None:
        self.call.cancel()
        for t in self.tasks:
            t.cancel()
        self.ended()


class StreamSession:
    """One client DetectStream: carries out router.stream's decisions with real legs, timers and flow control.

    Answers are handed to the client through a queue, so a client that stops reading does not stop
    the router from hearing its backend (a stall is judged on what the backend answered, not on what
    the client took); the window bounds that queue.
    """

    def __init__(self, proxy: Proxy, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext,
                 pool: st.BytePool) -> None:
        self._proxy = proxy
        self._ctl = proxy.controller
        self._requests = requests
        self._context = context
        self._metadata = forwardable(context.invocation_metadata(), proxy.tracing)
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else proxy.clock() + remaining
        self._core = st.StreamCore(proxy.stream_cfg, proxy.controller, proxy.budget, pool,
                                   affinity=random.random() * 100, deadline=self._deadline)
        self._legs: dict[int, _Leg] = {}
        self._out: asyncio.Queue[st.Deliver | st.Abort | st.Finish] = asyncio.Queue()
        self._room = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_due = 0.0
        self._side_tries: set[asyncio.Task[None]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._reading_since: float | None = None  # waiting for the client (a frame, or to take answers) since
        self._handler: asyncio.Task[object] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._delivering = False
        self._defaults_applied: dict[str, int] = {}  # router state -> frames filled in with its defaults
        self._reserved: Backend | None = None  # placed there, no leg yet (the load it counts for)

    async def run(self) -> AsyncIterator[bytes]:
        """The answers to send the client, in order (an async generator, as gRPC handlers may be)."""
        ctl, core = self._ctl, self._core
        target = ctl.place_new(core.place)
        if target is None or not ctl.usable(target):
            target = ctl.pick()
        if target is None:
            await self._context.abort(grpc.StatusCode.UNAVAILABLE, self._proxy.unavailable_message())
        assert target is not None
        # The worker's leg opens with the first frame (an idle or hostile client stream costs no worker a
        # stream); until then the stream counts as load where it was placed, so that a burst of new
        # streams still spreads over the workers.
        ctl.load(target, 1)
        self._reserved = target
        self._apply(core.begin(None, self._proxy.clock()))
        self._handler = asyncio.current_task()
        reader = self._reader = asyncio.create_task(self._read_client())
        try:
            while True:
                item = await self._out.get()
                if isinstance(item, st.Deliver):
                    self._delivering = True
                    yield item.data  # gRPC sends it before it asks for the next: a client not reading holds us here
                    self._delivering = False
                    core.on_client_took(item.size)
                    if self._reading_since is not None:
                        self._reading_since = self._proxy.clock()  # the client took an answer: not idle
                    self._update_room()
                elif isinstance(item, st.Finish):
                    self._set_trailers()
                    return
                else:
                    self._set_trailers()
                    code = _CODES.get(item.code, grpc.StatusCode.UNKNOWN)
                    await self._context.abort(code, item.message or self._proxy.unavailable_message())
        finally:
            self.release_reservation()
            reader.cancel()
            for timer in (self._timer, self._idle):
                if timer is not None:
                    timer.cancel()
            for leg in self._legs.values():
                leg.close()
            for task in self._side_tries:
                task.cancel()
            core.release()

    def fleet_changed(self) -> None:
        reserved = self._reserved
        if reserved is not None and (not self._ctl.usable(reserved) or self._ctl.leaving(reserved)):
            self.release_reservation()  # it will not go there: placement decides at its first frame
        self._apply(self._core.on_fleet_change(self._proxy.clock()))

    def drain(self, message: str) -> None:
        """Read no more frames (a frame half-received is not read: the client sends it again); answer the
        ones read, then end with UNAVAILABLE and `message`."""
        if self._reader is not None:
            self._reader.cancel()
        self._apply(self._core.on_drain(message, self._proxy.clock()))

    def _set_trailers(self) -> None:
        if self._defaults_applied:
            self._context.set_trailing_metadata(((REQUEST_DEFAULTS_KEY, ",".join(
                f"{state}={n}" for state, n in self._defaults_applied.items())),))

    # -- carrying out decisions --------------------------------------------------------------------

    def _apply(self, actions: list[st.Action]) -> None:
        for a in actions:
            if isinstance(a, st.Write):
                self._legs[a.gen].outbox.put_nowait(a.data)
            elif isinstance(a, st.Deliver):
                self._out.put_nowait(a)
                self._proxy.frames_answered += 1
                self._ctl.metrics.request(STREAM_METHOD, "OK", a.latency_s)
            elif isinstance(a, st.Answered):
                self._ctl.stream_answered(a.backend, a.latency_s, a.waited_s)
            elif isinstance(a, st.Open):
                self._open(a)
            elif isinstance(a, st.EndWrites):
                self._legs[a.gen].outbox.put_nowait(None)
            elif isinstance(a, st.Close):
                leg = self._legs.pop(a.gen, None)
                if leg is not None:
                    leg.close()
            elif isinstance(a, st.Failed):
                for _ in range(a.frames):
                    self._ctl.record(a.backend, False, why=a.why)
            elif isinstance(a, st.Moved):
                self._moved(a)
            elif isinstance(a, st.SideTry):
                task = asyncio.create_task(self._side_try(a))
                self._side_tries.add(task)
                task.add_done_callback(self._side_tries.discard)
            elif isinstance(a, st.Refused):
                self._ctl.metrics.budget_refused("side_try")
            else:  # Abort, Finish
                self._out.put_nowait(a)
        self._arm_timer()
        self._update_room()

    def release_reservation(self) -> None:
        """The stream's placement stops counting as load (its leg does, or it is over)."""
        if self._reserved is not None:
            self._ctl.load(self._reserved, -1)
            self._reserved = None

    def _open(self, a: st.Open) -> None:
        self.release_reservation()  # the leg is the load now
        timeout = None if self._deadline is None else max(0.001, self._deadline - self._proxy.clock())
        call = self._proxy.streams[a.backend](timeout=timeout, metadata=self._metadata)
        leg = _Leg(a.gen, a.backend, call, self._ctl)
        leg.tasks = [asyncio.create_task(self._send(leg)), asyncio.create_task(self._receive(leg))]  # send first
        self._legs[a.gen] = leg

    def _moved(self, a: st.Moved) -> None:
        ctl = self._ctl
        ctl.stream_migrations += 1
        ctl.metrics.migration("failure" if a.failure else "rebalance")
        if a.failure:
            ctl.replayed_frames += a.replayed
            ctl.metrics.replayed(a.replayed)
        event(log, "stream moved", logging.INFO if a.failure else logging.DEBUG, reason=a.reason,
              frm=a.frm.value, to=a.to.value, replayed=a.replayed)

    def _update_room(self) -> None:
        """Something changed that may give the reader room: it looks again (clear, check, wait)."""
        self._room.set()

    async def _wait_for_room(self) -> bool:
        """Until the window may take another frame (True), or the stream is over (False).

        The event only says "look again": it is cleared before every check, so a wake-up for another
        reason (the router-wide pool freed while this stream's own window is still full) is a wait, not
        a spin. While the window is full because the client does not take its answers, the idle clock
        runs as it does while the router waits for a frame.
        """
        core = self._core
        while True:
            self._room.clear()
            if core.finished:
                return False
            if core.has_room():
                return True
            if core.blocked_by_pool():
                self._proxy.wait_for_pool(self._room)
            if core.waiting_on_client():
                if self._reading_since is None:
                    self._await_client()
            else:
                self._reading_since = None
            await self._room.wait()

    def _arm_timer(self) -> None:
        at = self._core.next_timer()
        if at is None or (self._timer is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer_due = max(at, self._proxy.clock())  # a time already past is due now, not late
        self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._proxy.clock()
        self._ctl.woke(self._timer_due, now)
        self._apply(self._core.on_timer(max(now, self._timer_at)))

    # -- tasks -------------------------------------------------------------------------------------

    def _await_client(self) -> None:
        """The router now waits for the client (its next frame, or to take answers): end the stream if
        the client does nothing for stream_idle_timeout_s."""
        self._reading_since = self._proxy.clock()
        if self._idle is None:
            self._idle = asyncio.get_running_loop().call_at(
                self._reading_since + self._proxy.cfg.stream_idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self._reading_since is None:
            return  # not waiting for the client (the backend holds its frames, or it finished sending)
        limit = self._proxy.cfg.stream_idle_timeout_s
        if self._proxy.clock() - self._reading_since < limit * 0.999:
            self._idle = asyncio.get_running_loop().call_at(self._reading_since + limit, self._on_idle)
            return
        if self._delivering and self._handler is not None:
            # gRPC holds the handler in a send the client does not read: only cancelling ends it (the
            # client is not reading a status either); its window's bytes are freed at once.
            event(log, "stream ended", logging.INFO, reason=f"client took no answer for {limit:g} s "
                  "(stream_idle_timeout_s)", frames_held=self._core.held())
            self._handler.cancel()
            return
        self._out.put_nowait(st.Abort("DEADLINE_EXCEEDED", f"stream idle: no frame for {limit:g} s "
                                      "(stream_idle_timeout_s); open a new stream when frames resume"))

    async def _read_client(self) -> None:
        core = self._core
        frames = aiter(self._requests)
        while True:
            # Room first, then read: a frame is read only when the window may hold it (the first one too).
            if not await self._wait_for_room():
                return
            self._await_client()
            try:
                data = await anext(frames)
            except StopAsyncIteration:
                break
            self._reading_since = None
            if not self._take_frame(data):
                return
            del data  # the window holds the frame now; no other copy waits here with the next read
        self._reading_since = None
        self._apply(core.on_client_end(self._proxy.clock()))

    def _take_frame(self, data: bytes) -> bool:
        """Hand a frame read from the client to the core (False: it was malformed, the stream ends).

        The parsed message (a copy of the image) lives only in this call.
        """
        try:
            parsed = parse_request(data)
        except WireError as e:
            self._out.put_nowait(st.Abort("INVALID_ARGUMENT", f"malformed DetectRequest: {e}"))
            return False
        data, applied = self._proxy.fill_defaults(data, parsed)
        if applied:
            self._defaults_applied[applied] = self._defaults_applied.get(applied, 0) + 1
        self._proxy.frames_read += 1
        self._apply(self._core.on_frame(int(parsed.frame_id), data, self._proxy.clock()))
        return True

    async def _send(self, leg: _Leg) -> None:
        try:
            while (data := await leg.outbox.get()) is not None:
                await leg.call.write(data)
            await leg.call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the receive side reports how the call ended

    async def _receive(self, leg: _Leg) -> None:
        code, details, failure = "OK", "", True
        try:
            async for data in leg.call:
                try:
                    fid, elsewhere = response_frame_id(data)
                except WireError:
                    fid, elsewhere = -1, False
                self._apply(self._core.on_answer(leg.gen, fid, data, elsewhere, self._proxy.clock()))
        except grpc.aio.AioRpcError as e:
            code, details = e.code().name, e.details() or ""
            failure = e.code() in _STREAM_FAILURES
        # The call is over: its sender may still wait for a frame that will never come (the leg is no
        # longer in _legs, so nothing else would end it, and asyncio destroys such a task while pending).
        leg.tasks[0].cancel()
        leg.ended()
        if self._legs.get(leg.gen) is leg:
            del self._legs[leg.gen]
        self._apply(self._core.on_leg_end(leg.gen, failure, code, details, self._proxy.clock()))

    async def _side_try(self, a: st.SideTry) -> None:
        """A frame a full worker queue refused, as a unary Detect on the other worker."""
        proxy = self._proxy
        timeout = proxy.unary_cfg.per_try_timeout_s
        started = proxy.clock()
        answer: bytes | None = None
        try:
            call = proxy.unary[(a.backend, "Detect")](a.data, timeout=timeout, metadata=self._metadata)
            async with asyncio.timeout(timeout):
                answer = await call
            self._ctl.unary_answered(a.backend, proxy.clock() - started)
        except (grpc.aio.AioRpcError, TimeoutError):
            pass  # the first worker's refusal stands
        self._ctl.retries += 1
        self._ctl.metrics.retry(a.frm.value)
        self._apply(self._core.on_side_result(a.fid, answer, proxy.clock()))


