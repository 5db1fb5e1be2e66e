"""Load for the fault matrix, recording every frame: unary Detect calls or camera-like streams.

Both run until `stop` is set, sending on a fixed clock (open loop: a slow answer never delays the
next frame), and behave as a production client would: unary calls carry a deadline; a stream that
breaks or stalls (its oldest frame unanswered for `stall_s`) is counted, given up and reopened.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from bench.analysis import Record
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client.dial import XDS_CHANNEL_OPTIONS, XDS_SCHEME
from eagleeye.client.frames import FramePool
from eagleeye.client.load import code_name
from eagleeye.common.aio import wait_event


class Clock:
    """Seconds since the run began, shared by the load and the fault script."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.origin


def channel_options(address: str) -> list[tuple[str, int]]:
    """Zero-hop clients reconnect as docs/zero-hop.md recommends; others as gRPC does by default."""
    return list(XDS_CHANNEL_OPTIONS) if address.startswith(XDS_SCHEME) else []


async def _paced(clock: Clock, rate: float, stop: asyncio.Event, offset: float = 0.0):  # type: ignore[no-untyped-def]
    """Frame numbers on the send clock until `stop` is set (a pacing wait, not a synchronisation)."""
    i = 0
    while not stop.is_set():
        due = offset + i / rate
        delay = due - clock.now()
        if delay > 0 and await wait_event(stop, delay):
            return
        yield i
        i += 1


async def unary_load(address: str, pool: FramePool, clock: Clock, stop: asyncio.Event, *,
                     rate: float, deadline_s: float, live: list[Record] | None = None) -> list[Record]:
    """Detect calls at `rate` per second, each with its own deadline; `live` sees each record as it is made."""
    records: list[Record] = [] if live is None else live
    async with grpc.aio.insecure_channel(address, options=channel_options(address)) as ch:
        stub = pb_grpc.DetectorStub(ch)

        async def one(rec: Record, frame_id: int) -> None:
            try:
                resp = await stub.Detect(pool.frame(frame_id), timeout=deadline_s)
            except grpc.aio.AioRpcError as e:
                rec.done, rec.error = clock.now(), e.code().name
                return
            rec.done, rec.backend, rec.answers = clock.now(), resp.worker, 1

        tasks = []
        async for i in _paced(clock, rate, stop):
            rec = Record(sent=clock.now())
            records.append(rec)
            tasks.append(asyncio.create_task(one(rec, i)))
        await asyncio.gather(*tasks)
    return records


class _Camera:
    """One video stream: frames in order over a DetectStream, reopened when it breaks or stalls."""

    def __init__(self, stub: pb_grpc.DetectorStub, pool: FramePool, clock: Clock, number: int,
                 stall_s: float, live: list[Record] | None) -> None:
        self.stub, self.pool, self.clock, self.stall_s, self.live = stub, pool, clock, stall_s, live
        self.base = number * 1_000_000    # frame ids of different cameras never collide
        self.records: dict[int, Record] = {}
        self.pending: dict[int, Record] = {}
        self.breaks: list[tuple[float, str]] = []
        self.call: grpc.aio.StreamStreamCall | None = None
        self.reader: asyncio.Task[None] | None = None
        self.last_answered = -1

    def _open(self) -> None:
        call = self.stub.DetectStream()
        self.call = call
        self.reader = asyncio.create_task(self._read(call))

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for resp in call:
                rec = self.records.get(resp.frame_id)
                if rec is None:
                    continue
                rec.answers += 1
                if rec.answers > 1:
                    continue    # a duplicate: counted, not a new answer
                self.pending.pop(resp.frame_id, None)
                rec.out_of_order = resp.frame_id < self.last_answered
                self.last_answered = max(self.last_answered, resp.frame_id)
                rec.done, rec.backend = self.clock.now(), resp.worker
                if resp.HasField("error"):
                    rec.error = "FRAME_" + code_name(resp.error.code)
        except grpc.aio.AioRpcError as e:
            self._broken(call, e.code().name)

    def _broken(self, call: grpc.aio.StreamStreamCall, why: str) -> None:
        if self.call is None or call is not self.call:
            return
        now = self.clock.now()
        self.breaks.append((now, why))
        for rec in self.pending.values():
            rec.error, rec.done = why, now
        self.pending.clear()
        call.cancel()
        self.call = None

    async def send(self, i: int) -> None:
        if self.call is not None and self.pending:
            oldest = min(r.sent for r in self.pending.values())
            if self.clock.now() - oldest > self.stall_s:
                self._broken(self.call, "STALLED")
        if self.call is None:
            self._open()
        assert self.call is not None
        fid = self.base + i
        rec = Record(sent=self.clock.now())
        self.records[fid] = rec
        self.pending[fid] = rec
        if self.live is not None:
            self.live.append(rec)
        try:
            await self.call.write(self.pool.frame(fid))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass    # the reader reports how the stream ended; the frame is pending until then

    async def finish(self, drain_s: float) -> None:
        """Close the stream; frames unanswered after `drain_s` stay unanswered (lost)."""
        call, reader = self.call, self.reader
        if call is None or reader is None:
            return
        try:
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        done, _ = await asyncio.wait({reader}, timeout=drain_s)
        if not done:
            call.cancel()
            await asyncio.wait({reader})


async def stream_load(address: str, pool: FramePool, clock: Clock, stop: asyncio.Event, *,
                      cameras: int, fps: float, stall_s: float, live: list[Record] | None = None,
                      ) -> tuple[list[Record], list[tuple[float, str]]]:
    """`cameras` streams at `fps` each; returns every frame's record and every stream break."""
    async with grpc.aio.insecure_channel(address, options=channel_options(address)) as ch:
        stub = pb_grpc.DetectorStub(ch)
        cams = [_Camera(stub, pool, clock, n, stall_s, live) for n in range(cameras)]

        async def drive(cam: _Camera, n: int) -> None:
            async for i in _paced(clock, fps, stop, offset=n / (fps * cameras)):
                await cam.send(i)
            await cam.finish(drain_s=stall_s)

        await asyncio.gather(*(drive(c, n) for n, c in enumerate(cams)))
    records = [r for c in cams for r in c.records.values()]
    breaks = sorted(b for c in cams for b in c.breaks)
    return records, breaks
