"""A simulated GPU worker for scale tests on machines without GPUs.

    python -m bench.simworker --listen 127.0.0.1:0 --worker-id sim-1 --service-ms 20 --max-batch 8

It serves the Detector API and the standard health protocol as eagleeye-detector does: every health
name (readiness, its aliases "" and the service name, liveness, headroom), readiness NOT_SERVING until
`--start-delay-s` has passed (a model loading), and a bounded queue: a request finding `--max-queue`
ahead of it gets RESOURCE_EXHAUSTED with the worker's retry-elsewhere marker, so a router tries
another worker. Requests are answered in batches of up to `--max-batch`, one batch every
`--service-ms` milliseconds, as a GPU would: the time passes on a timer, burning no CPU, so one
machine can run many of them and the figures measure the router, not the simulation. It sends the
worker's load reports (common/loadreport.py: per-call trailer and out-of-band stream), its busy share
being the share of time a batch was running.

Its faults are the worker's own FaultInjection service (always on: it is a test tool; loopback only
unless told otherwise): DelayInference makes each batch take that long (readiness NOT_SERVING when it
is longer than the canary deadline, `--canary-deadline-s`), HangInference stops batches (readiness
NOT_SERVING, liveness still SERVING: the GPU hung, not the process), RaiseCudaError is a sticky error
(readiness NOT_SERVING until ClearFaults), SetTelemetry's utilization (>= 95 %) or thermal slowdown
turns headroom NOT_SERVING and a lost GPU readiness, ClearFaults undoes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api import names
from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.names import DETECTOR_SERVICE, HEADROOM, LIVENESS, READINESS_NAMES
from eagleeye.client.args import positive_arg
from eagleeye.common import grpcopts
from eagleeye.common.cli import parse_host_port
from eagleeye.common.grpcguard import guarded
from eagleeye.common.health import HealthServicer
from eagleeye.common.loadreport import Counters, LoadReporter
from eagleeye.common.logs import event, setup
from eagleeye.router.wire import request_frame_id

log = logging.getLogger("eagleeye.simworker")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HOT_UTILIZATION_PERCENT = 95.0
STREAM_INFLIGHT = 16   # frames of one stream in the batcher at once: the worker's max_stream_inflight default


class QueueFull(Exception):
    """The queue holds `max_queue` requests: busy, not broken."""


@dataclass
class Faults:
    """What has been injected; `readiness_reason`/`headroom_reason` say why a status is down ("" when up)."""

    delay_s: float | None = None
    hung: bool = False
    sticky_error: str = ""
    utilization_percent: float = 0.0
    thermal_slowdown: bool = False
    gpu_lost: bool = False

    def readiness_reason(self, canary_deadline_s: float) -> str:
        if self.gpu_lost:
            return "GPU lost"
        if self.sticky_error:
            return self.sticky_error
        if self.hung:
            return "inference hung"
        if self.delay_s is not None and self.delay_s > canary_deadline_s:
            return f"inference takes {self.delay_s:g} s, over the canary deadline {canary_deadline_s:g} s"
        return ""

    def headroom_reason(self) -> str:
        if self.thermal_slowdown:
            return "thermal slowdown"
        if self.utilization_percent >= HOT_UTILIZATION_PERCENT:
            return f"GPU {self.utilization_percent:g} % busy"
        return ""

    def describe(self) -> str:
        parts = [f"delay {self.delay_s:g} s"] if self.delay_s is not None else []
        parts += [name for name, on in (("hung", self.hung), ("gpu lost", self.gpu_lost),
                                        ("thermal slowdown", self.thermal_slowdown)) if on]
        if self.sticky_error:
            parts.append(f"sticky error: {self.sticky_error}")
        return ", ".join(parts) or "none"


@dataclass
class SimBatcher:
    """Requests answered in batches of up to `max_batch`, one batch per service time, from a queue of at
    most `max_queue`; the batch time passes on a timer (no CPU)."""

    service_s: float
    max_batch: int
    max_queue: int
    faults: Faults = field(default_factory=Faults)
    batches: int = 0
    _queue: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    _work: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    frames: int = 0                 # requests answered
    refused: int = 0                # requests refused, the queue full
    _busy_s: float = 0.0            # time batches ran, finished ones
    _batch_started: float | None = None

    def counters(self) -> Counters:
        """What load reports are made of (common/loadreport.py): a batch running counts as busy."""
        started = self._batch_started
        busy = self._busy_s + (time.monotonic() - started if started is not None else 0.0)
        return Counters(busy_s=busy, answered=self.frames + self.refused, errors=self.refused,
                        queue=self.in_flight, capacity=self.max_queue)

    @property
    def in_flight(self) -> int:
        return len(self._queue) + self.running

    async def submit(self) -> None:
        """Wait until this request's batch has run; QueueFull at once when the queue is full."""
        if len(self._queue) >= self.max_queue:
            self.refused += 1
            raise QueueFull(f"worker busy: {self.max_queue} requests queued (max_queue); retry elsewhere")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(done)
        self._work.set()
        await done

    def changed(self) -> None:
        """A fault changed: re-check whether batches may run."""
        self._work.set()

    async def run(self) -> None:
        while True:
            self._work.clear()  # then check, then wait
            if not self._queue or self.faults.hung or self.faults.sticky_error:
                await self._work.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            batch = [f for f in batch if not f.done()]  # callers that gave up
            if not batch:
                continue
            self.running = len(batch)
            self._batch_started = started = time.monotonic()
            await asyncio.sleep(self.faults.delay_s if self.faults.delay_s is not None else self.service_s)
            self._busy_s += time.monotonic() - started
            self._batch_started = None
            self.running = 0
            self.batches += 1
            self.frames += len(batch)
            for f in batch:
                if not f.done():
                    f.set_result(None)


class SimWorker:
    """The services of one simulated worker, over a SimBatcher."""

    def __init__(self, worker_id: str, batcher: SimBatcher, health: HealthServicer, canary_deadline_s: float) -> None:
        self.worker_id = worker_id
        self.batcher = batcher
        self.health = health
        self.canary_deadline_s = canary_deadline_s
        self.loaded = False
        self.load = LoadReporter(batcher.counters)
        self._info = pb.GetModelInfoResponse(name="simulated", worker=worker_id).SerializeToString()

    async def publish(self) -> None:
        faults = self.batcher.faults
        ready = self.loaded and not faults.readiness_reason(self.canary_deadline_s)
        for name in READINESS_NAMES:
            await self.health.set(name, SERVING if ready else NOT_SERVING)
        await self.health.set(HEADROOM, NOT_SERVING if faults.headroom_reason() else SERVING)

    async def _answer(self, context: grpc.aio.ServicerContext) -> None:
        if not self.loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model is loading or warming up; retry shortly")
        try:
            await self.batcher.submit()
        except QueueFull as e:
            context.set_trailing_metadata(
                (*self.load.trailer(), (names.RETRY_ELSEWHERE_KEY, names.RETRY_ELSEWHERE_QUEUE_FULL)))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    async def detect(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await self._answer(context)
        context.set_trailing_metadata(self.load.trailer())
        return pb.DetectResponse(worker=self.worker_id).SerializeToString()

    async def model_info(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._info

    async def detect_stream(self, requests: AsyncIterator[bytes],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Up to STREAM_INFLIGHT frames of the stream in the batcher at once (as the worker's
        max_stream_inflight), answered in order, each naming its frame."""
        pending: asyncio.Queue[tuple[int, asyncio.Task[None]] | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_INFLIGHT)

        async def read() -> None:
            async for data in requests:
                await room.acquire()
                pending.put_nowait((request_frame_id(data), asyncio.create_task(self._answer(context))))
            pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                fid, answered = item
                await answered
                room.release()
                yield pb.DetectResponse(frame_id=fid, worker=self.worker_id).SerializeToString()
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not None:
                    item[1].cancel()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(DETECTOR_SERVICE, {
            "Detect": grpc.unary_unary_rpc_method_handler(self.detect),
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(self.model_info),
            "DetectStream": grpc.stream_stream_rpc_method_handler(self.detect_stream),
        })


class SimFaults(fi_grpc.FaultInjectionServicer):
    """The worker's FaultInjection service, acting on a SimWorker."""

    def __init__(self, worker: SimWorker) -> None:
        self._worker = worker
        self._faults = worker.batcher.faults

    async def _changed(self) -> str:
        self._worker.batcher.changed()
        await self._worker.publish()
        event(log, "fault state", faults=self._faults.describe())
        return self._faults.describe()

    async def SetTelemetry(self, request: fi.SetTelemetryRequest, context: object) -> fi.SetTelemetryResponse:
        self._faults.utilization_percent = request.utilization_percent
        self._faults.thermal_slowdown = request.thermal_slowdown
        self._faults.gpu_lost = request.gpu_lost
        return fi.SetTelemetryResponse(state=await self._changed())

    async def DelayInference(self, request: fi.DelayInferenceRequest, context: object) -> fi.DelayInferenceResponse:
        self._faults.delay_s = max(0.0, request.seconds)
        return fi.DelayInferenceResponse(state=await self._changed())

    async def HangInference(self, request: fi.HangInferenceRequest, context: object) -> fi.HangInferenceResponse:
        self._faults.hung = True
        return fi.HangInferenceResponse(state=await self._changed())

    async def RaiseCudaError(self, request: fi.RaiseCudaErrorRequest, context: object) -> fi.RaiseCudaErrorResponse:
        self._faults.sticky_error = "CUDA error: an illegal memory access was encountered (injected)"
        return fi.RaiseCudaErrorResponse(state=await self._changed())

    async def ClearFaults(self, request: fi.ClearFaultsRequest, context: object) -> fi.ClearFaultsResponse:
        self._worker.batcher.faults = self._faults = Faults()
        return fi.ClearFaultsResponse(state=await self._changed())

    async def GetInferenceState(self, request: fi.GetInferenceStateRequest,
                                context: object) -> fi.GetInferenceStateResponse:
        b = self._worker.batcher
        return fi.GetInferenceStateResponse(in_flight=b.in_flight, batches=b.batches,
                                            sticky_error=b.faults.sticky_error, faults=b.faults.describe())


async def serve(args: argparse.Namespace) -> None:
    host, _ = parse_host_port("--listen", args.listen)
    server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS, *grpcopts.message_size_options(32 << 20)])
    health = HealthServicer(100, 8)
    batcher = SimBatcher(args.service_ms / 1000, args.max_batch, args.max_queue)
    worker = SimWorker(args.worker_id, batcher, health, args.canary_deadline_s)
    await health.set(LIVENESS, SERVING)
    await worker.publish()
    server.add_generic_rpc_handlers((worker.handler(),))
    guarded(server).add_generic_rpc_handlers((worker.load.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    fi_grpc.add_FaultInjectionServicer_to_server(SimFaults(worker), server)
    port = server.add_insecure_port(args.listen)
    await server.start()
    event(log, "listening", address=f"{host}:{port}", worker=args.worker_id)
    batches = asyncio.create_task(batcher.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            async with asyncio.timeout(args.start_delay_s):  # the "model" loads unless stopped first
                await stop.wait()
        except TimeoutError:
            worker.loaded = True
            await worker.publish()
            event(log, "model ready", worker=args.worker_id)
            await stop.wait()
        await health.set(LIVENESS, NOT_SERVING)
        for name in READINESS_NAMES:
            await health.set(name, NOT_SERVING)
        await server.stop(args.grace_s)
    finally:
        batches.cancel()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.simworker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: one the OS assigns)")
    ap.add_argument("--worker-id", default="sim", help="the name answers carry (DetectResponse.worker)")
    ap.add_argument("--service-ms", type=positive_arg, default=20.0, help="time one batch takes (default 20)")
    ap.add_argument("--max-batch", type=_count, default=8, help="requests per batch at most (default 8)")
    ap.add_argument("--max-queue", type=_count, default=64,
                    help="requests waiting at most; the next gets RESOURCE_EXHAUSTED (default 64)")
    ap.add_argument("--start-delay-s", type=_non_negative, default=0.0,
                    help="readiness NOT_SERVING this long after start, as while a model loads (default 0)")
    ap.add_argument("--canary-deadline-s", type=positive_arg, default=1.5,
                    help="an injected delay longer than this turns readiness NOT_SERVING (default 1.5)")
    ap.add_argument("--grace-s", type=_non_negative, default=5.0, help="calls' time to finish on SIGTERM")
    return ap


def _number(text: str, ok: Callable[[float], bool], rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text} must be {rule}")
    return value


def _non_negative(text: str) -> float:
    return _number(text, lambda v: v >= 0, "0 or more")


def _count(text: str) -> int:
    return int(_number(text, lambda v: v >= 1 and v == int(v), "a whole number, 1 or more"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup("info")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
