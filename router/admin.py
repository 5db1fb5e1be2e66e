"""The admin service: the router's state and switch events, and authenticated maintenance actions.

Served on its own listener (--admin-listen), never on the client port. Every call, reads included, is
logged once at INFO or above with the peer, the action and the outcome (never the token).

The exception: calls refused unchecked while their peer's failure turn runs (below) are logged once
per turn, since a guessing loop makes thousands a second and each would be a WARNING line.

Reads need no token: GetState, and WatchEvents, so that dashboards and scripts can follow the switches.
The actions (SetDrain, Switch) need it, and a WatchEvents that presents one has it checked (it is then
an operator's stream); GetState ignores it (its answer is the same either way). A wrong token is
answered after `admin_auth_failure_delay_s` and books its peer a turn that long in one failure slot
(router/adminaccess.py): the peer's next token is not looked at before that turn ends, so neither a
short deadline nor concurrency makes guessing faster than one token per delay.

Why event streams without a token are capped rather than refused: following the switches is a read,
and a read should not need the secret that moves traffic. But such a stream is long-lived, and the
listener takes only ADMIN_MAX_CALLS_PER_PEER calls of one client at once (and ADMIN_MAX_CALLS in all),
so a dashboard host's followers would have locked its operators out.
They have bounds of their own (`admin_max_anonymous_streams`, at most half the listener's calls, and
`admin_max_anonymous_streams_per_peer`), past which a new one is refused with RESOURCE_EXHAUSTED naming
the setting. Operators' streams (with the token) and unary calls are not counted against them, so
they always find a slot. A WatchEvents that presents a wrong token is refused, not served as one
without: otherwise a full anonymous bound would tell a right token from a wrong one at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from eagleeye.api.router.v1 import router_pb2 as pb
from eagleeye.api.router.v1 import router_pb2_grpc as pb_grpc
from eagleeye.common.admission import Full, Slots, peer_key
from eagleeye.common.logs import event
from eagleeye.common.printable import printable
from eagleeye.router.adminaccess import AdminLimits, FailurePacing
from eagleeye.router.controller import Controller, SwitchEvent
from eagleeye.router.fleet import Backend
from eagleeye.router.xds import resources as xds
from eagleeye.router.xds.server import XdsPublisher

log = logging.getLogger("eagleeye.admin")

_BACKENDS: dict[int, Backend] = {pb.BACKEND_PRIMARY: Backend.PRIMARY, pb.BACKEND_STANDBY: Backend.STANDBY}


def event_pb(e: SwitchEvent) -> pb.SwitchEvent:
    return pb.SwitchEvent(time_unix=e.time_unix, from_state=e.from_state, to_state=e.to_state, reason=e.reason,
                          detection_ms=e.detection_ms or 0.0, primary_weight=e.primary_weight,
                          standby_weight=e.standby_weight, latency_before_ms=e.latency_before_ms or 0.0,
                          latency_after_ms=e.latency_after_ms or 0.0, worker=e.worker)


class AdminServicer(pb_grpc.RouterAdminServicer):
    """Reads need nothing; actions need the token given to the router (--admin-token)."""

    def __init__(self, controller: Controller, token: str, limits: AdminLimits,
                 xds: XdsPublisher | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._ctl = controller
        self._xds = xds
        self._token = token
        self._limits = limits
        self._clock = clock
        self._pacing = FailurePacing(limits.auth_failure_delay_s)
        self._anonymous = Slots(limits.max_anonymous_streams, limits.max_anonymous_streams_per_peer)

    def state(self) -> pb.RouterState:
        ctl, d = self._ctl, self._ctl.decision
        backends = []
        for backend, watcher in ctl.watchers.items():
            view, s = watcher.view(), watcher.status
            backends.append(pb.BackendHealth(
                backend=pb.BACKEND_PRIMARY if backend.primary else pb.BACKEND_STANDBY, name=backend.value,
                address=watcher.address, ready=view.ready, headroom=view.headroom,
                reason=view.reason, watch_connected=s.watch_connected, consecutive_check_failures=s.check_failures,
                consecutive_healthy_checks=s.healthy_checks, ejected=s.ejected_at is not None, drained=s.drained,
                weight=ctl.weight(backend), outstanding=ctl.outstanding(backend)))
            reported = watcher.reported_load()
            if reported is not None:
                backends[-1].reported_utilization = reported.utilization
                if reported.queue is not None:
                    backends[-1].reported_queue = reported.queue
        state = pb.RouterState(state=d.state.value, backends=backends,
                               recent_events=[event_pb(e) for e in ctl.events],
                               hold_down_remaining_s=d.hold_down_remaining_s, ramp_progress=d.ramp_progress,
                               next_hold_down_s=d.next_hold_down_s)
        if self._xds is not None:
            snap = self._xds.snapshot
            state.xds_endpoints_version = snap.versions[xds.ENDPOINTS] if snap else ""
            for c in self._xds.clients.values():
                eds = c.session.types.get(xds.ENDPOINTS)
                state.xds_clients.append(pb.XdsClient(  # a client's own text: printable and cut
                    node_id=printable(c.session.node_id), peer=c.peer, user_agent=printable(c.session.user_agent),
                    connected_unix=c.connected_unix, endpoints_version=printable(eds.acked_version) if eds else "",
                    nack="; ".join(f"{xds.SHORT[t]}: {printable(s.nack)}" for t, s in c.session.types.items()
                                   if s.nack)))
        return state

    async def _authorize(self, context: grpc.aio.ServicerContext, action: str) -> None:
        """Return only for the router's token; refuse anything else (a wrong token after the delay)."""
        if not self._token:
            _audit(context, action, "refused: no admin token configured")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "maintenance actions are disabled: start the router with --admin-token")
        peer, now = _peer(context), self._clock()
        wait = self._pacing.may_check(peer, now)
        if wait is not None:
            why = ("too many clients with a failed admin authentication" if wait.crowded else
                   "a failed admin authentication from this client")
            if not wait.quiet:  # the first refusal of a turn is logged, the rest of that turn's are not
                _audit(context, action, f"refused: {why} (token not checked; more such calls until "
                       f"{max(wait.until - now, 0.0):.1f} s from now are refused without a line)", logging.WARNING)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{why} is still being paced (one per {self._limits.auth_failure_delay_s:g} s, "
                                f"setting admin_auth_failure_delay_s): token not checked; retry in "
                                f"{max(wait.until - now, 0.0):.1f} s")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), f"Bearer {self._token}".encode()):
            return
        # The turn is booked before any await: a caller that stops waiting still spends it.
        answer_at = self._pacing.failed(peer, now)
        _audit(context, action, "refused: missing or wrong token", logging.WARNING)
        await asyncio.sleep(max(answer_at - self._clock(), 0.0))
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong admin token (metadata 'authorization: Bearer TOKEN')")

    async def _backend(self, value: int, context: grpc.aio.ServicerContext, action: str) -> Backend:
        backend = _BACKENDS.get(value)
        if backend is None:
            _audit(context, action, "refused: backend must be PRIMARY or STANDBY")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "backend must be PRIMARY or STANDBY")
            raise AssertionError("unreachable")
        return backend

    async def GetState(self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext) -> pb.GetStateResponse:
        _audit(context, "GetState", "ok")
        return pb.GetStateResponse(state=self.state())

    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEventsResponse]:
        action, peer = "WatchEvents", _peer(context)
        anonymous = "authorization" not in dict(context.invocation_metadata() or ())
        if not anonymous:
            await self._authorize(context, action)
        elif (full := self._anonymous.take(peer)) is not None:
            why = self._stream_refusal(full, peer)
            _audit(context, action, f"refused: {why}")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{why}; present the admin token (metadata 'authorization: Bearer TOKEN'), or "
                                "close an event stream and retry")
        queue: asyncio.Queue[SwitchEvent] | None = None
        try:
            _audit(context, action, "following, without a token" if anonymous else "following")
            queue = self._ctl.subscribe()
            recent = list(self._ctl.events)[-request.replay_recent:] if request.replay_recent else []
            for e in recent:
                yield pb.WatchEventsResponse(event=event_pb(e))
            while True:
                yield pb.WatchEventsResponse(event=event_pb(await queue.get()))
        finally:
            if queue is not None:
                self._ctl.unsubscribe(queue)
            if anonymous:
                self._anonymous.give_back(peer)

    def _stream_refusal(self, full: Full, peer: str) -> str:
        """Why an event stream without a token is refused, naming the bound it met."""
        limits = self._limits
        if limits.max_anonymous_streams == 0:
            return "event streams need the admin token on this router (setting admin_max_anonymous_streams = 0)"
        if full is Full.PEER:
            return (f"too many event streams without a token from one client ({peer} holds "
                    f"{limits.max_anonymous_streams_per_peer}, setting admin_max_anonymous_streams_per_peer)")
        return (f"too many event streams without a token on this router (limit {limits.max_anonymous_streams}, "
                "setting admin_max_anonymous_streams)")

    async def SetDrain(self, request: pb.SetDrainRequest,
                       context: grpc.aio.ServicerContext) -> pb.SetDrainResponse:
        target = printable(request.worker) if request.worker else _backend_name(request.backend)
        action = f"{'drain' if request.drained else 'undrain'} {target}"
        await self._authorize(context, action)
        if request.worker:
            found = [b for b in self._ctl.watchers if b.value == request.worker]
            if not found:
                names = ", ".join(b.value for b in self._ctl.watchers)
                _audit(context, action, "refused: no such worker")
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no worker named {target!r}; the router's: {names}")
            backend = found[0]
        else:
            backend = await self._backend(request.backend, context, action)
        self._ctl.set_drain(backend, request.drained)
        _audit(context, action, "done", logging.WARNING)
        return pb.SetDrainResponse(state=self.state())

    async def Switch(self, request: pb.SwitchRequest, context: grpc.aio.ServicerContext) -> pb.SwitchResponse:
        action = f"switch {_backend_name(request.to)}{' (forced)' if request.force else ''}"
        await self._authorize(context, action)
        backend = await self._backend(request.to, context, action)
        if backend is Backend.STANDBY and not request.force:
            views = [self._ctl.watchers[b].view() for b in self._ctl.members(backend)]
            if not any(v.ready for v in views):
                why = "; ".join(v.reason for v in views if v.reason) or "not ready"
                _audit(context, action, f"refused: standby not ready ({why})")
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"standby is not ready ({why}): switching would leave no backend to serve; "
                                    "fix the standby first, or set force to switch anyway")
        self._ctl.switch_to(backend)
        _audit(context, action, "done", logging.WARNING)
        return pb.SwitchResponse(state=self.state())


def _backend_name(value: int) -> str:
    """`primary`, `standby`, or the number a peer sent that names no backend."""
    backend = _BACKENDS.get(value)
    return backend.value if backend is not None else f"backend {value}"


def _peer(context: grpc.aio.ServicerContext) -> str:
    """What a caller counts as for the admin API's bounds (common/admission.peer_key)."""
    return peer_key(context.peer(), context.peer_identities())


def _audit(context: grpc.aio.ServicerContext, action: str, outcome: str, level: int = logging.INFO) -> None:
    """One log line per admin call: who, what, how it ended."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name") or []
    event(log, "admin call", level, peer=context.peer(), identity=", ".join(
        n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names) or None,
        action=action, outcome=outcome)
