"""`make demo`: start a worker on the embedded model and stream synthetic video through it, live.

Until the router exists this shows one worker: its health as the standard protocol reports it,
frames per second, detections per second and latency, refreshed in place; then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.frames import make_pool
from client.processes import Proc
from client.stats import Tally, percentile
from eagleeye.detector.v1 import detector_pb2 as pb
from eagleeye.detector.v1 import detector_pb2_grpc as pb_grpc

HEALTH_NAMES = ("readiness", "liveness", "headroom")


async def health_of(ch: grpc.aio.Channel) -> dict[str, str]:
    stub = health_pb2_grpc.HealthStub(ch)
    out = {}
    for name in HEALTH_NAMES:
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=1)
            out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError as e:
            out[name] = e.code().name
    return out


async def wait_ready(ch: grpc.aio.Channel, timeout: float = 120) -> float:
    t0 = time.monotonic()
    call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="readiness"))
    async for resp in call:
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            call.cancel()
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            break
    raise SystemExit("the worker did not become ready")


async def run(duration: float, rate: float) -> int:
    print("EagleEye demo: one detector worker on the embedded model (router: coming next)")
    ok = False
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", "--worker-id", "primary"])
    try:
        address = proc.wait_listening()
        async with grpc.aio.insecure_channel(address) as ch:
            print(f"worker listening on {address}; loading and warming the model ...")
            took = await wait_ready(ch)
            info = await pb_grpc.DetectorStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            print(f"ready after {took:.1f} s: model {info.name}:{info.version} on {info.device}, "
                  f"classes {', '.join(info.classes)}")
            pool = make_pool(640, 360, "jpeg")
            tally, objects = Tally(), 0
            call = pb_grpc.DetectorStub(ch).DetectStream()
            sent_at: dict[int, float] = {}

            async def receive() -> None:
                nonlocal objects
                async for resp in call:
                    tally.on_answer(resp.frame_id, (time.monotonic() - sent_at.pop(resp.frame_id)) * 1000)
                    objects += len(resp.detections)

            receiver = asyncio.create_task(receive())
            start = time.monotonic()
            last_shown, last_answered, last_objects = start, 0, 0
            for i in range(int(duration * rate)):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # the camera's frame clock
                sent_at[i] = time.monotonic()
                tally.on_sent(i)
                await call.write(pool.frame(i))
                now = time.monotonic()
                if now - last_shown >= 1.0:
                    health = await health_of(ch)
                    fps = (tally.answered - last_answered) / (now - last_shown)
                    dps = (objects - last_objects) / (now - last_shown)
                    p50 = percentile(tally.latencies_ms[-int(rate):], 50) or 0.0
                    p99 = percentile(tally.latencies_ms[-int(rate):], 99) or 0.0
                    # Refresh in place on a terminal; one line per second into a pipe or file.
                    lead, tail = ("\r\x1b[K", "") if sys.stdout.isatty() else ("", "\n")
                    sys.stdout.write(
                        f"{lead}{now - start:5.1f} s | {fps:5.1f} frames/s | {dps:6.1f} detections/s | "
                        f"p50 {p50:6.1f} ms p99 {p99:6.1f} ms | "
                        + " ".join(f"{n}={s}" for n, s in health.items()) + tail)
                    sys.stdout.flush()
                    last_shown, last_answered, last_objects = now, tally.answered, objects
            await call.done_writing()
            await asyncio.wait_for(receiver, 30)
            s = tally.summary()
            print(f"\n\nsummary: sent {s['sent']}, answered {s['answered']}, lost {s['lost']}, "
                  f"duplicated {s['duplicated']}, reordered {s['reordered']}; {objects} objects detected; "
                  f"latency p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms")
            ok = s["sent"] == s["answered"] and not (s["lost"] or s["duplicated"] or s["reordered"])
    finally:
        code = proc.stop()
        print(f"worker drained and exited with code {code}")
    return 0 if ok and code == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(prog="eagleeye-demo", description=__doc__)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of video (default 20)")
    ap.add_argument("--rate", type=float, default=15.0, help="frames per second (default 15)")
    args = ap.parse_args()
    return asyncio.run(run(args.duration, args.rate))


if __name__ == "__main__":
    sys.exit(main())
