"""Faults beyond the matrix, with real processes and the router's default settings (bench/faults.py
runs the same scenarios, longer, for figures): what a user would notice must not happen.

The tail bounds are generous (several times what this machine measures) so only a real bug breaks
them: before hedging and router-enforced timers, a partition cost 2 s deadline errors and a hang a
1 s tail.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.faults import SHORT, LoadFigures, hang, overload, partition, slow_reader

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
