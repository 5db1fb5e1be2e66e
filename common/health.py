"""grpcio-health-checking's servicer, with Watch bounded and never able to hold up a status change.

The library's Watch writes to its peer while holding the service's condition lock, and `set()` takes
that lock: one Watch client that never reads (its flow-control window full) blocks `set()`, and with it
the worker's monitor loop and every other watcher. Here Watch only reads the status under the lock and
writes outside it; a slow reader delays itself alone, and on waking sends the latest status (Watch
may skip intermediate statuses: the peer wants the eventual one). Watch streams are also counted, in
total and per peer (common/admission.py): past either bound a new one is refused with RESOURCE_EXHAUSTED
naming the setting, so one client holding its share cannot keep a router from watching.

`set`, `enter_graceful_shutdown` and `Check` are the library's own.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from eagleeye.common.admission import Full, Slots, peer_key

SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard aio health servicer with a bounded, non-blocking Watch."""

    def __init__(self, max_watchers: int, max_per_peer: int, setting: str = "max_watch_streams",
                 peer_setting: str = "max_watch_streams_per_peer") -> None:
        super().__init__()
        self._max_watchers = max_watchers
        self._max_per_peer = max_per_peer
        self._setting = setting
        self._peer_setting = peer_setting
        self._slots = Slots(max_watchers, max_per_peer)

    @property
    def watchers(self) -> int:
        """Watch streams open now, all peers together."""
        return self._slots.held

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        peer = peer_key(context.peer(), context.peer_identities())
        full = self._slots.take(peer)
        if full is Full.PEER:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many health Watch streams from one client ({peer} holds "
                                f"{self._max_per_peer}, setting {self._peer_setting}); use Check or close "
                                "idle Watch streams")
        if full is Full.TOTAL:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many health Watch streams on this server (limit {self._max_watchers}, "
                                f"setting {self._setting}); use Check or close idle Watch streams")
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last: int | None = None
        try:
            while True:
                async with condition:
                    status = self._server_status.get(service, SERVICE_UNKNOWN)
                    while status == last:
                        await condition.wait()
                        status = self._server_status.get(service, SERVICE_UNKNOWN)
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
        finally:
            self._slots.give_back(peer)
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]
