"""Health Check latency of a worker, idle and while inference saturates the CPU.

    python -m bench.check_latency [--checks 300] [--rate 200]

Starts an eagleeye-detector on 127.0.0.1, measures Check("readiness") round trips from this
process, then again while `eagleeye load` (a separate process) offers more frames than the worker
can serve. Prints medians and tails, and the worker's own load figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.common.latency import percentile
from eagleeye.harness.processes import BIN, Proc


async def check_latencies(address: str, n: int) -> list[float]:
    out = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        req = health_pb2.HealthCheckRequest(service="readiness")
        await stub.Check(req, timeout=5)
        for _ in range(n):
            t0 = time.perf_counter()
            await stub.Check(req, timeout=5)
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.01)  # spread the probes over the load period
    return out


def describe(name: str, values: list[float]) -> str:
    return (f"{name:<28} median {statistics.median(values):6.3f} ms  p99 {percentile(values, 99):6.3f} ms  "
            f"max {max(values):6.3f} ms  (n={len(values)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=300)
    ap.add_argument("--rate", type=float, default=200.0, help="offered frames/s during saturation")
    args = ap.parse_args()
    worker = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0"])
    try:
        address = worker.wait_listening()
        worker.wait_for_event("model ready", 120)
        idle = asyncio.run(check_latencies(address, args.checks))
        duration = max(5.0, args.checks * 0.012 + 3)
        load = subprocess.Popen([str(BIN / "eagleeye"), "load", "--target", address, "--mode", "unary",
                                 "--rate", str(args.rate), "--duration", str(duration), "--deadline", "30",
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(2.0)  # let the queue fill before probing
        busy = asyncio.run(check_latencies(address, args.checks))
        out, _ = load.communicate(timeout=duration + 120)
        summary = json.loads(out.strip().splitlines()[-1])
    finally:
        worker.stop()
    print(describe("Check, idle worker", idle))
    print(describe("Check, inference saturated", busy))
    print(f"offered {args.rate:g} frames/s for {duration:.0f} s: answered {summary['answered']} of "
          f"{summary['sent']} ({summary['answered'] / duration:.0f}/s), errors {summary['error_codes']}, "
          f"p50 {summary['p50_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
