"""A backend's view from its health server's answers and real calls' outcomes (in-process health server)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.common.health import HealthServicer
from eagleeye.common.loopbehind import LoopBehind
from eagleeye.router.config import RouterConfig
from eagleeye.router.watcher import BackendStatus, BackendWatcher, WatchEnd, backend_channel, watch_end
from tests.procs import HealthWatch

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


async def test_ejection_after_failed_calls_until_a_later_check_succeeds(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    w = backend.watcher
    w.status.watch_connected, w.status.ready_status = True, health_pb2.HealthCheckResponse.SERVING
    w.record_call(False, "old")
    w.record_call(False)
    w.record_call(True)  # a success resets the count
    w.record_call(False, "stream leg: answered nothing for 1.00 s")
    w.record_call(False)
    assert w.view().ready
    with caplog.at_level(logging.WARNING, logger="eagleeye.router"):
        w.record_call(False, "unary call failed")
    assert not w.view().ready and "ejected" in w.view().reason
    # The log line names what the failures were, the last three: what an operator needs to judge it.
    (ejected,) = [r for r in caplog.records if r.getMessage().startswith("backend ejected")]
    assert getattr(ejected, "fields", {}).get("causes") == [
        "stream leg: answered nothing for 1.00 s", "unnamed", "unary call failed"]
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


def held_watcher(check_timeout_s: float) -> tuple[BackendWatcher, HeldStub, LoopBehind]:
    cfg = replace(CFG, check_timeout_s=check_timeout_s)
    behind = LoopBehind()
    w = BackendWatcher("primary", "127.0.0.1:1", backend_channel("127.0.0.1:1", cfg), cfg, lambda: None,
                       behind=behind)
    stub = HeldStub()
    w._stub = stub
    return w, stub, behind


async def test_an_answer_that_waited_while_the_routers_loop_was_held_counts() -> None:
    """The worker answers in time, but the router's loop is held past the Check's deadline (a 10 MB
    frame being copied, a burst of new calls): the answer is read in the loop turn that also runs the
    late timer. A worker that answered is not counted as silent."""
    w, stub, _ = held_watcher(0.1)
    check = asyncio.create_task(w.check_once())
    await stub.asked.wait()
    assert stub.answer is not None
    answer, loop = stub.answer, asyncio.get_running_loop()

    def held() -> None:
        time.sleep(0.3)  # the fault: the loop held past the deadline while the answer arrived
        loop.call_soon(answer.set_result, health_pb2.HealthCheckResponse(status=S))  # read in the next turn

    loop.call_soon(held)
    async with asyncio.timeout(5):
        await check
    assert (w.status.check_failures, w.status.healthy_checks, w.status.check_error) == (0, 1, "")
    await w.channel.close()


async def test_a_check_nobody_answers_fails_after_its_timeout_and_still_fails_while_the_loop_is_held() -> None:
    w, stub, _ = held_watcher(0.1)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await w.check_once()
    assert (w.status.check_failures, w.status.check_error) == (1, "DEADLINE_EXCEEDED")
    assert 0.1 <= time.monotonic() - started < 0.35  # the timeout, not the wait while behind
    assert stub.answer is not None and stub.answer.cancelled()  # the call is cancelled, not left running

    check = asyncio.create_task(w.check_once())
    await stub.asked.wait()
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # held past the deadline; no answer ever comes
    async with asyncio.timeout(5):
        await check
    assert (w.status.check_failures, w.status.check_error) == (2, "DEADLINE_EXCEEDED")
    await w.channel.close()


@pytest.mark.parametrize(("code", "received", "end"), [
    ("RESOURCE_EXHAUSTED", False, WatchEnd.REFUSED),  # the worker's Watch slots are taken
    ("UNIMPLEMENTED", False, WatchEnd.REFUSED),       # a server without Watch
    ("RESOURCE_EXHAUSTED", True, WatchEnd.BROKEN),    # it had delivered: a stream that broke off
    ("UNIMPLEMENTED", True, WatchEnd.BROKEN),
    ("UNAVAILABLE", False, WatchEnd.BROKEN),          # connection refused: nobody there
    ("UNAVAILABLE", True, WatchEnd.BROKEN),           # connection lost
    ("DEADLINE_EXCEEDED", False, WatchEnd.BROKEN),
    ("CANCELLED", True, WatchEnd.BROKEN),
    ("INTERNAL", False, WatchEnd.BROKEN),
    ("UNKNOWN", True, WatchEnd.BROKEN),
    ("", True, WatchEnd.BROKEN),                      # the server ended the stream
    ("", False, WatchEnd.BROKEN),
])
def test_only_a_watch_refused_at_the_start_is_not_a_failure(code: str, received: bool, end: WatchEnd) -> None:
    assert watch_end(code, received) is end


S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
LIVE = BackendStatus(watch_connected=True)
DOWN = BackendStatus(watch_error="UNAVAILABLE: failed to connect")
REFUSED = BackendStatus(watch_refused="RESOURCE_EXHAUSTED", watch_error="RESOURCE_EXHAUSTED: too many Watch streams")


@pytest.mark.parametrize(("status", "ready", "headroom", "reason"), [
    # Watch delivering: it decides readiness; a Check's answer does not.
    (replace(LIVE, ready_status=S, check_ready_status=S), True, True, ""),
    (replace(LIVE, ready_status=N, check_ready_status=S), False, True, "readiness NOT_SERVING"),
    (replace(LIVE, ready_status=S, headroom_status=N), True, False, "headroom NOT_SERVING"),
    # Watch broken (not refused): unknown at once, however many Checks succeeded before.
    (replace(DOWN, check_ready_status=S, healthy_checks=176), False, True, "Watch stream down (UNAVAILABLE"),
    (BackendStatus(check_ready_status=S, healthy_checks=176), False, True, "Watch stream down (connecting)"),
    # Watch refused: the Checks decide, and the reason says so even when ready.
    (replace(REFUSED, check_ready_status=S, healthy_checks=176), True, True,
     "Watch refused (RESOURCE_EXHAUSTED): status from Checks"),
    (BackendStatus(watch_refused="UNIMPLEMENTED", check_ready_status=S), True, True,
     "Watch refused (UNIMPLEMENTED): status from Checks"),
    (replace(REFUSED, check_ready_status=N), False, True,
     "Watch refused (RESOURCE_EXHAUSTED): status from Checks; readiness NOT_SERVING"),
    (REFUSED, False, True, "Watch refused (RESOURCE_EXHAUSTED): status from Checks; no Check answered"),
    (replace(REFUSED, check_ready_status=S, check_failures=1, check_error="DEADLINE_EXCEEDED"), True, True,
     "Watch refused"),  # one failure may be noise, as with a Watch
    (replace(REFUSED, check_ready_status=S, check_failures=2, check_error="DEADLINE_EXCEEDED"), False, True,
     "2 Checks failed in a row (DEADLINE_EXCEEDED)"),
    (replace(REFUSED, headroom_refused="RESOURCE_EXHAUSTED", check_ready_status=S, headroom_status=N),
     True, False, "headroom NOT_SERVING; Watch refused (RESOURCE_EXHAUSTED): status from Checks"),
    (replace(REFUSED, check_ready_status=S, drained=True), False, True, "drained by operator"),
])
async def test_the_view_from_watch_and_checks(status: BackendStatus, ready: bool, headroom: bool, reason: str) -> None:
    w = BackendWatcher("primary", "127.0.0.1:1", backend_channel("127.0.0.1:1", CFG), CFG)
    w.status = replace(status)  # view() notes been_ready in the status
    view = w.view()
    await w.channel.close()
    assert (view.ready, view.headroom) == (ready, headroom), view.reason
    assert view.reason.startswith(reason) if reason else view.reason == ""


@pytest.fixture
async def crowded() -> AsyncIterator[tuple[Backend, grpc.aio.Channel]]:
    """A worker-like health server whose two Watch slots another client holds before the watcher starts."""
    server = grpc.aio.server()
    health = HealthServicer(max_watchers=2, max_per_peer=10)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("readiness", S)
    await health.set("headroom", S)
    address = f"127.0.0.1:{port}"
    other = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    holders = [HealthWatch(other, "readiness") for _ in range(2)]
    for h in holders:
        await h.wait_for(S, 10)
    changes = asyncio.Event()
    watcher = BackendWatcher("primary", address, backend_channel(address, CFG), CFG, changes.set)
    yield Backend(server, health, watcher, changes), other
    await watcher.stop()
    await watcher.channel.close()
    await other.close()
    await server.stop(None)


async def test_a_refused_watch_leaves_readiness_and_headroom_to_checks_until_a_watch_is_accepted(
        crowded: tuple[Backend, grpc.aio.Channel]) -> None:
    b, other = crowded
    w = b.watcher
    w.start()
    await until(b, lambda: w.status.watch_refused and w.status.headroom_refused and w.view().ready)
    assert w.view().reason == "Watch refused (RESOURCE_EXHAUSTED): status from Checks"
    await b.health.set("headroom", N)  # learned by a Check on the headroom name
    await until(b, lambda: not w.view().headroom)
    assert w.view().ready
    await b.health.set("readiness", N)
    await until(b, lambda: not w.view().ready)
    assert "readiness NOT_SERVING" in w.view().reason
    await b.health.set("readiness", S)
    await b.health.set("headroom", S)
    await until(b, lambda: w.view().ready and w.view().headroom)
    assert w.status.watch_refused  # all the while the Watch is retried and refused
    await other.close()  # the other client goes: the next retries get their streams
    await until(b, lambda: w.status.watch_connected and not w.status.headroom_refused)
    assert w.view().ready and w.view().reason == ""


async def test_a_refused_watch_does_not_hide_a_dead_worker(crowded: tuple[Backend, grpc.aio.Channel]) -> None:
    b, _ = crowded
    w = b.watcher
    w.start()
    await until(b, lambda: w.status.watch_refused and w.view().ready)
    await b.server.stop(None)
    # The retried Watch now fails to connect: unknown at once, although the last Check said SERVING.
    await until(b, lambda: "Watch stream down" in w.view().reason)
    assert not w.view().ready and not w.status.watch_refused
