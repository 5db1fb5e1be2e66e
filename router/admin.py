"""The admin service: the router's state and switch events, and authenticated maintenance actions."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import grpc

from eagleeye.router.v1 import router_pb2 as pb
from eagleeye.router.v1 import router_pb2_grpc as pb_grpc
from router.controller import Controller, SwitchEvent
from router.fleet import Backend

_BACKENDS: dict[int, Backend] = {pb.PRIMARY: Backend.PRIMARY, pb.STANDBY: Backend.STANDBY}
_TO_PB: dict[Backend, pb.Backend] = {Backend.PRIMARY: pb.PRIMARY, Backend.STANDBY: pb.STANDBY}


def event_pb(e: SwitchEvent) -> pb.SwitchEvent:
    return pb.SwitchEvent(time_unix=e.time_unix, from_state=e.from_state, to_state=e.to_state, reason=e.reason,
                          detection_ms=e.detection_ms or 0.0, primary_weight=e.primary_weight,
                          standby_weight=e.standby_weight, latency_before_ms=e.latency_before_ms or 0.0,
                          latency_after_ms=e.latency_after_ms or 0.0)


class AdminServicer(pb_grpc.RouterAdminServicer):
    """Reads need nothing; actions need the token given to the router (--admin-token)."""

    def __init__(self, controller: Controller, token: str) -> None:
        self._ctl = controller
        self._token = token

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
        return pb.RouterState(state=d.state.value, backends=backends,
                              recent_events=[event_pb(e) for e in ctl.events],
                              hold_down_remaining_s=d.hold_down_remaining_s, ramp_progress=d.ramp_progress,
                              next_hold_down_s=d.next_hold_down_s)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self._token:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "maintenance actions are disabled: start the router with --admin-token")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given).encode(), f"Bearer {self._token}".encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong admin token (metadata 'authorization: Bearer TOKEN')")

    async def _backend(self, value: int, context: grpc.aio.ServicerContext) -> Backend:
        backend = _BACKENDS.get(value)
        if backend is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "backend must be PRIMARY or STANDBY")
            raise AssertionError("unreachable")
        return backend

    async def GetState(self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext) -> pb.RouterState:
        return self.state()

    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SwitchEvent]:
        queue = self._ctl.subscribe()
        try:
            recent = list(self._ctl.events)[-request.replay_recent:] if request.replay_recent else []
            for e in recent:
                yield event_pb(e)
            while True:
                yield event_pb(await queue.get())
        finally:
            self._ctl.unsubscribe(queue)

    async def SetDrain(self, request: pb.SetDrainRequest, context: grpc.aio.ServicerContext) -> pb.RouterState:
        await self._authorize(context)
        self._ctl.set_drain(await self._backend(request.backend, context), request.drained)
        return self.state()

    async def Switch(self, request: pb.SwitchRequest, context: grpc.aio.ServicerContext) -> pb.RouterState:
        await self._authorize(context)
        self._ctl.switch_to(await self._backend(request.to, context))
        return self.state()
