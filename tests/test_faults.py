"""Faults beyond the matrix, with real processes and the router's default settings (bench/faults.py
runs the same scenarios, longer, for figures): what a user would notice must not happen.

The tail bounds are generous (several times what this machine measures) so only a real bug breaks
them: before hedging and router-enforced timers, a partition cost 2 s deadline errors and a hang a
1 s tail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bench.faults import SHORT, LoadFigures, hang, overload, partition, slow_reader
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.frames import make_pool
from tests.conftest import fast_config
from tests.procs import Proc, start_detector

pytestmark = pytest.mark.integration


def assert_nothing_lost(*loads: LoadFigures | None) -> None:
    for f in loads:
        assert f is not None and f.sent > 0
        assert (f.errors, f.lost, f.duplicated, f.reordered) == (0, 0, 0, 0), f
        assert f.answered == f.sent, f


def test_network_partition_of_the_primary() -> None:
    r, = asyncio.run(partition(SHORT))
    assert "NORMAL->FAILOVER" in r.switches, r  # the blackhole was noticed ...
    assert_nothing_lost(r.unary, r.stream)      # ... and cost no client anything
    assert r.unary is not None and r.unary.p99_ms is not None and r.unary.p99_ms < 1000, r.unary


def test_hung_primary_is_hedged_around() -> None:
    r, = asyncio.run(hang(SHORT))
    assert "NORMAL->FAILOVER" in r.switches, r
    assert_nothing_lost(r.unary, r.stream)
    assert r.hedges > 0, r
    assert r.unary is not None and r.unary.p99_ms is not None and r.unary.p99_ms < 800, r.unary
    assert r.stream is not None and r.stream.p99_ms is not None and r.stream.p99_ms < 1500, r.stream


def test_a_stream_faster_than_its_worker_is_load_not_a_fault() -> None:
    r, = asyncio.run(overload(SHORT))
    assert_nothing_lost(r.stream)
    assert (r.stream_moves, r.replayed_frames) == (0, 0), r
    assert len(r.switches) <= 2, r.switches


def test_a_client_that_stops_reading_is_held_back_without_harm() -> None:
    r, = asyncio.run(slow_reader(SHORT))
    assert_nothing_lost(r.unary, r.stream)
    assert r.stream_moves == 0, r                # its worker answered everything: not a stall
    assert r.stream is not None and r.stream.max_ms is not None and r.stream.max_ms >= 1000 * SHORT.pause_s * 0.5
    assert r.unary is not None and r.unary.p99_ms is not None and r.unary.p99_ms < 1000, r.unary


async def test_a_full_worker_queue_is_answered_by_the_other_worker(tmp_path: Path) -> None:
    """A primary with room for one queued frame: the router tries what it refuses on the standby."""
    primary = start_detector("--worker-id", "primary", "--config",
                             fast_config(tmp_path, top={"max_queue": 1, "max_batch": 1}))
    standby = start_detector("--worker-id", "standby")
    router_toml = tmp_path / "router.toml"
    router_toml.write_text("weights = [100.0, 0.0]\ndegraded_weights = [100.0, 0.0]\n")  # everything to the primary
    router = Proc("eagleeye-router", ["--listen", "127.0.0.1:0", "--primary", primary.address,
                                      "--standby", standby.address, "--config", str(router_toml)])
    try:
        address = router.wait_listening()
        router.wait_for_event("switch", 120, to_state="NORMAL")
        frames = make_pool(320, 240, "jpeg", count=4)
        async with grpc.aio.insecure_channel(primary.address) as ch:   # the worker says why, and that
            results = await asyncio.gather(*(pb_grpc.DetectorStub(ch).Detect(frames.frame(i), timeout=10)
                                             for i in range(12)), return_exceptions=True)
        refused = [e for e in results if isinstance(e, grpc.aio.AioRpcError)]
        assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert all(dict(e.trailing_metadata() or ()).get("eagleeye-retry-elsewhere") == "queue-full"
                   for e in refused)                                  # another worker may take it

        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.DetectorStub(ch)
            unary = await asyncio.gather(*(stub.Detect(frames.frame(i), timeout=10) for i in range(12)))
            assert {r.worker for r in unary} == {"primary", "standby"}   # the refused ones, by the standby

            async def burst() -> AsyncIterator[pb.DetectRequest]:
                for i in range(12):
                    yield frames.frame(i)
            answers = [r async for r in stub.DetectStream(burst(), timeout=30)]
        assert [a.frame_id for a in answers] == list(range(12))           # every frame, once, in order
        assert not [a for a in answers if a.HasField("error")], answers   # none refused
        assert {a.worker for a in answers} == {"primary", "standby"}
    finally:
        for proc in (router, primary, standby):
            proc.stop()
