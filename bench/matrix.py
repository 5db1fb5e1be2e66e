"""The fault matrix and the proxy-overhead table: eagleeye-router side by side with nginx, with
zero-hop clients (the router's decisions over xDS, the workers called directly) and with calling a
worker directly, same clients, same faults, all in one run.

    python -m bench.matrix [--out bench/out] [--only router,nginx] [--faults sigkill,...] [--loads unary,stream]

Starts real processes on 127.0.0.1: a primary and a standby eagleeye-detector (embedded model,
fault injection on), eagleeye-router (also serving xDS) and nginx (grpc_pass, primary plus `backup`
standby) in front of the same two workers. For each system, load and fault it runs the load, injects
the fault, records every frame, and restores the primary. Prints a table, writes results.json and
one PNG timeline per fault under --out.

This process is the zero-hop client: its xDS bootstrap names one control-plane address, which every
router started here listens on in turn (a restarted control plane, as clients see it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import analysis
from bench.analysis import PRIMARY, Figures, Record, Run, first_answer_from
from bench.cpu import cpu_seconds
from bench.nginx import Nginx
from bench.traffic import Clock, stream_load, unary_load
from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.router.v1 import router_pb2, router_pb2_grpc
from eagleeye.client.dial import xds_bootstrap
from eagleeye.client.frames import make_pool
from eagleeye.common.latency import percentile
from eagleeye.harness.processes import LocalCluster, Proc

# The load: 30 frames/s either way (unary calls with a 2 s deadline, or three 10 fps cameras).
UNARY_RATE = 30.0
DEADLINE_S = 2.0
CAMERAS, FPS = 3, 10.0
STALL_S = 2.0
PRE_S = 2.0          # steady load before the fault
OUTAGE_S = 3.0       # how long the primary stays down, hung or stopped
FLAP_CYCLES = 3      # flapping: SIGSTOP 1 s, SIGCONT 1 s, this many times
AFTER_S = 3.0        # load after the primary is back (ready)...
SWITCH_BACK_WAIT_S = 12.0   # ...and on until it answers again (1 s more), at most this long after ready
# The router with its failover settings as in production, except: no standby share in NORMAL, so
# that "first answer from the standby" means the same as with nginx's backup; a short hold-down and
# ramp, so that switching back fits the run; and the hold-down's growth (while the primary flaps)
# forgotten after 1 s in NORMAL, so that every run starts from the same router state.
ROUTER_ARGS = ["--weights", "100,0", "--hold-down", "2", "--ramp", "1"]
ROUTER_TOML = "hold_down_max_s = 8.0\nhold_down_reset_s = 1.0\n"


XDS_TARGET = "xds:///eagleeye-detector"
# Zero-hop clients: the failures a client must live with when it calls workers itself.
ZERO_HOP_FAULTS = ("sigkill", "sigstop", "sigterm")
SYSTEMS = ("router", "nginx", "zero-hop", "direct")


def free_address() -> str:
    """A loopback address with a port free now (for the control plane every router here serves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def router_args(workdir: Path) -> list[str]:
    conf = workdir / "router-bench.toml"
    conf.write_text(ROUTER_TOML)
    return [*ROUTER_ARGS, "--config", str(conf)]
FAULTS = ("sigkill", "sigstop", "sigterm", "inference_hang", "flapping")
SCENARIO_TITLES = {
    "sigkill": "SIGKILL primary", "sigstop": "SIGSTOP primary (hung, connection alive)",
    "sigterm": "SIGTERM primary (planned)", "inference_hang": "inference hang, health server alive",
    "flapping": "flapping primary (SIGSTOP/SIGCONT 1 s each)", "switch_back": "primary returns (switch back)",
}


@dataclass
class Result:
    """One row of results.json."""

    system: str
    scenario: str
    load: str
    frames: int
    client_errors: int | None
    lost: int | None
    duplicated: int | None
    fault_to_switch_ms: float | None
    switch_back_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_rpc: float | None
    requests_per_s: float | None = None
    p50_before_ms: float | None = None
    p99_before_ms: float | None = None
    p50_during_ms: float | None = None
    p99_during_ms: float | None = None
    p50_after_ms: float | None = None
    p99_after_ms: float | None = None
    traffic_moves: int | None = None
    error_codes: dict[str, int] = field(default_factory=dict)
    client_cpu_ms_per_rpc: float | None = None


def _row(system: str, scenario: str, load: str, f: Figures, cpu_ms: float | None, *, back: bool) -> Result:
    return Result(system, scenario, load, f.frames, f.client_errors, f.lost, f.duplicated,
                  None if back else f.to_switch_ms, f.back_ms, f.p50_ms, f.p99_ms, cpu_ms,
                  p50_before_ms=f.before[0], p99_before_ms=f.before[1], p50_during_ms=f.during[0],
                  p99_during_ms=f.during[1], p50_after_ms=f.after[0], p99_after_ms=f.after[1],
                  traffic_moves=f.traffic_moves, error_codes=f.error_codes)


async def until_ready(ch: grpc.aio.Channel, timeout: float) -> None:
    """Until the worker on `ch` answers its readiness Check SERVING; fails after `timeout` s."""
    health = health_pb2_grpc.HealthStub(ch)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)  # polling the standard health Check, as any client would
    raise RuntimeError(f"the primary did not report ready within {timeout:g} s")


async def until_router_normal(admin_address: str, timeout: float) -> None:
    """Until the router whose admin API is at `admin_address` reports NORMAL; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(admin_address) as ch:
        admin = router_pb2_grpc.RouterAdminStub(ch)
        while (await admin.GetState(router_pb2.GetStateRequest(), timeout=5)).state.state != "NORMAL":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router did not reach NORMAL within {timeout:g} s")
            await asyncio.sleep(0.1)  # polling the router's state: it has no "wait for" call


class Front:
    """What the clients call: the router, nginx, or the primary itself; `cpu()` is the proxy's CPU."""

    def __init__(self, name: str, address: Callable[[], str], cpu: Callable[[], float] | None) -> None:
        self.name = name
        self._address = address
        self.cpu = cpu

    @property
    def address(self) -> str:
        return self._address()


class Bench:
    def __init__(self, cluster: LocalCluster, nginx: Nginx, rate: float = UNARY_RATE) -> None:
        self.cluster = cluster
        self.rate = rate  # frames/s of the fault load: unary calls, or spread over the cameras
        self.nginx = nginx
        self.fronts = {
            "router": Front("router", lambda: cluster.router_address, lambda: cpu_seconds(cluster.router.popen.pid)),
            "nginx": Front("nginx", lambda: nginx.address, nginx.cpu_seconds),
            "zero-hop": Front("zero-hop", lambda: XDS_TARGET, None),
            "direct": Front("direct", lambda: cluster.primary_address, None),
        }
        self.pool = make_pool(320, 240, "jpeg", count=8)
        self.runs: dict[tuple[str, str, str], Run] = {}

    # -- restoring the normal state between runs ------------------------------------------------

    async def settle(self, system: str) -> None:
        """Until the primary is up and ready and the front sends it the traffic again."""
        c = self.cluster
        if c.primary.popen.poll() is not None:
            await asyncio.to_thread(c.restart_primary)
        async with grpc.aio.insecure_channel(c.primary_address) as ch:
            await until_ready(ch, 90)
        deadline = time.monotonic() + 90
        if system in ("router", "zero-hop"):  # the same router decides for both
            await until_router_normal(c.admin_address, 90)
        elif system == "nginx":
            async with grpc.aio.insecure_channel(self.nginx.address) as ch:
                stub = pb_grpc.DetectorStub(ch)
                in_a_row = 0
                while in_a_row < 3:
                    try:
                        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                        in_a_row = in_a_row + 1 if info.worker == "primary" else 0
                    except grpc.aio.AioRpcError:
                        in_a_row = 0
                    if time.monotonic() > deadline:
                        raise RuntimeError("nginx did not send traffic to the primary again within 90 s")
                    await asyncio.sleep(0.1)  # nginx retries a failed server only when traffic arrives
        c.primary.forget_events()
        c.router.forget_events()

    # -- faults ---------------------------------------------------------------------------------

    async def _until(self, clock: Clock, t: float) -> None:
        await asyncio.sleep(max(0.0, t - clock.now()))  # the fault script's own schedule

    async def _restart_and_wait(self, clock: Clock, run: Run) -> None:
        run.back_at = clock.now()
        await asyncio.to_thread(self.cluster.restart_primary)
        await asyncio.to_thread(self.cluster.primary.wait_for_event, "health transition", 120, ready=True)
        run.ready_at = clock.now()

    async def inject(self, fault: str, clock: Clock, run: Run, live: list[Record]) -> None:
        c = self.cluster
        await self._until(clock, PRE_S)
        run.fault_at = clock.now()
        if fault == "sigkill":
            c.primary.signal(signal.SIGKILL)
            await self._until(clock, run.fault_at + OUTAGE_S)
            await self._restart_and_wait(clock, run)
        elif fault == "sigterm":
            c.primary.signal(signal.SIGTERM)
            await asyncio.to_thread(c.primary.popen.wait, 60)
            await self._until(clock, run.fault_at + OUTAGE_S)
            await self._restart_and_wait(clock, run)
        elif fault == "sigstop":
            c.primary.signal(signal.SIGSTOP)
            await self._until(clock, run.fault_at + OUTAGE_S)
            c.primary.signal(signal.SIGCONT)
            run.back_at = run.ready_at = clock.now()
        elif fault == "inference_hang":
            async with grpc.aio.insecure_channel(c.primary_address) as ch:
                stub = fi_grpc.FaultInjectionStub(ch)
                await stub.HangInference(fi.HangInferenceRequest(), timeout=5)
                await self._until(clock, run.fault_at + OUTAGE_S)
                await stub.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
                run.back_at = clock.now()
                await until_ready(ch, 60)    # its canary passes again: readiness SERVING
            run.ready_at = clock.now()
        elif fault == "flapping":
            for cycle in range(FLAP_CYCLES):
                c.primary.signal(signal.SIGSTOP)
                await self._until(clock, run.fault_at + 2 * cycle + 1)
                c.primary.signal(signal.SIGCONT)
                await self._until(clock, run.fault_at + 2 * cycle + 2)
            run.back_at = run.ready_at = clock.now()
        else:
            raise ValueError(fault)
        ready = run.ready_at if run.ready_at is not None else clock.now()
        await self._until(clock, ready + AFTER_S)
        while first_answer_from(live, PRIMARY, ready) is None and clock.now() < ready + SWITCH_BACK_WAIT_S:
            await asyncio.sleep(0.1)  # watching the load's own records for the switch back
        back = first_answer_from(live, PRIMARY, ready)
        if back is not None:
            await self._until(clock, back + 1.0)

    async def one(self, system: str, load: str, fault: str) -> list[Result]:
        front = self.fronts[system]
        await self.settle(system)
        clock = Clock()
        stop = asyncio.Event()
        run = Run(records=[], fault_at=0.0, streams=load == "stream")
        cpu0 = front.cpu() if front.cpu else None

        live: list[Record] = []

        async def script() -> None:
            try:
                await self.inject(fault, clock, run, live)
            finally:
                stop.set()

        injector = asyncio.create_task(script())
        if load == "unary":
            run.records = await unary_load(front.address, self.pool, clock, stop, rate=self.rate,
                                           deadline_s=DEADLINE_S, live=live)
        else:
            run.records, run.breaks = await stream_load(front.address, self.pool, clock, stop, cameras=CAMERAS,
                                                        fps=self.rate / CAMERAS, stall_s=STALL_S, live=live)
        await injector
        run.end_at = clock.now()
        cpu_ms = None if cpu0 is None or front.cpu is None else \
            (front.cpu() - cpu0) * 1000 / max(1, len(run.records))
        self.runs[(system, load, fault)] = run
        rows = [_row(system, fault, load, analysis.fault_figures(run), cpu_ms, back=False)]
        if fault == "sigkill":
            back = analysis.switch_back_figures(run)
            if back is not None:
                rows.append(_row(system, "switch_back", load, back, cpu_ms, back=True))
        return rows


# -- proxy overhead -------------------------------------------------------------------------------

OVERHEAD_PAYLOADS = (("unary", "1 KB", 1_000), ("unary", "50 KB (JPEG frame)", 50_000),
                     ("unary", "600 KB (raw frame)", 600_000), ("stream", "1 KB", 1_000),
                     ("stream", "50 KB (JPEG frame)", 50_000))
OVERHEAD_CONCURRENCY = 16
STREAMS, STREAM_WINDOW = 8, 4     # stream overhead: 8 streams, each with up to 4 frames unanswered


async def closed_loop(address: str, request: pb.DetectRequest, seconds: float, concurrency: int) -> list[float]:
    """`concurrency` callers, each calling again as soon as answered, for `seconds`; latencies in ms."""
    out: list[float] = []
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        stub = pb_grpc.DetectorStub(ch)
        for _ in range(20):
            await stub.Detect(request, timeout=10)   # connection and proxy warm-up
        end = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                await stub.Detect(request, timeout=10)
                out.append((time.monotonic() - t0) * 1000)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return out


async def stream_loop(address: str, request: pb.DetectRequest, seconds: float) -> list[float]:
    """STREAMS DetectStreams, each sending as soon as fewer than STREAM_WINDOW frames are unanswered,
    for `seconds`; per-frame latencies in ms."""
    out: list[float] = []
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        stub = pb_grpc.DetectorStub(ch)
        end = time.monotonic() + seconds

        async def camera(n: int) -> None:
            call = stub.DetectStream()
            room = asyncio.Semaphore(STREAM_WINDOW)
            sent: dict[int, float] = {}

            async def answers() -> None:
                async for resp in call:
                    out.append((time.monotonic() - sent.pop(resp.frame_id)) * 1000)
                    room.release()

            async def frames() -> None:
                i = 0
                while time.monotonic() < end:
                    await room.acquire()
                    fid = n * 10_000_000 + i
                    sent[fid] = time.monotonic()
                    await call.write(pb.DetectRequest(encoded=request.encoded, frame_id=fid))
                    i += 1
                await call.done_writing()

            async with asyncio.TaskGroup() as tasks:   # a failed reader stops its writer, and the run
                tasks.create_task(answers())
                tasks.create_task(frames())

        await asyncio.gather(*(camera(n) for n in range(STREAMS)))
    return out


async def overhead(seconds: float, runs: int, xds_address: str) -> list[Result]:
    """Direct, zero-hop, router and nginx in front of two echo backends: requests/s, latency, proxy CPU
    per RPC and the client's own CPU per RPC (this process)."""
    primary = Proc("python", ["-m", "bench.echo_backend", "--worker-id", "primary"])
    standby = Proc("python", ["-m", "bench.echo_backend", "--worker-id", "standby"])
    p_addr, s_addr = primary.wait_listening(), standby.wait_listening()
    router = Proc("eagleeye-router", ["--listen", "127.0.0.1:0", "--xds-listen", xds_address, "--primary", p_addr,
                                      "--standby", s_addr, *ROUTER_ARGS])
    router.wait_listening()
    nginx = Nginx(p_addr, s_addr)
    rows: list[Result] = []
    try:
        router.wait_for_event("switch", 60, to_state="NORMAL")
        fronts: dict[str, tuple[str, Callable[[], float] | None]] = {
            "direct": (p_addr, None),
            "zero-hop": (XDS_TARGET, None),
            "router": (router.address, lambda: cpu_seconds(router.popen.pid)),
            "nginx": (nginx.address, nginx.cpu_seconds),
        }
        for load, label, size in OVERHEAD_PAYLOADS:
            request = pb.DetectRequest(encoded=os.urandom(size))
            samples: dict[str, list[tuple[float | None, ...]]] = {k: [] for k in fronts}
            for _ in range(runs):      # interleaved, so drifts of a shared machine hit every system alike
                for system, (address, cpu) in fronts.items():
                    cpu0 = cpu() if cpu else None
                    own0 = cpu_seconds(os.getpid())
                    t0 = time.monotonic()
                    if load == "unary":
                        lat = await closed_loop(address, request, seconds, OVERHEAD_CONCURRENCY)
                        calls = len(lat) + 20      # the warm-up calls count for the CPU
                    else:
                        lat = await stream_loop(address, request, seconds)
                        calls = len(lat)
                    wall = time.monotonic() - t0
                    cpu_ms = None if cpu is None or cpu0 is None else (cpu() - cpu0) * 1000 / calls
                    own_ms = (cpu_seconds(os.getpid()) - own0) * 1000 / calls
                    samples[system].append((len(lat) / wall, percentile(lat, 50), percentile(lat, 99), cpu_ms,
                                            own_ms))
            for system, s in samples.items():
                def med(i: int, s: list[tuple[float | None, ...]] = s) -> float | None:
                    vals = [x[i] for x in s if x[i] is not None]
                    return statistics.median(vals) if vals else None   # type: ignore[type-var]
                rows.append(Result(system, f"overhead {label}", load, 0, 0, None, None, None, None,
                                   med(1), med(2), med(3), requests_per_s=med(0), client_cpu_ms_per_rpc=med(4)))
    finally:
        nginx.stop()
        for p in (router, primary, standby):
            p.stop()
    return rows


# -- output -----------------------------------------------------------------------------------------

def _ms(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fault_table(rows: list[Result]) -> str:
    head = (f"{'scenario':<16}{'load':<8}{'system':<8}{'frames':>7}{'errors':>7}{'lost':>6}{'dup':>5}"
            f"{'switch ms':>10}{'back ms':>9}{'p50':>7}{'p99':>8}{'p99 during':>11}{'moves':>6}{'CPU/RPC':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.scenario.startswith("overhead"):
            continue
        lines.append(f"{r.scenario:<16}{r.load:<8}{r.system:<8}{r.frames:>7}{_ms(r.client_errors):>7}"
                     f"{_ms(r.lost):>6}{_ms(r.duplicated):>5}{_ms(r.fault_to_switch_ms):>10}"
                     f"{_ms(r.switch_back_ms):>9}{_ms(r.p50_ms, 1):>7}{_ms(r.p99_ms, 1):>8}"
                     f"{_ms(r.p99_during_ms, 1):>11}{_ms(r.traffic_moves):>6}{_ms(r.cpu_ms_per_rpc, 2):>9}")
    return "\n".join(lines)


def overhead_table(rows: list[Result]) -> str:
    head = (f"{'load':<8}{'payload':<22}{'system':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'proxy CPU ms/RPC':>18}"
            f"{'client CPU ms/RPC':>19}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.scenario.startswith("overhead"):
            lines.append(f"{r.load:<8}{r.scenario.removeprefix('overhead '):<22}{r.system:<10}"
                         f"{_ms(r.requests_per_s):>8}{_ms(r.p50_ms, 2):>9}{_ms(r.p99_ms, 2):>9}"
                         f"{_ms(r.cpu_ms_per_rpc, 3):>18}{_ms(r.client_cpu_ms_per_rpc, 3):>19}")
    by = {(r.load, r.scenario, r.system): r for r in rows if r.scenario.startswith("overhead")}
    for (load, scenario, system), r in by.items():
        direct = by.get((load, scenario, "direct"))
        if system == "zero-hop" and direct and direct.requests_per_s and r.requests_per_s and \
                direct.client_cpu_ms_per_rpc and r.client_cpu_ms_per_rpc:
            lines.append(f"zero-hop / direct, {load} {scenario.removeprefix('overhead ')}: throughput "
                         f"{r.requests_per_s / direct.requests_per_s:.2f}x, client CPU per RPC "
                         f"{r.client_cpu_ms_per_rpc / direct.client_cpu_ms_per_rpc:.2f}x")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    started = time.monotonic()

    def progress(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    xds_address = free_address()
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(xds_bootstrap(xds_address, "bench"))
    if args.overhead_seconds > 0:
        progress(f"proxy overhead: direct, zero-hop, router, nginx; {len(OVERHEAD_PAYLOADS)} loads and payloads, "
                 f"{args.overhead_runs} interleaved runs of {args.overhead_seconds:g} s")
        results += await overhead(args.overhead_seconds, args.overhead_runs, xds_address)
        print(overhead_table(results), flush=True)

    if args.faults:
        cluster = LocalCluster(worker_args=["--fault-injection"], router_args=router_args(out),
                               xds_listen=xds_address)
        nginx = Nginx(cluster.primary_address, cluster.standby_address)
        bench = Bench(cluster, nginx, args.rate)
        try:
            cluster.wait_normal()
            for system in args.only:
                for load in loads_for(system, args.loads):
                    for fault in [f for f in args.faults if system != "zero-hop" or f in ZERO_HOP_FAULTS]:
                        progress(f"{system} / {load} / {fault}")
                        rows = await bench.one(system, load, fault)
                        results += rows
                        for r in rows:
                            progress(f"  {r.scenario}: errors {r.client_errors}, lost {r.lost}, "
                                     f"to switch {_ms(r.fault_to_switch_ms or r.switch_back_ms)} ms")
        finally:
            nginx.stop()
            cluster.stop()
        print(fault_table(results), flush=True)
        from bench.timeline import draw_all
        for path in draw_all(bench.runs, out, SCENARIO_TITLES):
            progress(f"wrote {path}")

    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    progress(f"wrote {out / 'results.json'} ({len(results)} rows)")
    return 0


def loads_for(system: str, loads: list[str]) -> list[str]:
    """Called directly, a worker's fault reaches its clients whatever the load: unary shows it."""
    return [lo for lo in loads if lo == "unary"] or loads if system == "direct" else loads


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
        return names
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/out"), help="where results.json and the PNGs go")
    ap.add_argument("--only", metavar="SYSTEMS", type=_names(SYSTEMS), default=list(SYSTEMS),
                    help=f"systems in the fault matrix (default {','.join(SYSTEMS)}; zero-hop: "
                         f"{', '.join(ZERO_HOP_FAULTS)} only)")
    ap.add_argument("--loads", metavar="LOADS", type=_names(("unary", "stream")), default=["unary", "stream"],
                    help="default unary,stream (direct calls: unary only)")
    ap.add_argument("--faults", metavar="FAULTS", type=_names(FAULTS), default=list(FAULTS),
                    help=f"default {','.join(FAULTS)}; empty: overhead only")
    ap.add_argument("--overhead-seconds", type=float, default=1.5, help="per system and payload and run; 0: skip")
    ap.add_argument("--overhead-runs", type=int, default=2, help="interleaved runs whose medians are reported")
    ap.add_argument("--rate", type=float, default=UNARY_RATE,
                    help=f"frames/s of the fault scenarios' load (default {UNARY_RATE:g}: unary calls, or "
                         f"{CAMERAS} cameras at {FPS:g} fps); one worker must carry it alone while the other is down")
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error(f"--rate {args.rate:g}: must be positive")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
