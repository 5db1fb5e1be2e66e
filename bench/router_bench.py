"""What the router's telemetry costs: added latency and router CPU per RPC with metrics and traces
off, metrics on, and metrics plus traces exported over OTLP (bench/matrix.py has the failovers and
the comparison with nginx).

    python -m bench.router_bench [--calls 400]

Starts a primary, a standby and the router on 127.0.0.1 (embedded model). Prints medians; every
figure comes from this one run, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import grpc

from bench.cpu import cpu_seconds
from bench.otlp_sink import OtlpSink
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.frames import make_pool
from eagleeye.common.latency import percentile
from eagleeye.harness.processes import LocalCluster


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


async def overhead(cluster: LocalCluster, calls: int) -> list[tuple[str, float, float, float | None, float]]:
    """Direct versus routed p50, routed p99 and router CPU per RPC, for a bare call and a Detect."""
    frame = make_pool(320, 240, "jpeg", count=1).frame(0)
    rows = []
    for name, request in (("GetModelInfo (no inference)", None), ("Detect 320x240 JPEG", frame)):
        direct = await sequential(cluster.primary_address, request, calls)
        before = cpu_seconds(cluster.router.popen.pid)
        routed = await sequential(cluster.router_address, request, calls)
        router_cpu_ms = (cpu_seconds(cluster.router.popen.pid) - before) * 1000 / (calls + 20)
        rows.append((name, statistics.median(direct), statistics.median(routed), percentile(routed, 99),
                     router_cpu_ms))
    return rows


def started(router_args: list[str]) -> LocalCluster:
    cluster = LocalCluster(router_args=["--hold-down", "1", "--ramp", "1", *router_args])
    cluster.wait_normal()
    return cluster


async def main_async(calls: int) -> int:
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

    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400, help="sequential calls per overhead figure")
    args = ap.parse_args()
    return asyncio.run(main_async(args.calls))


if __name__ == "__main__":
    sys.exit(main())
