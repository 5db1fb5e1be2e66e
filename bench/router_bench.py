"""Router figures: its added latency and CPU per RPC, and how fast traffic reaches the standby.

    python -m bench.router_bench [--calls 400]

Starts a primary, a standby and the router on 127.0.0.1 (embedded model). Prints medians; every
figure comes from this one run, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass

import grpc

from bench.otlp_sink import OtlpSink
from client.frames import make_pool
from client.processes import LocalCluster, Proc
from client.stats import percentile
from eagleeye.detector.v1 import detector_pb2 as pb
from eagleeye.detector.v1 import detector_pb2_grpc as pb_grpc

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(proc: Proc) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{proc.popen.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def sequential(address: str, request: pb.DetectRequest | None, calls: int) -> list[float]:
    """Latencies (ms) of `calls` calls made one after another (Detect, or GetModelInfo if no request)."""
    out = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.DetectorStub(ch)
        for i in range(calls + 20):
            t0 = time.perf_counter()
            if request is None:
                await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            else:
                await stub.Detect(request, timeout=10)
            if i >= 20:  # the first calls warm the connection
                out.append((time.perf_counter() - t0) * 1000)
    return out


@dataclass
class Failover:
    fault: str
    fault_to_switch_ms: float | None
    slowest_ms: float
    errors: dict[str, int]
    calls: int


def _wall(ts: str) -> float:
    """A log line's UTC timestamp as seconds since the epoch."""
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])


async def failover(cluster: LocalCluster, fault: str, request: pb.DetectRequest, rate: float) -> Failover:
    """Unary calls at `rate` through the router; inject `fault` a third of the way in."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    calls = int(rate * 10)
    fault_wall = 0.0
    async with grpc.aio.insecure_channel(cluster.router_address) as ch:
        stub = pb_grpc.DetectorStub(ch)

        async def one() -> None:
            sent = time.monotonic()
            try:
                await stub.Detect(request, timeout=5)
                latencies.append((time.monotonic() - sent) * 1000)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1

        tasks = []
        start = time.monotonic()
        for i in range(calls):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # the request clock
            if i == calls // 3:
                fault_wall = time.time()
                cluster.primary.signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGSTOP)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    switch = next((e for e in cluster.router.events if e.get("event") == "switch" and e["to_state"] == "FAILOVER"),
                  None)
    to_switch = None if switch is None else (_wall(switch["ts"]) - fault_wall) * 1000
    return Failover(fault, to_switch, max(latencies, default=0.0), errors, calls)


async def overhead(cluster: LocalCluster, calls: int) -> list[tuple[str, float, float, float | None, float]]:
    """Direct versus routed p50, routed p99 and router CPU per RPC, for a bare call and a Detect."""
    frame = make_pool(320, 240, "jpeg", count=1).frame(0)
    rows = []
    for name, request in (("GetModelInfo (no inference)", None), ("Detect 320x240 JPEG", frame)):
        direct = await sequential(cluster.primary_address, request, calls)
        before = cpu_seconds(cluster.router)
        routed = await sequential(cluster.router_address, request, calls)
        router_cpu_ms = (cpu_seconds(cluster.router) - before) * 1000 / (calls + 20)
        rows.append((name, statistics.median(direct), statistics.median(routed), percentile(routed, 99),
                     router_cpu_ms))
    return rows


def started(router_args: list[str]) -> LocalCluster:
    cluster = LocalCluster(router_args=["--hold-down", "1", "--ramp", "1", *router_args])
    cluster.wait_normal()
    return cluster


async def main_async(calls: int, rate: float) -> int:
    sink = OtlpSink()
    sink_server, endpoint = sink.start()
    print(f"{'telemetry':<16}{'call':<30}{'direct p50':>12}{'router p50':>12}{'added p50':>11}{'router p99':>12}"
          f"{'router CPU/RPC':>16}")
    for label, args, env in (("off", [], {}), ("metrics", ["--metrics-listen", "127.0.0.1:0"], {}),
                             ("metrics+traces", ["--metrics-listen", "127.0.0.1:0"],
                              {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})):
        os.environ.update(env)
        try:
            cluster = started(args)
        finally:
            for key in env:
                del os.environ[key]
        try:
            for name, d, r, r99, cpu in await overhead(cluster, calls):
                print(f"{label:<16}{name:<30}{d:>10.2f}ms{r:>10.2f}ms{r - d:>9.2f}ms{r99 or 0:>10.2f}ms{cpu:>13.2f}ms")
        finally:
            cluster.stop()
    sink_server.stop(None)
    print(f"(spans received by the local OTLP sink: {len(sink.spans)})\n")

    cluster = started([])
    try:
        frame = make_pool(320, 240, "jpeg", count=1).frame(0)
        for fault in ("SIGKILL", "SIGSTOP"):
            cluster.router.forget_events()
            result = await failover(cluster, fault, frame, rate)
            ms = "-" if result.fault_to_switch_ms is None else f"{result.fault_to_switch_ms:.0f} ms"
            print(f"{fault} primary under {rate:g} rps unary: fault to switch (all traffic on the standby) {ms}; "
                  f"client errors {sum(result.errors.values())} of {result.calls} {result.errors or ''}; "
                  f"slowest call {result.slowest_ms:.0f} ms")
            if fault == "SIGSTOP":
                cluster.primary.signal(signal.SIGCONT)
            await asyncio.to_thread(cluster.restart_primary)
            await asyncio.to_thread(cluster.primary.wait_for_event, "model ready", 120)
            await asyncio.to_thread(cluster.router.wait_for_event, "switch", 60, from_state="RECOVERING",
                                    to_state="NORMAL")
    finally:
        cluster.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400, help="sequential calls per overhead figure")
    ap.add_argument("--rate", type=float, default=30.0, help="unary calls per second during the failovers")
    args = ap.parse_args()
    return asyncio.run(main_async(args.calls, args.rate))


if __name__ == "__main__":
    sys.exit(main())
