"""The benchmark harness itself: its load clients, its nginx and a small fault matrix end to end, so
that `make bench` cannot rot unnoticed between the times someone runs it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.analysis import Run, fault_figures
from bench.nginx import Nginx
from bench.nginx import find as find_nginx
from bench.traffic import Clock, stream_load, unary_load
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.frames import make_pool
from eagleeye.harness.processes import Proc

pytestmark = pytest.mark.integration
HAS_NGINX = find_nginx() is not None


@pytest.fixture(scope="module")
def echoes() -> Iterator[tuple[Proc, Proc]]:
    procs = (Proc("python", ["-m", "bench.echo_backend", "--worker-id", "primary"]),
             Proc("python", ["-m", "bench.echo_backend", "--worker-id", "standby"]))
    try:
        for p in procs:
            p.wait_listening()
        yield procs
    finally:
        for p in procs:
            p.stop()


async def _run_for(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)  # the load's duration, not a wait for something to happen
    stop.set()


async def test_load_clients_record_every_frame_once(echoes: tuple[Proc, Proc]) -> None:
    pool = make_pool(64, 48, "jpeg", count=2)
    clock, stop = Clock(), asyncio.Event()
    timer = asyncio.create_task(_run_for(1.0, stop))
    records = await unary_load(echoes[0].address, pool, clock, stop, rate=40, deadline_s=2)
    await timer
    assert 30 <= len(records) <= 50
    assert all(r.ok and r.backend == "primary" and r.answers == 1 for r in records)

    clock, stop = Clock(), asyncio.Event()
    timer = asyncio.create_task(_run_for(1.0, stop))
    frames, breaks = await stream_load(echoes[1].address, pool, clock, stop, cameras=2, fps=20, stall_s=2)
    await timer
    run = Run(frames, fault_at=10.0, end_at=clock.now(), streams=True)
    figures = fault_figures(run)
    assert 30 <= len(frames) <= 50 and breaks == []
    assert (figures.client_errors, figures.lost, figures.duplicated) == (0, 0, 0)


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed (make tools installs it)")
async def test_nginx_sends_to_the_primary_and_falls_back_to_the_backup() -> None:
    primary = Proc("python", ["-m", "bench.echo_backend", "--worker-id", "primary"])
    standby = Proc("python", ["-m", "bench.echo_backend", "--worker-id", "standby"])
    nginx = Nginx(primary.wait_listening(), standby.wait_listening())
    try:
        async with grpc.aio.insecure_channel(nginx.address) as ch:
            stub = pb_grpc.DetectorStub(ch)
            big = pb.DetectRequest(encoded=b"x" * 600_000)     # the buffer settings take raw frames
            assert {(await stub.Detect(big, timeout=5)).worker for _ in range(5)} == {"primary"}
            primary.signal(signal.SIGKILL)
            answers = []
            for _ in range(10):
                try:
                    answers.append((await stub.Detect(big, timeout=5)).worker)
                except grpc.aio.AioRpcError:
                    answers.append("error")
            assert answers[-5:] == ["standby"] * 5
        assert len(nginx.pids()) == 2     # its CPU is charged for the master and the worker process
    finally:
        nginx.stop()
        primary.stop()
        standby.stop()


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed (make tools installs it)")
def test_a_small_matrix_writes_the_results_and_timelines(tmp_path: Path) -> None:
    proc = Proc("python", ["-m", "bench.matrix", "--out", str(tmp_path), "--only", "router,nginx,zero-hop",
                           "--loads", "unary", "--faults", "sigstop", "--overhead-seconds", "0.3",
                           # A load the standby carries alone on a slow shared host: the default 30/s is
                           # near one CPU worker's capacity there, and past it no front end keeps every frame.
                           "--overhead-runs", "1", "--rate", "12"], ready_event="never")
    assert proc.popen.wait(240) == 0, "\n".join(proc.lines[-30:])
    proc.stop()
    rows = json.loads((tmp_path / "results.json").read_text())
    required = {"system", "scenario", "client_errors", "lost", "duplicated", "fault_to_switch_ms", "p50_ms",
                "p99_ms", "cpu_ms_per_rpc"}
    assert all(required <= row.keys() for row in rows)
    by = {(r["system"], r["scenario"], r["load"]): r for r in rows}
    assert {s for s, _, _ in by} == {"router", "nginx", "zero-hop", "direct"}
    for load in ("unary", "stream"):
        assert by[("router", "overhead 1 KB", load)]["cpu_ms_per_rpc"] > 0
        assert by[("direct", "overhead 1 KB", load)]["requests_per_s"] > 0
        assert by[("zero-hop", "overhead 1 KB", load)]["requests_per_s"] > 0     # xDS clients were served
        assert by[("zero-hop", "overhead 1 KB", load)]["client_cpu_ms_per_rpc"] > 0
    assert by[("zero-hop", "sigstop", "unary")]["fault_to_switch_ms"] is not None
    router = by[("router", "sigstop", "unary")]
    assert router["lost"] == 0 and router["fault_to_switch_ms"] is not None, router  # the router's promise
    assert by[("nginx", "sigstop", "unary")]["cpu_ms_per_rpc"] is not None
    assert (tmp_path / "timeline-sigstop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scale_out_bench_runs_end_to_end(tmp_path: Path) -> None:
    """`python -m bench.scale` at two sizes and one fault, briefly: rows come out, the load spreads and
    the failed primary's streams, only they, move, with nothing lost."""
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--sizes", "1,2", "--seconds", "2", "--modes", "router",
                          "--service-ms", "20", "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "scale.json").read_text())
    steady = {r["primaries"]: r for r in rows if not r["fault"]}
    assert steady[2]["frames_per_s"] > 1.5 * steady[1]["frames_per_s"], steady
    assert set(steady[2]["per_worker"]) == {"p1", "p2"}
    faults = [r for r in rows if r["fault"]]
    assert {(r["primaries"], r["fault"]) for r in faults} == {(n, f) for n in (1, 2) for f in ("sigkill", "sigstop")}
    for r in faults:
        assert (r["errors"], r["lost"]) == (0, 0), r
        assert set(r["moved_from"]) <= {"p1", "primary"}, r
    assert "| router | 2 |" in (tmp_path / "scale.md").read_text()
