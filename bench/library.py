"""The client library under faults, and what it costs: `python -m bench.library [--out bench/out]`.

A router (its xDS control plane on) in front of a primary and a standby (simulated workers,
bench/simworker.py), and stream clients in processes of their own (bench/clientprobe.py: 2 streams of
`--frames` frames at 50 fps each). Rows:

- zero-hop (`xds:///eagleeye-detector`), the library's streams, the primary SIGKILLed, SIGSTOPped or
  SIGTERMed once the first answers are in;
- through the router, the router SIGKILLed and restarted on the same port (a rolling update's worst
  case), the library's streams and a naive client's (the raw stub: a broken stream's unanswered frames
  are lost);
- through two router replicas (the client's target names both: `ipv4:A,B`), a rolling update: each
  replica in turn SIGTERMed (it drains) and started again, ready before the next goes; streams of
  3x `--frames` frames, so that the update happens while they run;
- CPU: the client process's CPU per answered frame, library and raw stub, streaming as fast as one
  simulated worker answers (placeholder frames: the client's own cost, the worst case for the ratio);
  medians of alternating runs, then the median ratio of runs with both clients at once (a slow spell
  of a shared machine then falls on both alike).

Each row: errors, frames lost, the slowest waits, streams reopened. Writes library.json and library.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.matrix import free_address
from eagleeye.harness.processes import Proc

ROOT = Path(__file__).resolve().parent.parent


class Fleet:
    def __init__(self, replicas: int = 1) -> None:
        self.procs: list[Proc] = []
        try:
            self.primary = self._proc("python", ["-m", "bench.simworker", "--worker-id", "primary",
                                                 "--service-ms", "10", "--max-batch", "8", "--max-queue", "256"])
            self.standby = self._proc("python", ["-m", "bench.simworker", "--worker-id", "standby",
                                                 "--service-ms", "10", "--max-batch", "8", "--max-queue", "256"])
            self.workers = ["--primary", self.primary.wait_listening(), "--standby", self.standby.wait_listening(),
                            "--hold-down", "60"]
            # Router replicas, each with its own ports, in front of the same workers; `target` names every
            # replica (gRPC's pick_first moves a client to the next when one goes).
            ports = [(free_address(), free_address()) for _ in range(replicas)]
            self.listen, self.xds = ports[0]
            self.args = self._router_args(*ports[0])
            self.router = self.start_router()
            self.replicas = [(self.router, self.args)]
            self.replicas += [(self.start_router(a), a) for a in (self._router_args(*p) for p in ports[1:])]
            self.target = "ipv4:" + ",".join(listen for listen, _ in ports) if replicas > 1 else self.listen
        except BaseException:
            self.stop()
            raise

    def _router_args(self, listen: str, xds: str) -> list[str]:
        return ["--listen", listen, "--xds-listen", xds, *self.workers]

    def _proc(self, program: str, args: list[str]) -> Proc:
        proc = Proc(program, args)
        self.procs.append(proc)
        return proc

    def start_router(self, args: list[str] | None = None) -> Proc:
        router = self._proc("eagleeye-router", args or self.args)
        router.wait_for_event("switch", 60, to_state="NORMAL")
        return router

    def restart_router(self) -> None:
        self.router.popen.send_signal(signal.SIGKILL)
        self.router.stop()
        self.router = self.start_router()

    def rolling_update(self) -> None:
        """Each replica in turn: SIGTERM (it drains: answers what it read, ends its streams), then a new
        one on the same ports, ready before the next replica goes."""
        for i, (router, args) in enumerate(self.replicas):
            router.stop()
            self.replicas[i] = (self.start_router(args), args)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()


def probe(target: str, xds: str | None, client: str, frames: int, fps: float, streams: int,
          fault: Any = None) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.clientprobe", "--target", target, "--client", client, "--frames", str(frames),
            "--fps", str(fps), "--streams", str(streams), "--warmup", "20"] + (["--xds-server", xds] if xds else [])
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        if not json.loads(first or "{}").get("ready"):
            raise RuntimeError(f"the client did not start: {first} {p.stderr.read() if p.stderr else ''}")
        if fault is not None:
            fault()
        out, err = p.communicate(timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"the client failed: {err[-2000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        if p.poll() is None:
            p.kill()


def row(mode: str, fault: str, report: dict[str, Any]) -> dict[str, Any]:
    s = report["streams"]
    return {"mode": mode, "fault": fault, "client": report["client"],
            "errors": sum(bool(x["error"]) for x in s), "lost": sum(x["lost"] for x in s),
            "in_order_once": all(x["in_order_once"] for x in s),
            "p99_ms": max(x["p99_ms"] or 0 for x in s), "max_ms": max(x["max_ms"] or 0 for x in s),
            "reopened": report["stats"]["reopened"], "cpu_ms_per_frame": report["cpu_ms_per_frame"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.library", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300, help="frames per stream in the fault rows (default 300)")
    ap.add_argument("--cpu-frames", type=int, default=6000, help="frames in each CPU run (default 6000)")
    ap.add_argument("--cpu-runs", type=int, default=5,
                    help="CPU runs per client, alternating; the rows show the medians (default 5)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    faults = {"sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP, "sigterm": signal.SIGTERM}
    for name, sig in faults.items():
        for attempt in range(1, 4):
            fleet = Fleet()
            try:
                report = probe("xds:///eagleeye-detector", fleet.xds, "library", args.frames, 50, 2,
                               lambda f=fleet, s=sig: f.primary.popen.send_signal(s))
            finally:
                fleet.stop()
            # The fault must hit a stream: gRPC may have put both on the standby (5 % of the traffic).
            if any(s["workers"][:1] == ["primary"] for s in report["streams"]):
                break
            print(f"primary {name}: no stream was on the primary; again ({attempt} of 3)", file=sys.stderr)
        rows.append(row("zero-hop", f"primary {name}", report))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for client in ("library", "naive"):
        fleet = Fleet()
        try:
            report = probe(fleet.listen, None, client, args.frames, 50, 2, fleet.restart_router)
            rows.append(row("router", "router restart", report))
        finally:
            fleet.stop()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for client in ("library", "naive"):
        fleet = Fleet(replicas=2)
        try:
            report = probe(fleet.target, None, client, 3 * args.frames, 50, 2, fleet.rolling_update)
            rows.append(row("router x2", "rolling update", report))
        finally:
            fleet.stop()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    # CPU: one simulated worker alone (the rest of the fleet stopped), the clients taking turns, medians:
    # a single run on a shared 2-core machine varies by 20 % or more.
    # Then side by side: both clients at once, each run's own ratio (a slow spell falls on both alike).
    cpu_runs: dict[str, list[dict[str, Any]]] = {"library": [], "naive": []}
    paired: list[float] = []
    fleet = Fleet()
    try:
        fleet.router.stop()
        fleet.standby.stop()
        for _ in range(args.cpu_runs):
            for client in ("library", "naive"):
                cpu_runs[client].append(probe(fleet.primary.address, None, client, args.cpu_frames, 0, 1))
        with ThreadPoolExecutor(2) as both:
            for _ in range(args.cpu_runs):
                lib_run, raw_run = both.map(lambda c: probe(fleet.primary.address, None, c, args.cpu_frames, 0, 1),
                                            ("library", "naive"))
                paired.append(lib_run["cpu_ms_per_frame"] / raw_run["cpu_ms_per_frame"])
    finally:
        fleet.stop()
    for reports in cpu_runs.values():
        reports.sort(key=lambda r: r["cpu_ms_per_frame"])
        rows.append(row("worker", f"none (CPU, median of {len(reports)})", reports[len(reports) // 2]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    command = "python -m bench.library " + " ".join(argv if argv is not None else sys.argv[1:])
    lib, raw = (r["cpu_ms_per_frame"] for r in rows[-2:])
    lines = [f"`{command.strip()}` on {platform.node()} ({_cores()} cores); simulated workers (10 ms per batch "
             f"of 8); fault rows: 2 streams x {args.frames} frames at 50 fps",
             "", "| mode | fault | client | errors | lost frames | every frame once, in order | p99 ms | max ms "
             "| streams reopened | client CPU ms/frame |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['fault']} | {r['client']} | {r['errors']} | {r['lost']} | "
              f"{'yes' if r['in_order_once'] else 'no'} | {r['p99_ms']} | {r['max_ms']} | {r['reopened']} | "
              f"{r['cpu_ms_per_frame']} |" for r in rows]
    side_by_side = statistics.median(paired)
    if lib and raw:
        lines += ["", f"The library's CPU per frame: {lib / raw:.2f}x the raw stub's (medians of {args.cpu_runs} "
                  f"runs each, in turns); side by side, the median of {len(paired)} runs' ratios: "
                  f"{side_by_side:.2f}x (each run: {', '.join(f'{r:.2f}' for r in paired)})."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "library.json").write_text(json.dumps({"command": command, "rows": rows,
                                                       "cpu_ratio_side_by_side": paired}, indent=2) + "\n")
    (args.out / "library.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
