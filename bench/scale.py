"""Scale-out: throughput with 1, 2, 4 and 8 simulated primaries (+1 standby), through the router and in
zero-hop mode, and a primary failing under saturating load at each size.

Each simulated worker (bench/simworker.py) answers a batch of up to MAX_BATCH frames every SERVICE_MS
without using the CPU, so a worker's capacity is fixed (MAX_BATCH / SERVICE_MS) and what the table
shows is the router's and the clients' cost and how evenly the load spreads, not this machine's
cores. The load is closed-loop and saturating: STREAMS_PER_PRIMARY streams per primary, each keeping
WINDOW frames unanswered.

    python -m bench.scale [--sizes 1,2,4,8] [--seconds 6] [--out bench/out]

Columns: answered frames/s; ratio to linear (frames/s at N over N x frames/s at 1, same mode); the
router's CPU per frame; max/min of the primaries' answered frames (how evenly load spread). Fault
rows: one primary SIGKILLed, or SIGSTOPped, a third of the way into the run: client errors, frames
lost (sent, never answered), and the streams the router moved after a failure, by the worker they
left (only the failed one's should move).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from bench.cpu import cpu_seconds
from bench.matrix import XDS_TARGET, free_address, until_router_normal
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.args import positive_arg
from eagleeye.client.dial import XDS_CHANNEL_OPTIONS, xds_bootstrap
from eagleeye.harness.processes import Proc

SERVICE_MS, MAX_BATCH = 40.0, 4          # 100 frames/s per worker
STREAMS_PER_PRIMARY, WINDOW = 4, 4       # 16 frames unanswered per primary: 4 batches deep, saturating
SIZES = (1, 2, 4, 8)
FAULTS = ("sigkill", "sigstop")
ADMIN_TOKEN = "scale-bench-admin-token-0123456789abcdef"
# The standby takes no share in NORMAL (weights 100,0), so that the throughput rows are the primaries'
# alone (a stream on the standby would add its capacity to the base); a failed primary stays out for
# the rest of the run.
ROUTER_TOML = "hold_down_s = 60.0\n"
ROUTER_ARGS = ["--weights", "100,0"]


@dataclass
class Row:
    mode: str                      # router or zero-hop
    primaries: int
    fault: str                     # "" for the throughput rows
    frames_per_s: float
    ratio_to_linear: float | None
    router_cpu_ms_per_frame: float | None
    spread_max_over_min: float | None
    per_worker: dict[str, int]
    errors: int
    lost: int
    moved_from: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None


class Fleet:
    """N simulated primaries, one standby and a router in front of them (with its xDS control plane)."""

    def __init__(self, primaries: int, workdir: Path, service_ms: float = SERVICE_MS,
                 max_batch: int = MAX_BATCH) -> None:
        self.procs: list[Proc] = []
        self._service = [str(service_ms), str(max_batch)]
        try:
            self.workers = {f"p{i + 1}": self._worker(f"p{i + 1}") for i in range(primaries)}
            self.workers["s1"] = self._worker("s1")
            self.address = {name: w.wait_listening() for name, w in self.workers.items()}
            conf = workdir / "router-scale.toml"
            conf.write_text(ROUTER_TOML)
            self.xds = free_address()
            primary = ",".join(a for n, a in self.address.items() if n.startswith("p"))
            self.router = Proc("eagleeye-router", [
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", self.xds,
                "--config", str(conf), *ROUTER_ARGS, "--primary", primary, "--standby", self.address["s1"]],
                env={"EAGLEEYE_ADMIN_TOKEN": ADMIN_TOKEN})
            self.procs.append(self.router)
            self.target = self.router.wait_listening()
            self.admin = self.router.wait_for_event("listening")["admin"]
        except BaseException:
            self.stop()
            raise

    def _worker(self, name: str) -> Proc:
        proc = Proc("python", ["-m", "bench.simworker", "--worker-id", name, "--service-ms", self._service[0],
                               "--max-batch", self._service[1], "--max-queue", "256"])
        self.procs.append(proc)
        return proc

    async def until_normal(self, timeout: float = 60) -> None:
        await until_router_normal(self.admin, timeout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()


@dataclass
class Load:
    answered: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0


async def saturate(target: str, streams: int, seconds: float, load: Load) -> float:
    """`streams` streams, each keeping WINDOW frames unanswered, for `seconds`; then each waits for its
    last answers. Returns the seconds the load ran."""
    options = list(XDS_CHANNEL_OPTIONS) if target.startswith("xds:") else []
    async with grpc.aio.insecure_channel(target, options=options) as ch:
        stub = pb_grpc.DetectorStub(ch)
        await stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=30, wait_for_ready=True)
        started = time.monotonic()
        end = started + seconds

        async def camera() -> None:
            call = stub.DetectStream(timeout=seconds + 60)
            room = asyncio.Semaphore(WINDOW)
            sent: dict[int, float] = {}

            async def answers() -> None:
                async for resp in call:
                    t = sent.pop(resp.frame_id, None)
                    if t is not None:
                        if time.monotonic() <= end:
                            load.answered[resp.worker] += 1
                            load.latencies_ms.append((time.monotonic() - t) * 1000)
                        room.release()

            reader = asyncio.create_task(answers())
            try:
                i = 0
                while time.monotonic() < end and not reader.done():
                    await room.acquire()
                    i += 1
                    sent[i] = time.monotonic()
                    await call.write(pb.DetectRequest(frame_id=i, encoded=b"x"))
                await call.done_writing()
                await reader
            except grpc.aio.AioRpcError:
                load.errors += 1
            except asyncio.InvalidStateError:
                load.errors += 1   # the call ended under the writer
            finally:
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    load.errors += 1
                reader.cancel()
                load.lost += len(sent)

        await asyncio.gather(*(camera() for _ in range(streams)))
        return min(time.monotonic(), end) - started


async def run_size(args: argparse.Namespace, n: int, workdir: Path, fault: str = "", zero_hop: bool = False) -> Row:
    seconds = args.seconds
    fleet = Fleet(n, workdir, args.service_ms, args.max_batch)
    try:
        await fleet.until_normal()
        if zero_hop:
            os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(xds_bootstrap(fleet.xds, f"scale-{n}"))
        target = XDS_TARGET if zero_hop else fleet.target
        load = Load()
        cpu0 = cpu_seconds(fleet.router.popen.pid)
        running = asyncio.create_task(saturate(target, n * STREAMS_PER_PRIMARY, seconds, load))
        if fault:
            await asyncio.sleep(seconds / 3)  # the fault's moment in the run
            victim = fleet.workers["p1"]
            if fault == "sigkill":
                victim.popen.send_signal(signal.SIGKILL)
            else:
                victim.frozen = True
                victim.popen.send_signal(signal.SIGSTOP)
        took = await running
        cpu = cpu_seconds(fleet.router.popen.pid) - cpu0
        total = sum(load.answered.values())
        primaries = [load.answered.get(f"p{i + 1}", 0) for i in range(n)]
        spread = None
        if not fault and n > 1:
            spread = max(primaries) / min(primaries) if min(primaries) > 0 else float("inf")
        moved: collections.Counter[str] = collections.Counter()
        for e in fleet.router.events:
            if e.get("event") == "stream moved":
                frm = str(e.get("frm", ""))
                moved[next((w for w, a in fleet.address.items() if frm.endswith(a)), frm)] += 1
        lat = sorted(load.latencies_ms)
        return Row("zero-hop" if zero_hop else "router", n, fault, total / took, None,
                   None if zero_hop else cpu * 1000 / max(total, 1), spread, dict(load.answered), load.errors,
                   load.lost, dict(moved), statistics.median(lat) if lat else None,
                   lat[int(0.99 * (len(lat) - 1))] if lat else None)
    finally:
        fleet.stop()


def table(rows: list[Row]) -> str:
    out = ["| mode | primaries | frames/s | ratio to linear | router CPU ms/frame | max/min primary load | "
           "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.fault:
            continue
        out.append(f"| {r.mode} | {r.primaries} | {r.frames_per_s:.0f} | "
                   f"{'-' if r.ratio_to_linear is None else f'{r.ratio_to_linear:.2f}'} | "
                   f"{'-' if r.router_cpu_ms_per_frame is None else f'{r.router_cpu_ms_per_frame:.3f}'} | "
                   f"{'-' if r.spread_max_over_min is None else f'{r.spread_max_over_min:.2f}'} | "
                   f"{r.p50_ms or 0:.0f} | {r.p99_ms or 0:.0f} |")
    faults = [r for r in rows if r.fault]
    if faults:
        out += ["", "| mode | primaries | fault on p1 | errors | lost frames | streams moved after a failure, from |",
                "|---|---|---|---|---|---|"]
        for r in faults:
            out.append(f"| {r.mode} | {r.primaries} | {r.fault} | {r.errors} | {r.lost} | "
                       f"{', '.join(f'{w}: {k}' for w, k in sorted(r.moved_from.items())) or 'none'} |")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        base: float | None = None
        for n in args.sizes:
            row = await run_size(args, n, workdir, zero_hop=mode == "zero-hop")
            base = row.frames_per_s if n == 1 else base
            row.ratio_to_linear = row.frames_per_s / (n * base) if base else None
            rows.append(row)
            print(f"{mode} {n}: {row.frames_per_s:.0f} frames/s, errors {row.errors}, lost {row.lost}",
                  file=sys.stderr, flush=True)
    for n in args.sizes if args.faults else ():
        for fault in FAULTS:
            row = await run_size(args, n, workdir, fault=fault)
            rows.append(row)
            print(f"router {n} {fault}: errors {row.errors}, lost {row.lost}, moved {row.moved_from}",
                  file=sys.stderr, flush=True)
    text = table(rows)
    head = (f"`python -m bench.scale {' '.join(sys.argv[1:])}` on {platform.node()} ({os.cpu_count()} cores); "
            f"simulated workers: batches of {args.max_batch} every {args.service_ms:g} ms "
            f"({args.max_batch * 1000 / args.service_ms:.0f} frames/s each), {STREAMS_PER_PRIMARY} streams per "
            f"primary, {WINDOW} frames unanswered per stream")
    print(head + "\n\n" + text)
    (workdir / "scale.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    (workdir / "scale.md").write_text(head + "\n\n" + text + "\n")
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers, e.g. 1,2,4,8") from None
    if not sizes or min(sizes) < 1 or sizes[0] != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes from 1 (the base of the ratio), e.g. 1,2,4,8")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=list(SIZES), help="numbers of primaries (default 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds of load per run (default 6)")
    p.add_argument("--modes", default="router,zero-hop", help="router, zero-hop or both (default both)")
    p.add_argument("--no-faults", dest="faults", action="store_false", help="throughput rows only")
    p.add_argument("--service-ms", type=positive_arg, default=SERVICE_MS,
                   help=f"a simulated worker's batch time (default {SERVICE_MS:g})")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help=f"frames per batch (default {MAX_BATCH})")
    p.add_argument("--out", default="bench/out", help="where scale.json and scale.md go (default bench/out)")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
