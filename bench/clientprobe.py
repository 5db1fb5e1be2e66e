"""A stream client in a process of its own, reporting what its caller would notice (tests and bench).

    python -m bench.clientprobe --target xds:///eagleeye-detector --xds-server HOST:PORT --frames 300 --fps 50

`--client library` streams through eagleeye.client (reopened and replayed as needed); `--client naive`
on the raw stub, as a simple client would: a broken stream is opened again and the frames it had not
answered are lost. A process of its own because gRPC's xDS client reads its bootstrap once per process.

Prints {"ready": true} once the first answer is in (the moment to apply a fault), then one JSON line:
per stream whether every frame came back once and in order, how many were answered and lost, the
workers that answered (in turn), the error raised, the waits (p50, p99, max), the library's stats, and
the process's CPU seconds per answered frame. Frames are placeholder bytes: for simulated workers
(bench/simworker.py). `--fps 0` sends as fast as answers come back (the CPU figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

WINDOW = 32


def _waits(waits: list[float]) -> dict[str, int | None]:
    waits = sorted(waits)
    if not waits:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(1000 * waits[len(waits) // 2]), "p99_ms": round(1000 * waits[int(len(waits) * 0.99)]),
            "max_ms": round(1000 * waits[-1])}


class _Frames:
    """Frame ids 1..n at the camera's pace (fps 0: as fast as the window lets them go)."""

    def __init__(self, n: int, fps: float) -> None:
        self.n, self.fps = n, fps
        self.sent: dict[int, float] = {}

    async def ids(self, room: asyncio.Semaphore | None = None) -> AsyncIterator[int]:
        for i in range(1, self.n + 1):
            if room is not None:
                await room.acquire()
            self.sent.setdefault(i, time.monotonic())
            yield i
            if self.fps:
                await asyncio.sleep(1 / self.fps)  # a camera's pace

    async def images(self) -> AsyncIterator[bytes]:
        """The frames themselves, placeholder bytes (what a camera gives the library)."""
        for i in range(1, self.n + 1):
            self.sent[i] = time.monotonic()
            yield b"x"
            if self.fps:
                await asyncio.sleep(1 / self.fps)  # a camera's pace


async def _library_stream(det: Any, args: argparse.Namespace, ready: asyncio.Event) -> dict[str, Any]:
    from eagleeye.client import EagleEyeError

    frames = _Frames(args.frames, args.fps)
    ids: list[int] = []
    workers: list[str] = []
    waits: list[float] = []
    error = ""
    try:
        async for r in det.stream(frames.images()):
            ids.append(r.frame_id)
            waits.append(time.monotonic() - frames.sent[r.frame_id])
            if not workers or workers[-1] != r.worker:
                workers.append(r.worker)
            ready.set()
    except EagleEyeError as e:
        error = f"{type(e).__name__}: {e}"
    return {"in_order_once": ids == list(range(1, args.frames + 1)), "answered": len(ids),
            "lost": args.frames - len(set(ids)), "workers": workers, "error": error, **_waits(waits)}


async def _naive_stream(stub: Any, args: argparse.Namespace, ready: asyncio.Event) -> dict[str, Any]:
    """One DetectStream; when it breaks, another for the frames still to come (the unanswered are lost)."""
    import grpc

    from eagleeye.api.detector.v1 import detector_pb2 as pb

    frames = _Frames(args.frames, args.fps)
    room = asyncio.Semaphore(WINDOW)
    ticks = aiter(frames.ids(room))
    answered: list[int] = []
    workers: list[str] = []
    waits: list[float] = []
    errors: list[str] = []
    exhausted = False
    while not exhausted:
        call = stub.DetectStream()
        inflight: set[int] = set()

        async def receive(call: Any = call, inflight: set[int] = inflight) -> None:
            async for resp in call:
                inflight.discard(resp.frame_id)
                room.release()
                answered.append(resp.frame_id)
                waits.append(time.monotonic() - frames.sent[resp.frame_id])
                if not workers or workers[-1] != resp.worker:
                    workers.append(resp.worker)
                ready.set()

        receiver = asyncio.ensure_future(receive())
        try:
            while not receiver.done():
                try:
                    fid = await anext(ticks)
                except StopAsyncIteration:
                    exhausted = True
                    await call.done_writing()
                    break
                inflight.add(fid)
                await call.write(pb.DetectRequest(frame_id=fid, encoded=b"x"))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        try:
            await asyncio.wait_for(receiver, 30)
        except grpc.aio.AioRpcError as e:
            errors.append(e.code().name)
        except TimeoutError:
            call.cancel()
            errors.append("DEADLINE_EXCEEDED")
        for _ in inflight:  # lost with the stream: their room comes back
            room.release()
    return {"in_order_once": answered == list(range(1, args.frames + 1)), "answered": len(answered),
            "lost": args.frames - len(set(answered)), "workers": workers, "error": ", ".join(errors),
            **_waits(waits)}


async def main_async(args: argparse.Namespace) -> int:
    from eagleeye.client import AsyncDetector

    ready = asyncio.Event()
    async with AsyncDetector(args.target, xds_server=args.xds_server, timeout=args.timeout, window=WINDOW) as det:
        for _ in range(args.warmup):  # unary calls first, as a service starting up checks its dependency
            await det.detect(b"x")

        async def say_ready() -> None:
            await ready.wait()
            print(json.dumps({"ready": True}), flush=True)

        announcer = asyncio.ensure_future(say_ready())
        cpu0 = sum(os.times()[:2])
        if args.client == "library":
            streams = await asyncio.gather(*(_library_stream(det, args, ready) for _ in range(args.streams)))
        else:
            from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
            stub = pb_grpc.DetectorStub(det._channel)
            streams = await asyncio.gather(*(_naive_stream(stub, args, ready) for _ in range(args.streams)))
        cpu = sum(os.times()[:2]) - cpu0
        announcer.cancel()
        answered = sum(s["answered"] for s in streams)
        print(json.dumps({"client": args.client, "streams": streams, "stats": det.stats,
                          "cpu_ms_per_frame": round(1000 * cpu / answered, 4) if answered else None}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.clientprobe")
    p.add_argument("--target", required=True)
    p.add_argument("--xds-server")
    p.add_argument("--client", choices=("library", "naive"), default="library")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--fps", type=float, default=50, help="frames a second per stream; 0: as fast as answered")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--warmup", type=int, default=0, help="unary calls before the streams open")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
