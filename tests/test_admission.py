"""Who a stream counts against and whether one more fits (common/admission.py), and the health servicer's
bounded Watch built on it (common/health.py) in an in-process server, with peers on two loopback addresses."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.common.admission import Full, Slots, peer_host, peer_key
from eagleeye.common.health import HealthServicer
from tests.h2raw import StalledPeer
from tests.procs import SERVING

WATCH = "/grpc.health.v1.Health/Watch"


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:10.0.0.7:52114", "10.0.0.7"),
    ("ipv6:[::1]:52114", "[::1]"),
    ("ipv6:%5B2001:db8::7%5D:443", "[2001:db8::7]"),   # percent-encoded by some gRPC versions
    ("ipv6:[::ffff:10.0.0.7]:1", "[::ffff:10.0.0.7]"),
    ("unix:/run/eagleeye.sock", "unix:/run/eagleeye.sock"),  # no port to drop
    ("unix-abstract:eagleeye", "unix-abstract:eagleeye"),
    ("", ""),
])
def test_the_peer_host_drops_only_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


@pytest.mark.parametrize(("peer", "identities", "key"), [
    ("ipv4:10.0.0.7:52114", None, "10.0.0.7"),
    ("ipv4:10.0.0.7:52115", [], "10.0.0.7"),               # another connection, the same peer
    ("ipv4:10.0.0.7:1", [b"router.eagleeye"], "router.eagleeye@10.0.0.7"),
    ("ipv4:10.0.0.8:1", [b"router.eagleeye"], "router.eagleeye@10.0.0.8"),  # a replica with the same certificate
    ("ipv4:10.0.0.7:1", [b"b", b"a"], "a,b@10.0.0.7"),      # every name, in one order
])
def test_a_peer_is_its_host_and_with_mtls_its_identity_there(peer: str, identities: list[bytes] | None,
                                                           key: str) -> None:
    assert peer_key(peer, identities) == key


# (action, peer, expected): "take" expects the verdict, "back" gives a slot back.
SLOT_STEPS: list[tuple[str, str, Full | None]] = [
    ("take", "a", None), ("take", "a", None),
    ("take", "a", Full.PEER),        # a holds its share
    ("take", "b", None), ("take", "b", None),
    ("take", "c", Full.TOTAL),       # c holds nothing, but all 4 are taken
    ("take", "a", Full.PEER),        # both bounds met: the peer's own is named
    ("back", "a", None),
    ("take", "c", None),             # the slot a gave back
    ("take", "a", Full.TOTAL),
    ("back", "b", None), ("back", "b", None),
    ("take", "a", None),
]


def test_slots_bound_each_peer_and_all_together() -> None:
    slots = Slots(total=4, per_peer=2)
    for i, (action, peer, expected) in enumerate(SLOT_STEPS):
        if action == "take":
            assert slots.take(peer) is expected, (i, action, peer)
        else:
            slots.give_back(peer)
    assert (slots.held, slots.held_by("a"), slots.held_by("b"), slots.held_by("c")) == (3, 2, 0, 1)
    for peer in ("a", "a", "c"):
        slots.give_back(peer)
    assert slots.held == 0 and slots._by_peer == {}  # nothing kept for peers gone


async def next_status(call: grpc.aio.UnaryStreamCall) -> int:
    return int((await call.read()).status)


async def test_one_peer_holding_its_share_is_refused_and_another_still_gets_a_watch() -> None:
    """A raw peer from 127.0.0.2 asks for more Watch streams than its share and never reads; a client
    from 127.0.0.1 then gets its own share, and the refusal of its next one names the per-peer setting."""
    server = grpc.aio.server()
    health = HealthServicer(max_watchers=10, max_per_peer=3)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("readiness", SERVING)
    address = f"127.0.0.1:{port}"
    body = health_pb2.HealthCheckRequest(service="readiness").SerializeToString()
    hog = await asyncio.to_thread(StalledPeer, address, WATCH, body, 8, source="127.0.0.2")
    try:
        assert await asyncio.to_thread(hog.wait_ended, 5, 10), "the peer's streams past its share were not ended"
        assert health.watchers == 3
        async with grpc.aio.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            mine = [stub.Watch(health_pb2.HealthCheckRequest(service="readiness")) for _ in range(3)]
            assert [await next_status(c) for c in mine] == [SERVING] * 3
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await next_status(stub.Watch(health_pb2.HealthCheckRequest(service="readiness")))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_watch_streams_per_peer" in (refused.value.details() or "")
            assert "127.0.0.1" in (refused.value.details() or "")
            for call in mine:
                call.cancel()
    finally:
        hog.close()
        await server.stop(None)
