"""A backend's view from its health server's answers and real calls' outcomes (in-process health server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.router.config import RouterConfig
from eagleeye.router.watcher import BackendWatcher, backend_channel

CFG = RouterConfig(primary="127.0.0.1:1", standby="127.0.0.1:2", check_failures=2, eject_after_failures=3)


@dataclass
class Backend:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    watcher: BackendWatcher
    changes: asyncio.Event


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("readiness", health_pb2.HealthCheckResponse.SERVING)
    changes = asyncio.Event()
    address = f"127.0.0.1:{port}"
    watcher = BackendWatcher("primary", address, backend_channel(address, CFG), CFG, changes.set)
    yield Backend(server, health, watcher, changes)
    await watcher.stop()
    await watcher.channel.close()
    await server.stop(None)


async def until(b: Backend, condition: object, timeout: float = 10.0) -> None:
    async def wait() -> None:
        while not condition():  # type: ignore[operator]
            b.changes.clear()
            await b.changes.wait()
    await asyncio.wait_for(wait(), timeout)


async def test_checks_count_and_a_watch_makes_it_ready(backend: Backend) -> None:
    w = backend.watcher
    assert not w.view().ready and "Watch stream down" in w.view().reason
    for _ in range(3):
        await w.check_once()
    assert w.status.healthy_checks == 3 and w.status.last_ok_at is not None
    w.start()
    await until(backend, lambda: w.view().ready)
    await backend.health.set("readiness", health_pb2.HealthCheckResponse.NOT_SERVING)
    await until(backend, lambda: not w.view().ready)
    assert "readiness NOT_SERVING" in w.view().reason


async def test_failed_checks_make_it_not_ready(backend: Backend) -> None:
    w = backend.watcher
    w.status.watch_connected, w.status.ready_status = True, health_pb2.HealthCheckResponse.SERVING
    await backend.health.set("readiness", health_pb2.HealthCheckResponse.NOT_SERVING)
    await w.check_once()
    assert w.view().ready  # one failure may be noise
    await w.check_once()
    assert not w.view().ready and "2 Checks failed in a row (NOT_SERVING)" in w.view().reason
    assert w.status.healthy_checks == 0


async def test_ejection_after_failed_calls_until_a_later_check_succeeds(backend: Backend) -> None:
    w = backend.watcher
    w.status.watch_connected, w.status.ready_status = True, health_pb2.HealthCheckResponse.SERVING
    w.record_call(False)
    w.record_call(False)
    w.record_call(True)  # a success resets the count
    w.record_call(False)
    w.record_call(False)
    assert w.view().ready
    w.record_call(False)
    assert not w.view().ready and "ejected" in w.view().reason
    await w.check_once()
    assert w.view().ready


async def test_a_broken_watch_counts_at_once(backend: Backend) -> None:
    w = backend.watcher
    w.start()
    await until(backend, lambda: w.view().ready)
    await backend.server.stop(None)
    await until(backend, lambda: not w.status.watch_connected)
    assert not w.view().ready


async def test_headroom_not_serving_is_reported_and_unknown_is_not(backend: Backend) -> None:
    w = backend.watcher
    w.start()
    await until(backend, lambda: w.view().ready)
    assert w.view().headroom  # a worker that does not serve the name is not penalised
    await backend.health.set("headroom", health_pb2.HealthCheckResponse.NOT_SERVING)
    await until(backend, lambda: not w.view().headroom)
    assert w.view().ready and "headroom NOT_SERVING" in w.view().reason


class HeldStub:
    """Health calls that answer when the test says so; Watch streams that never answer."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[health_pb2.HealthCheckResponse] | None = None
        self.asked = asyncio.Event()

    def Check(self, request: health_pb2.HealthCheckRequest, timeout: float | None = None,
              ) -> asyncio.Future[health_pb2.HealthCheckResponse]:
        self.answer = asyncio.get_running_loop().create_future()
        self.asked.set()
        return self.answer

    async def Watch(self, request: health_pb2.HealthCheckRequest) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        await asyncio.get_running_loop().create_future()  # never
        yield health_pb2.HealthCheckResponse()


@pytest.mark.parametrize("steps", range(8))
async def test_stop_returns_even_when_it_lands_as_a_check_is_answered(steps: int) -> None:
    """A cancellation arriving in the same loop turn as a Check's answer must not be lost (Python 3.11's
    asyncio.wait_for drops it): a router on SIGTERM would wait for its watchers forever."""
    w = BackendWatcher("primary", "127.0.0.1:1", backend_channel("127.0.0.1:1", CFG), CFG, lambda: None)
    stub = HeldStub()
    w._stub = stub
    w.start()
    await stub.asked.wait()
    assert stub.answer is not None
    stub.answer.set_result(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING))
    for _ in range(steps):
        await asyncio.sleep(0)  # let the answer travel that many loop turns before the stop lands
    async with asyncio.timeout(5):
        await w.stop()
    await w.channel.close()
