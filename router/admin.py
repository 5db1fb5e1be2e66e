"""The admin service: the router's state and switch events, and authenticated maintenance actions.

Served on its own listener (--admin-listen), never on the client port. Every call is logged once with
the peer, the action and the outcome (never the token); failed authentications are answered one at a
time, each after `admin_auth_failure_delay_s`, so guessing the token costs hours whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator

import grpc

from eagleeye.common.logs import event
from eagleeye.router.controller import Controller, SwitchEvent
from eagleeye.router.fleet import Backend
from eagleeye.router.v1 import router_pb2 as pb
from eagleeye.router.v1 import router_pb2_grpc as pb_grpc
from eagleeye.router.xds import resources as xds
from eagleeye.router.xds.server import XdsPublisher

log = logging.getLogger("eagleeye.admin")

_BACKENDS: dict[int, Backend] = {pb.BACKEND_PRIMARY: Backend.PRIMARY, pb.BACKEND_STANDBY: Backend.STANDBY}
_TO_PB: dict[Backend, pb.Backend] = {Backend.PRIMARY: pb.BACKEND_PRIMARY, Backend.STANDBY: pb.BACKEND_STANDBY}


def event_pb(e: SwitchEvent) -> pb.SwitchEvent:
    return pb.SwitchEvent(time_unix=e.time_unix, from_state=e.from_state, to_state=e.to_state, reason=e.reason,
                          detection_ms=e.detection_ms or 0.0, primary_weight=e.primary_weight,
                          standby_weight=e.standby_weight, latency_before_ms=e.latency_before_ms or 0.0,
                          latency_after_ms=e.latency_after_ms or 0.0)


class AdminServicer(pb_grpc.RouterAdminServicer):
    """Reads need nothing; actions need the token given to the router (--admin-token)."""

    def __init__(self, controller: Controller, token: str, failed_auth_delay_s: float,
                 xds: XdsPublisher | None = None) -> None:
        self._ctl = controller
        self._xds = xds
        self._token = token
        self._failed_auth_delay_s = failed_auth_delay_s
        self._failed_auth = asyncio.Lock()  # failed attempts are answered one at a time

    def state(self) -> pb.RouterState:
        ctl, d = self._ctl, self._ctl.decision
        backends = []
        for backend, watcher in ctl.watchers.items():
            view, s = watcher.view(), watcher.status
            backends.append(pb.BackendHealth(
                backend=_TO_PB[backend], address=watcher.address, ready=view.ready, headroom=view.headroom,
                reason=view.reason, watch_connected=s.watch_connected, consecutive_check_failures=s.check_failures,
                consecutive_healthy_checks=s.healthy_checks, ejected=s.ejected_at is not None, drained=s.drained,
                weight=ctl.weight(backend)))
        state = pb.RouterState(state=d.state.value, backends=backends,
                               recent_events=[event_pb(e) for e in ctl.events],
                               hold_down_remaining_s=d.hold_down_remaining_s, ramp_progress=d.ramp_progress,
                               next_hold_down_s=d.next_hold_down_s)
        if self._xds is not None:
            snap = self._xds.snapshot
            state.xds_endpoints_version = snap.versions[xds.ENDPOINTS] if snap else ""
            for c in self._xds.clients.values():
                eds = c.session.types.get(xds.ENDPOINTS)
                state.xds_clients.append(pb.XdsClient(
                    node_id=c.session.node_id, peer=c.peer, user_agent=c.session.user_agent,
                    connected_unix=c.connected_unix, endpoints_version=eds.acked_version if eds else "",
                    nack="; ".join(f"{xds.SHORT[t]}: {s.nack}" for t, s in c.session.types.items() if s.nack)))
        return state

    async def _authorize(self, context: grpc.aio.ServicerContext, action: str) -> None:
        if not self._token:
            _audit(context, action, "refused: no admin token configured")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "maintenance actions are disabled: start the router with --admin-token")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given).encode(), f"Bearer {self._token}".encode()):
            _audit(context, action, "refused: missing or wrong token", logging.WARNING)
            async with self._failed_auth:
                await asyncio.sleep(self._failed_auth_delay_s)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong admin token (metadata 'authorization: Bearer TOKEN')")

    async def _backend(self, value: int, context: grpc.aio.ServicerContext) -> Backend:
        backend = _BACKENDS.get(value)
        if backend is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "backend must be PRIMARY or STANDBY")
            raise AssertionError("unreachable")
        return backend

    async def GetState(self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext) -> pb.GetStateResponse:
        _audit(context, "GetState", "ok", logging.DEBUG)
        return pb.GetStateResponse(state=self.state())

    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEventsResponse]:
        _audit(context, "WatchEvents", "ok", logging.DEBUG)
        queue = self._ctl.subscribe()
        try:
            recent = list(self._ctl.events)[-request.replay_recent:] if request.replay_recent else []
            for e in recent:
                yield pb.WatchEventsResponse(event=event_pb(e))
            while True:
                yield pb.WatchEventsResponse(event=event_pb(await queue.get()))
        finally:
            self._ctl.unsubscribe(queue)

    async def SetDrain(self, request: pb.SetDrainRequest,
                       context: grpc.aio.ServicerContext) -> pb.SetDrainResponse:
        action = f"{'drain' if request.drained else 'undrain'} {_backend_name(request.backend)}"
        await self._authorize(context, action)
        backend = await self._backend(request.backend, context)
        self._ctl.set_drain(backend, request.drained)
        _audit(context, action, "done", logging.WARNING)
        return pb.SetDrainResponse(state=self.state())

    async def Switch(self, request: pb.SwitchRequest, context: grpc.aio.ServicerContext) -> pb.SwitchResponse:
        action = f"switch {_backend_name(request.to)}{' (forced)' if request.force else ''}"
        await self._authorize(context, action)
        backend = await self._backend(request.to, context)
        if backend is Backend.STANDBY and not request.force:
            view = self._ctl.watchers[Backend.STANDBY].view()
            if not view.ready:
                why = view.reason or "not ready"
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


def _audit(context: grpc.aio.ServicerContext, action: str, outcome: str, level: int = logging.INFO) -> None:
    """One log line per admin call: who, what, how it ended."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name") or []
    event(log, "admin call", level, peer=context.peer(), identity=", ".join(
        n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names) or None,
        action=action, outcome=outcome)
