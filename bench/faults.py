"""Faults beyond the matrix, through eagleeye-router with its default settings: a network partition of
the primary, a hung primary under hedging, a stream faster than a worker, and a client that stops
reading its answers; and, as a baseline, the same load with no fault (what hedging costs). `make bench`
prints their figures; tests/test_faults.py runs shorter versions and asserts what a user would notice
(nothing lost, duplicated or reordered, no client errors while a usable worker exists, generous tail
bounds).

    python -m bench.faults [--only steady,partition,hang,overload,slow-reader] [--short] [--out bench/out]

The load, as an ingestion worker would send it: unary Detect calls (320x240 JPEG, 15 per second, a
2 s deadline) and one DetectStream (15 frames per second), both open loop. The partition puts the
primary in a network namespace of its own (tests/netns.py) and drops every packet both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.analysis import Record
from bench.matrix import until_ready
from bench.nginx import Nginx
from bench.traffic import Clock, _paced, stream_load, unary_load
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.frames import FramePool, make_pool
from eagleeye.common.latency import percentile
from eagleeye.harness.processes import LocalCluster
from tests.netns import NetNamespace, cleanup_stale, unavailable_reason

RATE = 15.0            # unary calls per second, and stream frames per second
DEADLINE_S = 2.0
CLIENT_STALL_S = 10.0  # the load's own patience with a silent stream (the router should never need it)
OVERLOAD_FPS = 250.0   # more 640x480 frames than one 1-thread worker answers


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts."""

    pre_s: float = 4.0         # steady load before the fault
    outage_s: float = 15.0     # partition length (the hang uses hang_s)
    hang_s: float = 8.0
    after_s: float = 5.0       # load after the fault ends
    overload_s: float = 20.0
    pause_s: float = 5.0       # the slow reader stops reading this long


SHORT = Timing(pre_s=3.0, outage_s=6.0, hang_s=4.0, after_s=3.0, overload_s=8.0, pause_s=5.0)


@dataclass
class LoadFigures:
    """What one client saw."""

    sent: int
    answered: int
    errors: int
    lost: int
    duplicated: int
    reordered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error_codes: dict[str, int]


@dataclass
class FaultResult:
    """One scenario: what the clients saw and what the router did."""

    scenario: str
    system: str = "router"
    unary: LoadFigures | None = None
    stream: LoadFigures | None = None
    stream_moves: int = 0          # streams moved after a failure (replays)
    replayed_frames: int = 0
    rebalances: int = 0            # graceful moves (weights)
    switches: list[str] = field(default_factory=list)   # FROM->TO of every policy transition
    hedges: int = 0
    retries: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def figures(records: list[Record]) -> LoadFigures:
    """Records to figures: errors = frames that failed; lost = frames that never got detections."""
    lat = [r.latency_ms for r in records if r.latency_ms is not None]
    codes: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            codes[r.error] = codes.get(r.error, 0) + 1

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return LoadFigures(sent=len(records), answered=sum(1 for r in records if r.ok),
                       errors=sum(codes.values()), lost=sum(1 for r in records if not r.ok),
                       duplicated=sum(1 for r in records if r.answers > 1),
                       reordered=sum(1 for r in records if r.out_of_order),
                       p50_ms=ms(percentile(lat, 50)), p99_ms=ms(percentile(lat, 99)),
                       max_ms=ms(max(lat) if lat else None), error_codes=codes)


def _router_figures(cluster: LocalCluster, result: FaultResult) -> None:
    """After the cluster stopped: what the router's log says it did."""
    for e in cluster.router.events:
        name = e.get("event")
        if name == "stream moved":
            if e.get("reason") == "weights":
                result.rebalances += 1
            else:
                result.stream_moves += 1
                result.replayed_frames += int(e.get("replayed", 0))
        elif name == "switch":
            result.switches.append(f"{e['from_state']}->{e['to_state']}")
        elif name == "stopped":
            result.hedges = int(e.get("hedges", 0))
            result.retries = int(e.get("retries", 0))


Fault = Callable[[LocalCluster, Clock, dict[str, Any]], Awaitable[None]]


async def _nginx_pass(cluster: LocalCluster, scenario: str, fault: Fault) -> FaultResult:
    """The same load and fault with nginx (grpc_pass, standby as backup) in front of the same workers."""
    async with grpc.aio.insecure_channel(cluster.primary_address) as ch:
        await until_ready(ch, 60)
    result = FaultResult(scenario, system="nginx")
    nginx = Nginx(cluster.primary_address, cluster.standby_address)
    try:
        await _with_load(cluster, fault, make_pool(320, 240, "jpeg"), unary=True, stream_fps=RATE, result=result,
                         address=nginx.address)
    finally:
        nginx.stop()
    return result


async def _with_load(cluster: LocalCluster, fault: Fault, pool: FramePool, *, unary: bool,
                     stream_fps: float, result: FaultResult, address: str | None = None) -> None:
    address = address or cluster.router_address
    clock, stop = Clock(), asyncio.Event()
    unary_task = asyncio.create_task(unary_load(address, pool, clock, stop, rate=RATE,
                                                deadline_s=DEADLINE_S)) if unary else None
    stream_task = asyncio.create_task(stream_load(address, pool, clock, stop, cameras=1,
                                                  fps=stream_fps, stall_s=CLIENT_STALL_S))
    try:
        await fault(cluster, clock, result.notes)
    finally:
        stop.set()
    if unary_task is not None:
        result.unary = figures(await unary_task)
    records, _ = await stream_task
    result.stream = figures(records)


def _cluster(**kwargs: Any) -> LocalCluster:
    cluster = LocalCluster(**kwargs)
    try:
        cluster.wait_normal()
    except BaseException:
        cluster.stop()
        raise
    cluster.router.forget_events()
    return cluster


async def _router_then_nginx(cluster: LocalCluster, scenario: str, fault: Fault, nginx: bool) -> list[FaultResult]:
    """The standard load through the router with `fault`; then, with `nginx`, through nginx. Stops the cluster."""
    result = FaultResult(scenario)
    results = [result]
    try:
        await _with_load(cluster, fault, make_pool(320, 240, "jpeg"), unary=True, stream_fps=RATE, result=result)
        if nginx:
            results.append(await _nginx_pass(cluster, scenario, fault))
    finally:
        cluster.stop()
    _router_figures(cluster, result)
    return results


async def partition(t: Timing, nginx: bool = False) -> list[FaultResult]:
    """The primary's network blackholed for outage_s under unary and stream load (then, with `nginx`,
    the same with nginx in front)."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"the partition needs network namespaces: {reason}")
    cleanup_stale()
    with NetNamespace() as ns:
        async def fault(c: LocalCluster, clock: Clock, notes: dict[str, Any]) -> None:
            await asyncio.sleep(t.pre_s)            # the fault schedule, not a synchronisation
            ns.cut()
            notes["cut_at_s"] = round(clock.now(), 2)
            await asyncio.sleep(t.outage_s)
            ns.restore()
            notes["restored_at_s"] = round(clock.now(), 2)
            await asyncio.sleep(t.after_s)
        cluster = _cluster(primary_wrapper=ns.command([]), primary_listen=f"{ns.ns_ip}:0")
        return await _router_then_nginx(cluster, "partition", fault, nginx)


async def hang(t: Timing, nginx: bool = False) -> list[FaultResult]:
    """The primary SIGSTOPped for hang_s (a hang with its connections open) under unary and stream load
    (then, with `nginx`, the same with nginx in front)."""
    async def fault(c: LocalCluster, clock: Clock, notes: dict[str, Any]) -> None:
        await asyncio.sleep(t.pre_s)
        c.primary.signal(signal.SIGSTOP)
        notes["stopped_at_s"] = round(clock.now(), 2)
        await asyncio.sleep(t.hang_s)
        c.primary.signal(signal.SIGCONT)
        await asyncio.sleep(t.after_s)
    return await _router_then_nginx(_cluster(), "hang", fault, nginx)


async def overload(t: Timing, compare_direct: bool = False) -> list[FaultResult]:
    """One stream of 640x480 JPEG frames faster than a worker answers them; no fault at all.

    With `compare_direct`, the same stream is then sent to the primary directly, for its latency.
    """
    result = FaultResult("overload")
    cluster = _cluster()
    pool = make_pool(640, 480, "jpeg")
    try:
        async def fault(c: LocalCluster, clock: Clock, notes: dict[str, Any]) -> None:
            await asyncio.sleep(t.overload_s)
        await _with_load(cluster, fault, pool, unary=False, stream_fps=OVERLOAD_FPS, result=result)
        assert result.stream is not None
        result.notes["answered_per_s"] = round(result.stream.answered / t.overload_s, 1)
        if compare_direct:
            clock, stop = Clock(), asyncio.Event()
            task = asyncio.create_task(stream_load(cluster.primary_address, pool, clock, stop, cameras=1,
                                                   fps=OVERLOAD_FPS, stall_s=CLIENT_STALL_S))
            await asyncio.sleep(t.overload_s)
            stop.set()
            direct = figures((await task)[0])
            result.notes.update(direct_p50_ms=direct.p50_ms, direct_p99_ms=direct.p99_ms,
                                direct_answered_per_s=round(direct.answered / t.overload_s, 1))
    finally:
        cluster.stop()
    _router_figures(cluster, result)
    return [result]


async def _slow_reader(address: str, pool: FramePool, clock: Clock, stop: asyncio.Event, pause: tuple[float, float],
                       notes: dict[str, Any]) -> list[Record]:
    """One stream at RATE whose client stops reading answers between pause[0] and pause[1] (s)."""
    records: dict[int, Record] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        call = pb_grpc.DetectorStub(ch).DetectStream()

        async def read() -> None:
            last = -1
            while True:
                if pause[0] <= clock.now() < pause[1]:
                    await asyncio.sleep(pause[1] - clock.now())   # not reading: the point of this client
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                rec = records[resp.frame_id]
                rec.answers += 1
                rec.out_of_order = resp.frame_id < last
                last = max(last, resp.frame_id)
                rec.done, rec.backend = clock.now(), resp.worker

        reader = asyncio.create_task(read())
        slowest_write = 0.0
        async for i in _paced(clock, RATE, stop):
            records[i] = Record(sent=clock.now())
            t0 = clock.now()
            await call.write(pool.frame(i))       # blocks while the router's window is full
            slowest_write = max(slowest_write, clock.now() - t0)
        await call.done_writing()
        async with asyncio.timeout(CLIENT_STALL_S):
            await reader
    notes["slowest_write_s"] = round(slowest_write, 2)
    return list(records.values())


async def slow_reader(t: Timing) -> list[FaultResult]:
    """A stream client that stops reading its answers for pause_s, then resumes; a unary client beside it."""
    result = FaultResult("slow-reader")
    cluster = _cluster()
    try:
        pool = make_pool(320, 240, "jpeg")
        clock, stop = Clock(), asyncio.Event()
        unary_task = asyncio.create_task(unary_load(cluster.router_address, pool, clock, stop, rate=RATE,
                                                    deadline_s=DEADLINE_S))
        pause = (t.pre_s, t.pre_s + t.pause_s)
        stream_task = asyncio.create_task(_slow_reader(cluster.router_address, pool, clock, stop, pause,
                                                       result.notes))
        await asyncio.sleep(pause[1] + t.after_s)
        stop.set()
        result.unary = figures(await unary_task)
        result.stream = figures(await stream_task)
    finally:
        cluster.stop()
    _router_figures(cluster, result)
    return [result]


async def steady(t: Timing) -> list[FaultResult]:
    """No fault: what hedging costs in normal operation (extra calls per call at steady load)."""
    result = FaultResult("steady")
    cluster = _cluster()
    try:
        async def fault(c: LocalCluster, clock: Clock, notes: dict[str, Any]) -> None:
            await asyncio.sleep(t.overload_s)
        await _with_load(cluster, fault, make_pool(320, 240, "jpeg"), unary=True, stream_fps=RATE, result=result)
    finally:
        cluster.stop()
    _router_figures(cluster, result)
    assert result.unary is not None
    result.notes["hedged_percent"] = round(100 * result.hedges / max(1, result.unary.sent), 2)
    return [result]


SCENARIOS: dict[str, Callable[[Timing], Coroutine[Any, Any, list[FaultResult]]]] = {
    "steady": steady,
    "partition": lambda t: partition(t, nginx=t.outage_s >= 10),     # nginx beside it in the full run
    "hang": lambda t: hang(t, nginx=t.hang_s >= 8),
    "overload": lambda t: overload(t, compare_direct=t.overload_s >= 10),
    "slow-reader": slow_reader}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def table(results: list[FaultResult]) -> str:
    """One line per scenario and client."""
    lines = ["| scenario | system | client | sent | errors | lost | dup | reordered | p50 ms | p99 ms | max ms "
             "| router |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        router = "" if r.system != "router" else (
            f"{r.stream_moves} stream moves ({r.replayed_frames} frames replayed), {r.hedges} hedges, "
            f"{r.retries} retries, switches: {', '.join(r.switches) or 'none'}")
        for name, f in (("unary", r.unary), ("stream", r.stream)):
            if f is not None:
                lines.append(f"| {r.scenario} | {r.system} | {name} | {f.sent} | {f.errors} | {f.lost} | "
                             f"{f.duplicated} | {f.reordered} | {_ms(f.p50_ms)} | {_ms(f.p99_ms)} | "
                             f"{_ms(f.max_ms)} | {router} |")
                router = ""
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), metavar="A,B",
                   help=f"scenarios to run (default all: {', '.join(SCENARIOS)})")
    p.add_argument("--short", action="store_true", help="the shorter timings the tests use")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="where faults.json goes (default bench/out)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    timing = SHORT if args.short else Timing()
    results: list[FaultResult] = []
    for name in names:
        started = time.monotonic()
        print(f"{name} ...", file=sys.stderr, flush=True)
        results += asyncio.run(SCENARIOS[name](timing))
        print(f"{name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(table(results))
    for r in results:
        if r.notes:
            print(f"{r.scenario} ({r.system}): " + ", ".join(f"{k} {v}" for k, v in r.notes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
