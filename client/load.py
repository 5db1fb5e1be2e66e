"""The ingestion-worker load client: synthetic frames at a fixed rate, unary or over one stream.

Through the client library (`run_library_unary`, `run_library_stream`: what an ingestion worker
written against eagleeye.client does) or as a naive client on the raw stub (`run_unary`,
`run_stream`: a broken stream's unanswered frames are lost), for comparison in benchmarks.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client import AsyncDetector, EagleEyeError
from eagleeye.client.frames import FramePool, image_of
from eagleeye.client.tally import Tally
from eagleeye.common.latency import percentile

Progress = Callable[[float, Tally], None]


@dataclass(frozen=True)
class LoadPlan:
    """What to send: `rate` frames/s for `duration` seconds."""

    rate: float
    duration: float
    deadline_s: float = 5.0     # per unary call
    drain_s: float = 10.0       # how long to wait for a stream's last answers


def print_progress(elapsed: float, tally: Tally) -> None:
    """One status line per second on stderr."""
    p50 = percentile(tally.latencies_ms[-200:], 50)
    p50_text = f"{p50:.1f} ms" if p50 is not None else "-"
    sys.stderr.write(f"  {elapsed:5.1f} s  sent {tally.sent}  answered {tally.answered}  "
                     f"errors {tally.errors}  p50 {p50_text}\n")


async def _ticks(plan: LoadPlan, progress: Progress | None, tally: Tally) -> AsyncIterator[int]:
    """Frame numbers at their scheduled times (open loop: a slow answer does not delay the next frame)."""
    total = max(1, round(plan.rate * plan.duration))
    start = time.monotonic()
    next_report = 1.0
    for i in range(total):
        due = start + i / plan.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the frame clock, not waiting on a result
        elapsed = time.monotonic() - start
        if progress is not None and elapsed >= next_report:
            progress(elapsed, tally)
            next_report += 1.0
        yield i


async def run_unary(stub: pb_grpc.DetectorStub, pool: FramePool, plan: LoadPlan,
                    progress: Progress | None = None) -> Tally:
    """One Detect call per frame, each with its own deadline (concurrent calls: no order to check)."""
    tally = Tally(ordered=False)

    async def one(frame_id: int) -> None:
        t0 = time.monotonic()
        try:
            resp = await stub.Detect(pool.frame(frame_id), timeout=plan.deadline_s)
        except grpc.aio.AioRpcError as e:
            tally.on_error(e.code().name)
            return
        tally.on_answer(resp.frame_id, (time.monotonic() - t0) * 1000, resp.worker)

    tasks = []
    async for frame_id in _ticks(plan, progress, tally):
        tally.on_sent(frame_id)
        tasks.append(asyncio.create_task(one(frame_id)))
    await asyncio.gather(*tasks)
    return tally


def code_name(number: int) -> str:
    """The name of a gRPC status code number (FrameError.code)."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == number), f"CODE_{number}")


async def _receive(call: grpc.aio.StreamStreamCall, tally: Tally, sent_at: dict[int, float]) -> None:
    async for resp in call:
        t0 = sent_at.pop(resp.frame_id, None)
        if resp.HasField("error"):
            tally.on_error(code_name(resp.error.code))
        else:
            tally.on_answer(resp.frame_id, None if t0 is None else (time.monotonic() - t0) * 1000, resp.worker)


async def run_stream(stub: pb_grpc.DetectorStub, pool: FramePool, plan: LoadPlan,
                     progress: Progress | None = None) -> Tally:
    """Every frame over one long-lived DetectStream; if it breaks, count it and open another."""
    tally = Tally()
    sent_at: dict[int, float] = {}
    ticks = aiter(_ticks(plan, progress, tally))
    exhausted = False
    while not exhausted:
        call = stub.DetectStream()
        receiver = asyncio.create_task(_receive(call, tally, sent_at))
        try:
            while not receiver.done():
                try:
                    frame_id = await anext(ticks)
                except StopAsyncIteration:
                    exhausted = True
                    await call.done_writing()
                    break
                sent_at[frame_id] = time.monotonic()
                tally.on_sent(frame_id)
                await call.write(pool.frame(frame_id))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # written into a stream that just broke: the receiver reports why
        done, _ = await asyncio.wait({receiver}, timeout=plan.drain_s)
        if not done:
            call.cancel()
            await asyncio.wait({receiver})
            tally.on_error("DEADLINE_EXCEEDED")
        elif not receiver.cancelled() and isinstance(receiver.exception(), grpc.aio.AioRpcError):
            err = receiver.exception()
            assert isinstance(err, grpc.aio.AioRpcError)
            tally.on_error(err.code().name)
    return tally


async def run_library_unary(det: AsyncDetector, pool: FramePool, plan: LoadPlan,
                            progress: Progress | None = None) -> Tally:
    """One `detect` per frame through the client library (its retries and hedges included)."""
    tally = Tally(ordered=False)

    async def one(frame_id: int) -> None:
        t0 = time.monotonic()
        try:
            result = await det.detect(image_of(pool.frame(frame_id)))
        except EagleEyeError as e:
            tally.on_error(e.code.name if e.code is not None else type(e).__name__)
            return
        tally.on_answer(frame_id, (time.monotonic() - t0) * 1000, result.worker)

    tasks = []
    async for frame_id in _ticks(plan, progress, tally):
        tally.on_sent(frame_id)
        tasks.append(asyncio.create_task(one(frame_id)))
    await asyncio.gather(*tasks)
    return tally


async def run_library_stream(det: AsyncDetector, pool: FramePool, plan: LoadPlan,
                             progress: Progress | None = None) -> Tally:
    """Every frame over the client library's stream: reopened and replayed as needed, each answered once."""
    tally = Tally()
    sent_at: dict[int, float] = {}

    async def frames() -> AsyncIterator[tuple[int, object]]:
        async for frame_id in _ticks(plan, progress, tally):
            sent_at[frame_id] = time.monotonic()
            tally.on_sent(frame_id)
            yield frame_id, image_of(pool.frame(frame_id))

    try:
        async for result in det.stream(frames()):
            t0 = sent_at.pop(result.frame_id, None)
            if result.error is not None and result.error.code is not None:
                tally.on_error(result.error.code.name)
            else:
                tally.on_answer(result.frame_id, None if t0 is None else (time.monotonic() - t0) * 1000,
                                result.worker)
    except EagleEyeError as e:
        tally.on_error(e.code.name if e.code is not None else type(e).__name__)
    return tally
