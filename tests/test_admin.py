"""The router's admin API (router/admin.py) as a client meets it: a real router, health-only stand-in workers.

No client can hurt another (issue 20): a wrong token costs its turn whatever the caller's deadline, so
guessing is no faster with short deadlines or concurrency; event streams without a token cannot take
the slots operators need; every call is logged at INFO; a short token is refused at start.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api.names import HEADROOM, LIVENESS, READINESS_NAMES
from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.harness.processes import BIN, Proc
from eagleeye.router.adminaccess import ADMIN_MAX_CALLS_PER_PEER, ADMIN_REQUEST_TIMEOUT_S
from tests.h2raw import StalledPeer

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(16)  # 32 bytes, the least the router accepts
AUTH = (("authorization", f"Bearer {TOKEN}"),)
DELAY_S = 1.0  # admin_auth_failure_delay_s, its default
# Ports nothing listens on, for a router that is refused before it serves.
DEAD = ["--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2"]


@pytest.fixture
async def workers() -> AsyncIterator[list[str]]:
    """Two stand-in workers, every health name SERVING, in the test's own event loop: the router goes NORMAL."""
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    for name in (*READINESS_NAMES, LIVENESS, HEADROOM):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    ports = [server.add_insecure_port("127.0.0.1:0") for _ in range(2)]
    await server.start()
    yield [f"127.0.0.1:{port}" for port in ports]
    await server.stop(None)


class Router:
    """An eagleeye-router with an admin listener and TOKEN, in state NORMAL (one switch event to replay)."""

    def __init__(self, workers: list[str], directory: Path, toml: str = "") -> None:
        config = directory / "router.toml"
        config.write_text(toml)
        self.proc = Proc("eagleeye-router", ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                                             "--primary", workers[0], "--standby", workers[1],
                                             "--config", str(config)], env={"EAGLEEYE_ADMIN_TOKEN": TOKEN})
        self.admin = ""

    async def start(self) -> Router:
        self.admin = str((await asyncio.to_thread(self.proc.wait_for_event, "listening", 60))["admin"])
        await asyncio.to_thread(self.proc.wait_for_event, "switch", 60, to_state="NORMAL")
        return self

    def audit(self) -> list[dict[str, Any]]:
        return [e for e in self.proc.events if e.get("event") == "admin call"]

    async def settle(self) -> None:
        """Wait until every call made so far is in the log: one more call, with an action of its own, is."""
        marker = 1000 + secrets.randbelow(1000)  # names no backend: refused, and logged as "drain backend N"
        request = rpb.SetDrainRequest(backend=cast(rpb.Backend, marker), drained=True)
        async with grpc.aio.insecure_channel(self.admin) as ch:
            for _ in range(10):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await rpb_grpc.RouterAdminStub(ch).SetDrain(request, timeout=10, metadata=AUTH)
                if err.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                # This client's failed-token turn has not ended (a test that guessed just now): the refusal
                # says when it does, and a refusal in a turn may go unlogged, so call again then.
                retry = re.search(r"retry in ([0-9.]+) s", err.value.details() or "")
                assert retry is not None, err.value.details()
                await asyncio.sleep(float(retry.group(1)) + 0.05)
        await asyncio.to_thread(self.proc.wait_for_event, "admin call", 10, action=f"drain backend {marker}")


@pytest.fixture
async def router(workers: list[str], tmp_path: Path) -> AsyncIterator[Router]:
    r = Router(workers, tmp_path)
    try:
        yield await r.start()
    finally:
        await asyncio.to_thread(r.proc.stop)


async def first(call: Any) -> grpc.aio.AioRpcError | None:
    """A WatchEvents stream's first answer (it replays one event at once): None if served, else its error."""
    try:
        await asyncio.wait_for(call.read(), 10)
        return None
    except grpc.aio.AioRpcError as e:
        return e


def test_a_short_token_is_refused_at_start_in_one_line_that_never_shows_it() -> None:
    short = "s3cret-but-only-31-bytes-long!!"
    assert len(short) == 31
    for env, flags in (({"EAGLEEYE_ADMIN_TOKEN": short}, []), ({}, ["--admin-token", short])):
        done = subprocess.run([str(BIN / "eagleeye-router"), "--listen", "127.0.0.1:0", "--admin-listen",
                               "127.0.0.1:0", *DEAD, *flags], capture_output=True, text=True, timeout=60,
                              env={**{k: v for k, v in os.environ.items() if k != "EAGLEEYE_ADMIN_TOKEN"}, **env})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "admin_token: must be at least 32 bytes" in done.stderr, done.stderr
        assert short not in done.stderr + done.stdout and "s3cret" not in done.stderr + done.stdout


async def test_a_wrong_token_costs_its_turn_whatever_the_callers_deadline(router: Router) -> None:
    async with grpc.aio.insecure_channel(router.admin) as ch:
        stub = rpb_grpc.RouterAdminStub(ch)
        drain = rpb.SetDrainRequest(backend=rpb.BACKEND_PRIMARY, drained=False)

        # A caller that waits is answered UNAUTHENTICATED, never before the delay; the right token then
        # goes through at once (the turn ended with the answer).
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetDrain(drain, timeout=10, metadata=(("authorization", "Bearer guess"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - started >= DELAY_S - 0.01
        await stub.SetDrain(drain, timeout=10, metadata=AUTH)

        # Guessers that give up after 0.1 s, four at once, as fast as they can for three delays.
        window_s, codes = 3 * DELAY_S, list[grpc.StatusCode]()
        await router.settle()
        router.proc.forget_events()

        async def guess(n: int) -> None:
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                try:
                    await stub.SetDrain(drain, timeout=0.1, metadata=(("authorization", f"Bearer {n}-{len(codes)}"),))
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())

        await asyncio.gather(*(guess(n) for n in range(4)))
    await router.settle()
    outcomes = [e["outcome"] for e in router.audit() if e["action"] == "undrain primary"]
    checked = outcomes.count("refused: missing or wrong token")
    # One token checked per delay (the first at once): without the turn, each guesser checked ten a second.
    assert 1 <= checked <= window_s / DELAY_S + 1, (checked, len(outcomes))
    assert all(o == "refused: missing or wrong token" or "token not checked" in o for o in outcomes), set(outcomes)
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert len(codes) > checked  # the rest were refused without a look at their token
    # ... and without a line each: one per turn (the guessers share an address, so a peer), not one per call.
    assert len(outcomes) <= 2 * checked + 2 < len(codes), (len(outcomes), checked, len(codes))


@pytest.mark.parametrize(("toml", "held", "setting"), [
    ("", 4, "setting admin_max_anonymous_streams_per_peer"),
    ("admin_max_anonymous_streams = 3\nadmin_max_anonymous_streams_per_peer = 8\n", 3,
     "setting admin_max_anonymous_streams)"),
])
async def test_event_streams_without_a_token_cannot_lock_operators_out(
        workers: list[str], tmp_path: Path, toml: str, held: int, setting: str) -> None:
    router = await Router(workers, tmp_path, toml).start()
    try:
        async with grpc.aio.insecure_channel(router.admin) as ch:
            stub = rpb_grpc.RouterAdminStub(ch)
            # As many streams as the listener takes calls from one client, none with a token.
            streams = [stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=1))
                       for _ in range(ADMIN_MAX_CALLS_PER_PEER)]
            answers = await asyncio.gather(*(first(s) for s in streams))
            assert answers.count(None) == held
            refused = [e for e in answers if e is not None]
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all(setting in (e.details() or "") for e in refused), refused[0].details()

            # With those held: unary reads in a burst, the actions, and an operator's own stream.
            states = await asyncio.gather(*(stub.GetState(rpb.GetStateRequest(), timeout=10)
                                            for _ in range(ADMIN_MAX_CALLS_PER_PEER - held - 1)))
            assert {s.state.state for s in states} == {"NORMAL"}
            await stub.SetDrain(rpb.SetDrainRequest(backend=rpb.BACKEND_STANDBY, drained=True), timeout=10,
                                metadata=AUTH)
            await stub.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY, force=True), timeout=10, metadata=AUTH)
            own = stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=1), metadata=AUTH)
            assert await first(own) is None
            own.cancel()

            # Streams closed give their slots back (the router sees the cancels in its own time).
            for s in streams:
                s.cancel()
            deadline = time.monotonic() + 10
            while (error := await first(again := stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=1)))):
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, error
            again.cancel()
    finally:
        await asyncio.to_thread(router.proc.stop)


async def test_every_call_reads_included_is_logged_at_info_once_without_the_token(router: Router) -> None:
    async with grpc.aio.insecure_channel(router.admin) as ch:
        stub = rpb_grpc.RouterAdminStub(ch)
        await stub.GetState(rpb.GetStateRequest(), timeout=10)
        for metadata in (None, AUTH):
            call = stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=1), metadata=metadata)
            assert await first(call) is None
            call.cancel()
        await stub.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY, force=True), timeout=10, metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SetDrain(rpb.SetDrainRequest(backend=cast(rpb.Backend, 7), drained=True), timeout=10,
                                metadata=AUTH)
    await router.settle()
    calls = [(e["level"], e["action"], e["outcome"]) for e in router.audit()]
    assert calls[:-1] == [
        ("info", "GetState", "ok"),
        ("info", "WatchEvents", "following, without a token"),
        ("info", "WatchEvents", "following"),
        ("warning", "switch standby (forced)", "done"),
        ("info", "drain backend 7", "refused: backend must be PRIMARY or STANDBY"),
    ], calls
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in router.audit())
    assert not any(TOKEN in line for line in router.proc.lines), "the token was logged"


async def test_calls_that_never_send_their_request_hold_only_their_clients_share_and_only_briefly(
        router: Router) -> None:
    # Slowloris: 300 calls from 127.0.0.2 that send their headers and never their request. Before
    # admission per client, 64 of them refused every operator ("Concurrent RPC limit exceeded").
    peers = [StalledPeer(router.admin, "/eagleeye.router.v1.RouterAdmin/GetState", None, 100, source="127.0.0.2")
             for _ in range(3)]
    try:
        # All but the client's share are refused at once, without waiting for their request.
        deadline = time.monotonic() + 10
        while sum(len(p.ended) for p in peers) < 300 - ADMIN_MAX_CALLS_PER_PEER:
            assert time.monotonic() < deadline, [len(p.ended) for p in peers]
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(router.admin) as ch:
            stub = rpb_grpc.RouterAdminStub(ch)
            assert (await stub.GetState(rpb.GetStateRequest(), timeout=5)).state.state == "NORMAL"
            await stub.SetDrain(rpb.SetDrainRequest(backend=rpb.BACKEND_STANDBY, drained=True), timeout=5,
                                metadata=AUTH)
            followed = stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=1))
            assert await first(followed) is None
            followed.cancel()
        # The share itself is given back when the requests fail to come.
        started = time.monotonic()
        assert await asyncio.to_thread(lambda: all(p.wait_ended(100, 3 * ADMIN_REQUEST_TIMEOUT_S) for p in peers))
        assert time.monotonic() - started < 2 * ADMIN_REQUEST_TIMEOUT_S
    finally:
        for p in peers:
            p.close()
