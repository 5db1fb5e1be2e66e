"""grpcio-health-checking's servicer, with Watch bounded and never able to hold up a status change.

The library's Watch writes to its peer while holding the service's condition lock, and `set()` takes
that lock: one Watch client that never reads (its flow-control window full) blocks `set()`, and with it
the worker's monitor loop and every other watcher. Here Watch only reads the status under the lock and
writes outside it; a slow reader delays itself alone, and on waking sends the latest status (Watch
may skip intermediate statuses: the peer wants the eventual one). Watch streams are also counted:
past `max_watchers` a new one is refused with RESOURCE_EXHAUSTED naming the setting.

`set`, `enter_graceful_shutdown` and `Check` are the library's own.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard aio health servicer with a bounded, non-blocking Watch."""

    def __init__(self, max_watchers: int, setting: str = "max_watch_streams") -> None:
        super().__init__()
        self._max_watchers = max_watchers
        self._setting = setting
        self.watchers = 0

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self.watchers >= self._max_watchers:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many health Watch streams on this server (limit {self._max_watchers}, "
                                f"setting {self._setting}); use Check or close idle Watch streams")
        service = request.service
        self.watchers += 1
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
            self.watchers -= 1
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]
