"""A client-library user for the tests: streams through `eagleeye.client` in a process of its own (gRPC's
xDS client reads its bootstrap once per process), reporting what a caller would notice.

    python -m tests.clientprobe --target xds:///eagleeye-detector --xds-server HOST:PORT --frames 300 --fps 50

Prints {"ready": true} once the first result is in, then one JSON line at the end: per stream whether
every frame came back once and in order, the workers that answered (in turn), the errors raised, the
slowest results, and the library's stats.
Frames are placeholder bytes: for simulated workers (bench/simworker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator


async def main_async(args: argparse.Namespace) -> int:
    from eagleeye.client import AsyncDetector, EagleEyeError

    ready = asyncio.Event()
    out: list[dict[str, object]] = []

    async def one(det: AsyncDetector) -> None:
        sent: dict[int, float] = {}

        async def frames() -> AsyncIterator[bytes]:
            for i in range(1, args.frames + 1):
                sent[i] = time.monotonic()
                yield b"x"
                await asyncio.sleep(1 / args.fps)  # a camera's pace

        ids: list[int] = []
        workers: list[str] = []
        waits: list[float] = []
        error = ""
        try:
            async for r in det.stream(frames()):
                ids.append(r.frame_id)
                if not workers or workers[-1] != r.worker:
                    workers.append(r.worker)
                waits.append(time.monotonic() - sent[r.frame_id])
                ready.set()
        except EagleEyeError as e:
            error = f"{type(e).__name__}: {e}"
        waits.sort()
        out.append({"in_order_once": ids == list(range(1, args.frames + 1)), "answered": len(ids), "error": error,
                    "workers": workers,
                    "p50_ms": round(1000 * waits[len(waits) // 2]) if waits else None,
                    "p99_ms": round(1000 * waits[int(len(waits) * 0.99)]) if waits else None,
                    "max_ms": round(1000 * waits[-1]) if waits else None})

    async with AsyncDetector(args.target, xds_server=args.xds_server, timeout=args.timeout) as det:
        async def say_ready() -> None:
            await ready.wait()
            print(json.dumps({"ready": True}), flush=True)

        for _ in range(args.warmup):  # unary calls first, as a service starting up checks its dependency
            await det.detect(b"x")
        announcer = asyncio.ensure_future(say_ready())
        await asyncio.gather(*(one(det) for _ in range(args.streams)))
        announcer.cancel()
        print(json.dumps({"streams": out, "stats": det.stats}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--xds-server")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--fps", type=float, default=50)
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--warmup", type=int, default=0, help="unary calls before the streams open")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
