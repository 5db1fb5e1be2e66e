"""`make demo`: a primary, a hot standby and the router on this machine, a failover and a switch-back, live.

Camera-like streams send synthetic video through the router. Midway the primary is killed (SIGKILL);
later it is started again. The screen shows, refreshed in place, each backend's health and weight,
frames per second per backend, latency and the router's switch events; a summary closes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import grpc

from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.client.frames import make_pool
from eagleeye.client.tally import Tally
from eagleeye.common.latency import percentile
from eagleeye.harness.processes import LocalCluster


@dataclass
class Stats:
    """What the streams saw; `served` counts answers per worker id, with times."""

    # Several cameras share one tally, so frame order is not checked here (each stream's order is).
    tally: Tally = field(default_factory=lambda: Tally(ordered=False))
    served: list[tuple[float, str]] = field(default_factory=list)
    objects: int = 0


async def camera(stub: pb_grpc.DetectorStub, index: int, cameras: int, fps: float, duration: float,
                 stats: Stats) -> None:
    """One camera: a long-lived DetectStream at `fps`; frame ids are unique across cameras."""
    pool = make_pool(480, 270, "jpeg", count=8, seed=30_000_000 + index * 100)
    call = stub.DetectStream()
    sent_at: dict[int, float] = {}

    async def receive() -> None:
        async for resp in call:
            now = time.monotonic()
            stats.tally.on_answer(resp.frame_id, (now - sent_at.pop(resp.frame_id, now)) * 1000)
            stats.served.append((now, resp.worker))
            stats.objects += len(resp.detections)

    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    for i in range(int(duration * fps)):
        await asyncio.sleep(max(0.0, start + i / fps - time.monotonic()))  # the camera's frame clock
        fid = i * cameras + index
        sent_at[fid] = time.monotonic()
        stats.tally.on_sent(fid)
        await call.write(pool.frame(fid))
    await call.done_writing()
    await receiver


def render(now: float, start: float, state: rpb.RouterState, stats: Stats, log: list[str], tty: bool) -> str:
    recent = [w for t, w in stats.served if t > now - 1.0]
    lat = stats.tally.latencies_ms[-60:]
    lines = [f"EagleEye demo   t = {now - start:5.1f} s   router state: {state.state}"
             + (f"   (hold-down {state.hold_down_remaining_s:.1f} s left)" if state.hold_down_remaining_s > 0 else "")
             + (f"   (ramp {state.ramp_progress:.0%})" if 0 < state.ramp_progress < 1 else ""),
             f"{'backend':<9}{'address':<18}{'health':<44}{'weight':>8}{'frames/s':>10}"]
    for b in state.backends:
        name = rpb.Backend.Name(b.backend).removeprefix("BACKEND_").lower()
        health = ("ready" + ("" if b.headroom else ", no headroom")) if b.ready else f"DOWN: {b.reason}"[:42]
        lines.append(f"{name:<9}{b.address:<18}{health:<44}{b.weight:>7.1f}%{recent.count(name):>10}")
    s = stats.tally.summary()
    lines.append(f"frames sent {s['sent']}  answered {s['answered']}  lost-so-far {s['sent'] - s['answered']}  "
                 f"duplicated {s['duplicated']}  objects {stats.objects}  latency p50 "
                 f"{percentile(lat, 50) or 0:.0f} ms  p99 {percentile(lat, 99) or 0:.0f} ms")
    lines.append("switch events:")
    for e in list(state.recent_events)[-6:]:
        when = time.strftime("%H:%M:%S", time.localtime(e.time_unix))
        detect = f" (detected in {e.detection_ms:.0f} ms)" if e.detection_ms else ""
        lines.append(f"  {when} {e.from_state} -> {e.to_state}{detect}: {e.reason}"[:140])
    lines += [f"  * {m}" for m in log[-4:]]
    return ("\x1b[H\x1b[2J" if tty else "\n") + "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    print("starting a primary and a standby worker (embedded model) and the router on 127.0.0.1 ...", flush=True)
    cluster = LocalCluster(router_args=["--hold-down", str(args.hold_down), "--ramp", str(args.ramp)])
    log: list[str] = []
    stats = Stats()
    try:
        cluster.wait_normal()
        async with grpc.aio.insecure_channel(cluster.router_address) as ch, \
                grpc.aio.insecure_channel(cluster.admin_address) as admin_ch:
            stub, admin = pb_grpc.DetectorStub(ch), rpb_grpc.RouterAdminStub(admin_ch)
            start = time.monotonic()
            cams = [asyncio.create_task(camera(stub, i, args.cameras, args.fps, args.duration, stats))
                    for i in range(args.cameras)]
            killed_at = restarted_at = primary_ready_at = None
            while not all(c.done() for c in cams):
                now = time.monotonic()
                if killed_at is None and now - start >= args.kill_at:
                    cluster.primary.popen.kill()
                    killed_at = now
                    log.append(f"t={now - start:.1f} s: primary killed (SIGKILL)")
                if killed_at is not None and restarted_at is None and now - start >= args.restart_at:
                    restarted_at = now
                    log.append(f"t={now - start:.1f} s: primary starting again on its old port")
                    await asyncio.to_thread(cluster.restart_primary)
                if restarted_at is not None and primary_ready_at is None and any(
                        e.get("event") == "model ready" for e in cluster.primary.events):
                    primary_ready_at = time.monotonic()
                    log.append(f"t={primary_ready_at - start:.1f} s: primary ready (model loaded and warm)")
                state = (await admin.GetState(rpb.GetStateRequest(), timeout=2)).state
                sys.stdout.write(render(now, start, state, stats, log, tty))
                sys.stdout.flush()
                await asyncio.wait(cams, timeout=0.5 if tty else 1.0)
            await asyncio.gather(*cams)
            state = (await admin.GetState(rpb.GetStateRequest(), timeout=2)).state
            sys.stdout.write(render(time.monotonic(), start, state, stats, log, tty) + "\n")
    finally:
        cluster.stop()

    s = stats.tally.summary()
    first_standby = next((t for t, w in stats.served if killed_at and t > killed_at and w == "standby"), None)
    back_on_primary = next((t for t, w in stats.served if primary_ready_at and t > primary_ready_at
                            and w == "primary"), None)
    normal = next((e for e in state.recent_events if e.from_state == "RECOVERING" and e.to_state == "NORMAL"), None)
    failover = next((e for e in state.recent_events if e.to_state == "FAILOVER"), None)
    print("\nsummary")
    clean = s["sent"] == s["answered"] and not s["duplicated"]
    print(f"  frames sent {s['sent']}, answered {s['answered']}, lost {s['lost']}, duplicated {s['duplicated']}"
          f" ({'every frame answered exactly once' if clean else 'NOT CLEAN'})")
    if failover is not None and killed_at is not None and first_standby is not None:
        print(f"  failover: the router switched in {failover.detection_ms:.0f} ms after last seeing the primary "
              f"healthy; first standby answer {1000 * (first_standby - killed_at):.0f} ms after the kill")
    if primary_ready_at is not None and back_on_primary is not None:
        print(f"  switch-back: first frame on the primary again {back_on_primary - primary_ready_at:.1f} s after it "
              f"was ready (hold-down {args.hold_down:g} s, then a {args.ramp:g} s ramp"
              + (", ramp complete" if normal is not None else ", ramp still running") + ")")
    print(f"  latency p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms; {stats.objects} objects")
    return 0 if clean else 1


def main() -> int:
    ap = argparse.ArgumentParser(prog="eagleeye-demo", description=__doc__)
    ap.add_argument("--cameras", type=int, default=4, help="video streams (default 4)")
    ap.add_argument("--fps", type=float, default=5.0, help="frames per second per camera (default 5)")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of video (default 40)")
    ap.add_argument("--kill-at", type=float, default=8.0, help="kill the primary at this second (default 8)")
    ap.add_argument("--restart-at", type=float, default=14.0, help="start it again at this second (default 14)")
    ap.add_argument("--hold-down", type=float, default=5.0, help="router hold-down, seconds (default 5)")
    ap.add_argument("--ramp", type=float, default=8.0, help="router ramp, seconds (default 8)")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
