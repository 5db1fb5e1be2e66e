"""Zero-hop mode, the shell: the ADS service on --xds-listen, fed by the controller's decisions.

After every re-evaluation of the policy the snapshot is rebuilt (router.xds.build, cheap) and, when a
type's content changed, pushed to every connected client at once. Each stream has a reader, which
takes the client's requests as they come and keeps none, and a writer, which writes one response at a
time, built when it is written (router/xds/session.py): a client that does not read holds no queue
here, whatever it writes; it is sent the latest state when it reads again (pushes coalesce).
Backend host names are resolved to IP addresses here (xDS clients take endpoints as addresses),
every `RESOLVE_INTERVAL_S` and whenever a backend's readiness changes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from eagleeye.api.router.xds.v3 import xds_pb2 as x
from eagleeye.common.admission import Full, Slots, peer_key
from eagleeye.common.cli import parse_host_port
from eagleeye.common.logs import event
from eagleeye.common.printable import printable
from eagleeye.router.controller import Controller
from eagleeye.router.fleet import Backend
from eagleeye.router.xds import resources as xds
from eagleeye.router.xds.session import AdsSession

log = logging.getLogger("eagleeye.xds")

ADS_PATH = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHOD = "StreamAggregatedResources"
RESOLVE_INTERVAL_S = 5.0
SETTLE_LIMIT_S = 2.0      # the longest a client waits for the router's first view of the workers
# gRPC's xDS clients send their first DiscoveryRequest as they open the stream: a stream without one
# this long after it opened is a client that holds a slot and asks for nothing, and is ended.
FIRST_REQUEST_TIMEOUT_S = 10.0


@dataclass
class ClientInfo:
    """One connected xDS client, as `eagleeye status` and the metrics show it."""

    peer: str
    session: AdsSession
    connected_unix: float


class XdsPublisher:
    """The ADS server's state: the current snapshot and the connected clients."""

    def __init__(self, controller: Controller, name: str, addresses: dict[Backend, str], num_retries: int,
                 max_clients: int, meter: metrics.Meter | None = None,
                 clock: Callable[[], float] = time.monotonic, max_clients_per_peer: int | None = None) -> None:
        self._ctl = controller
        self.name = name
        self._targets = addresses
        self._num_retries = num_retries
        self._max_clients = max_clients
        self._slots = Slots(max_clients, max_clients_per_peer or max_clients)
        self._clock = clock
        self._started = clock()
        self._resolved: dict[Backend, tuple[tuple[str, int], ...]] = {}
        self._ready_seen: dict[Backend, bool] = {}
        self.snapshot: xds.Snapshot | None = None
        self.clients: dict[int, ClientInfo] = {}
        self._wakers: set[asyncio.Event] = set()
        self.pushes: collections.Counter[str] = collections.Counter()
        self.nacks = 0
        controller.on_decision(self.refresh)
        self._instruments(meter or metrics.NoOpMeter("eagleeye"))

    def current_clients(self) -> int:
        """Clients that have applied the current assignment."""
        if self.snapshot is None:
            return 0
        version = self.snapshot.versions[xds.ENDPOINTS]
        return sum(1 for c in self.clients.values()
                   if (ts := c.session.types.get(xds.ENDPOINTS)) is not None and ts.acked_version == version)

    def _instruments(self, meter: metrics.Meter) -> None:
        def clients(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(len(self.clients), {"version": "any"}),
                    Observation(self.current_clients(), {"version": "current"})]

        def pushes(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self.pushes[t], {"type": t}) for t in xds.SHORT.values()]

        meter.create_observable_gauge(
            "eagleeye_router_xds_clients", [clients], unit="1",
            description="xDS clients connected (version=any), and those that applied the current assignment "
                        "(version=current)")
        meter.create_observable_counter("eagleeye_router_xds_responses", [pushes], unit="1",
                                        description="xDS responses sent to clients, by resource type")
        meter.create_observable_counter("eagleeye_router_xds_nacks", [lambda _: [Observation(self.nacks)]],
                                        unit="1", description="xDS responses a client refused (NACK)")

    # -- the snapshot ------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Whether the router knows enough to answer: each backend's Watch has answered or failed."""
        if self._clock() - self._started >= SETTLE_LIMIT_S:
            return True
        return all(w.status.watch_connected or w.status.watch_error for w in self._ctl.watchers.values())

    def refresh(self) -> None:
        """Rebuild the snapshot from the controller's decision; wake the streams when it changed."""
        if len(self._resolved) < len(self._targets) or not self.settled():
            return  # every backend's name looked up once, and the view settled: never a partial state
        ctl, d = self._ctl, self._ctl.decision
        facts = {}
        for b, w in ctl.watchers.items():
            view = w.view()
            if self._ready_seen.get(b) is not None and self._ready_seen[b] != view.ready:
                asyncio.get_running_loop().create_task(self._resolve_one(b))  # a restarted worker may have moved
            self._ready_seen[b] = view.ready
            facts[b] = xds.BackendFacts(self._resolved.get(b, ()), view.ready, w.status.drained or ctl.leaving(b))
        weights = {b: ctl.weight(b) for b in ctl.watchers}
        snap = xds.build(self.name, d.state, weights, facts, self._num_retries)
        if self.snapshot is not None and snap.versions == self.snapshot.versions:
            return
        if self.snapshot is None or snap.versions[xds.ENDPOINTS] != self.snapshot.versions[xds.ENDPOINTS]:
            event(log, "xds assignment", logging.INFO, version=snap.versions[xds.ENDPOINTS], state=d.state.value,
                  **{b.value: f"{p.weight}% {x.HealthStatus.Name(p.health)} p{p.priority}"
                     for b, p in xds.placements(d.state, weights, facts).items()})
        self.snapshot = snap
        for waker in self._wakers:
            waker.set()

    def set_targets(self, targets: dict[Backend, str]) -> None:
        """The workers changed (router/membership.py): resolve the new ones, forget the removed ones."""
        for gone in set(self._targets) - set(targets):
            self._resolved.pop(gone, None)
            self._ready_seen.pop(gone, None)
        new = set(targets) - set(self._targets)
        self._targets = dict(targets)
        for b in new:
            asyncio.get_running_loop().create_task(self._resolve_one(b))
        self.refresh()

    async def _resolve_one(self, backend: Backend) -> None:
        target = self._targets.get(backend)
        if target is None:
            return  # removed meanwhile
        host, port = parse_host_port(backend.value, target)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            if backend not in self._targets:
                return
            if self._resolved.get(backend) != ():  # once per outage, not every RESOLVE_INTERVAL_S
                event(log, "xds resolve failed", logging.WARNING, backend=backend.value, host=host, error=str(e))
            self._resolved[backend] = ()
            self.refresh()  # offered to nobody until its name resolves
            return
        addresses = tuple(sorted({(str(info[4][0]), int(info[4][1])) for info in infos}))
        if backend not in self._targets:
            return
        if addresses != self._resolved.get(backend):
            self._resolved[backend] = addresses
            event(log, "xds endpoints", backend=backend.value, addresses=[f"{h}:{p}" for h, p in addresses])
        self.refresh()

    async def run(self) -> None:
        """Resolve the backends' names now and every RESOLVE_INTERVAL_S; settle the first snapshot."""
        while True:
            await asyncio.gather(*(self._resolve_one(b) for b in self._targets))
            for _ in range(int(RESOLVE_INTERVAL_S / 0.1)):
                if self.snapshot is None:
                    self.refresh()  # until the view settles (or SETTLE_LIMIT_S passes)
                await asyncio.sleep(0.1)  # a polling period for name resolution, not a synchronisation

    # -- the ADS streams ---------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(ADS_PATH, {ADS_METHOD: grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=x.DiscoveryRequest.FromString,
            response_serializer=x.DiscoveryResponse.SerializeToString)})

    async def _stream(self, requests: AsyncIterator[x.DiscoveryRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[x.DiscoveryResponse]:
        peer = peer_key(context.peer(), context.peer_identities())
        if (full := self._slots.take(peer)) is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"control plane busy: {self._max_clients} xDS clients connected (xds_max_clients)"
                if full is Full.TOTAL else f"too many xDS streams from one client ({peer} holds "
                f"{self._slots.held_by(peer)}, xds_max_clients_per_peer)"))
        session = AdsSession()
        info = ClientInfo(context.peer(), session, time.time())
        key = id(info)
        self.clients[key] = info
        wake = asyncio.Event()
        self._wakers.add(wake)
        reader = asyncio.create_task(self._read(requests, session, info, wake))
        try:
            while not reader.done():  # the client's requests ended, or one broke a limit
                wake.clear()  # then check, then wait: a wake from here on is not lost
                self._sync(session)
                response = session.next_response()
                if response is None:
                    await wake.wait()
                    continue
                # Waits while the client does not read; meanwhile requests and snapshots only change what
                # is due next, so nothing piles up here (one response in gRPC's hands at most).
                yield self._count(response)
            refused = "" if reader.cancelled() or reader.exception() is not None else reader.result()
            if refused:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        finally:
            reader.cancel()
            self._wakers.discard(wake)
            del self.clients[key]
            self._slots.give_back(peer)
            event(log, "xds client gone", node=session.node_id, peer=info.peer, nacks=session.nacks)

    def _sync(self, session: AdsSession) -> None:
        if self.snapshot is not None and self.snapshot is not session.snapshot:
            session.on_snapshot(self.snapshot)

    async def _read(self, requests: AsyncIterator[x.DiscoveryRequest], session: AdsSession, info: ClientInfo,
                    wake: asyncio.Event) -> str:
        """Take the client's requests as they come (none is kept); why the stream must end, or ""."""
        try:
            first, incoming = True, aiter(requests)
            try:
                opening = await asyncio.wait_for(anext(incoming), FIRST_REQUEST_TIMEOUT_S)
            except TimeoutError:  # ("xds client gone" logs it, as for every stream)
                return f"no DiscoveryRequest within {FIRST_REQUEST_TIMEOUT_S:g} s of opening the stream"
            except StopAsyncIteration:
                return ""
            async for req in _chain(opening, incoming):
                outcome = session.on_request(req, self._clock())
                if first:
                    first = False
                    event(log, "xds client", node=session.node_id, user_agent=session.user_agent, peer=info.peer)
                if outcome.nack is not None:
                    self.nacks += 1
                if outcome.log_nack:
                    event(log, "xds nack", logging.WARNING, node=session.node_id, type=xds.SHORT[req.type_url],
                          version=printable(req.version_info), error=outcome.nack, suppressed=outcome.suppressed)
                if outcome.refused:
                    event(log, "xds client refused", logging.WARNING, node=session.node_id, peer=info.peer,
                          reason=outcome.refused)
                    return outcome.refused
                self._sync(session)
                if session.due():
                    wake.set()
            return ""
        finally:
            wake.set()

    def _count(self, response: x.DiscoveryResponse) -> x.DiscoveryResponse:
        self.pushes[xds.SHORT[response.type_url]] += 1
        return response


async def _chain(first: x.DiscoveryRequest,
                 rest: AsyncIterator[x.DiscoveryRequest]) -> AsyncIterator[x.DiscoveryRequest]:
    yield first
    async for req in rest:
        yield req
