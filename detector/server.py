"""The Detector servicer: protobuf in, the project's own types through the pipeline, protobuf out."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.names import RETRY_ELSEWHERE_KEY, RETRY_ELSEWHERE_QUEUE_FULL
from eagleeye.common.errors import IncidentLog
from eagleeye.common.grpcguard import MalformedRequest
from eagleeye.common.loadreport import LoadReporter
from eagleeye.common.logs import event
from eagleeye.detector.batcher import InferenceFailed, InferenceUnavailable, QueueFull
from eagleeye.detector.imaging import ImageError
from eagleeye.detector.metrics import DetectorMetrics
from eagleeye.detector.pipeline import DecodeBusy, EncodedImage, Pipeline, Query, RawImage, Result
from eagleeye.detector.postprocess import Selection
from eagleeye.detector.requestview import RequestView

log = logging.getLogger("eagleeye.detector")


@dataclass(frozen=True)
class Defaults:
    """Per-request knobs used when a request leaves them unset."""

    score_threshold: float
    iou_threshold: float
    max_detections: int


class RequestError(Exception):
    """A request the worker refuses, with the status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_elsewhere: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_elsewhere = retry_elsewhere  # busy, not broken: another worker may take it


_INCIDENTS = IncidentLog(log, where="worker")
# Status codes that say "this worker, now" (busy, broken, shutting down), not "this request".
_WORKER_FAILURES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"})


def _retrieve(read: asyncio.Future[Any]) -> None:
    """Mark an abandoned read's outcome as seen."""
    if not read.cancelled():
        read.exception()


def _status_of(err: Exception) -> RequestError:
    """The gRPC status for an exception raised while serving a frame.

    Request problems say what is wrong with the request; internal ones (torch or CUDA exception text)
    reach the client as a short message with an error id, and the log line with that id has the text.
    """
    if isinstance(err, RequestError):
        return err
    if isinstance(err, ImageError):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED if err.too_large else grpc.StatusCode.INVALID_ARGUMENT
        return RequestError(code, str(err))
    if isinstance(err, (QueueFull, DecodeBusy)):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), retry_elsewhere=True)
    if isinstance(err, InferenceUnavailable):
        if "CUDA" not in str(err):
            return RequestError(grpc.StatusCode.UNAVAILABLE, str(err))  # e.g. shutting down: nothing internal
        return RequestError(grpc.StatusCode.UNAVAILABLE, _INCIDENTS.report(
            "GPU context unusable after a CUDA error; this worker needs a restart", str(err), logging.WARNING))
    if isinstance(err, InferenceFailed):
        return RequestError(grpc.StatusCode.INTERNAL, _INCIDENTS.report("inference failed", str(err)))
    return RequestError(grpc.StatusCode.INTERNAL, _INCIDENTS.report("internal error", repr(err)))


class Slots:
    """Calls of one kind in progress, up to a limit a setting names."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.used = 0
        self._refusal = f"worker busy: {limit} {what} in progress ({setting}); retry later or use another worker"

    def take(self) -> None:
        """Count one more call, or raise the RESOURCE_EXHAUSTED refusal (busy: retry elsewhere)."""
        if self.used >= self.limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal, retry_elsewhere=True)
        self.used += 1

    def give(self) -> None:
        """Count one call fewer (the call that took a slot has ended)."""
        self.used -= 1


class DetectorServicer(pb_grpc.DetectorServicer):
    """Detect, DetectStream and GetModelInfo over a Pipeline that appears once the model is warm."""

    def __init__(self, worker_id: str, defaults: Defaults, max_stream_inflight: int,
                 metrics: DetectorMetrics | None = None, *, max_rpcs: int = 256, max_streams: int = 1000) -> None:
        self.worker_id = worker_id
        self.unary_calls = Slots(max_rpcs, "unary calls", "max_concurrent_rpcs")
        self.streams = Slots(max_streams, "streams", "max_concurrent_streams")
        self._metrics = metrics
        self._defaults = defaults
        self._max_stream_inflight = max_stream_inflight
        self.pipeline: Pipeline | None = None
        self.device = ""
        self.half = False
        self.backend = ""
        self.draining = asyncio.Event()
        #: Where the ORCA load report every answer carries comes from (common/loadreport.py); None: none.
        self.load: LoadReporter | None = None
        #: Errors answered, by (method, status code name): bad input is counted, never fatal.
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()

    def worker_errors(self) -> int:
        """Answers that were the worker's failure or its load, not the caller's mistake (load reports' eps)."""
        return sum(n for (_, code), n in self.errors.items() if code in _WORKER_FAILURES)

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "model is loading or warming up; retry shortly")
        return self.pipeline

    def _query(self, request: pb.DetectRequest, pipeline: Pipeline, view: RequestView | None = None) -> Query:
        d = self._defaults
        kind = view.kind if view is not None else request.WhichOneof("image")
        image: EncodedImage | RawImage
        if kind == "encoded":
            image = EncodedImage(view.image if view is not None else request.encoded)
        elif kind == "raw":
            image = RawImage(view.image if view is not None else request.raw.data, request.raw.width,
                             request.raw.height)
        else:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "request has no image: set `encoded` (JPEG/PNG bytes) or `raw` (RGB pixels)")
        score = request.score_threshold if request.HasField("score_threshold") else d.score_threshold
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"score_threshold {score} is outside [0, 1]")
        iou = request.iou_threshold if request.HasField("iou_threshold") else d.iou_threshold
        if not (math.isfinite(iou) and 0.0 < iou <= 1.0):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"iou_threshold {iou} is outside (0, 1]")
        max_det = request.max_detections if request.HasField("max_detections") else d.max_detections
        if not 1 <= max_det <= 1000:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"max_detections {max_det} is outside [1, 1000]")
        class_ids: frozenset[int] | None = None
        if request.classes:
            known = pipeline.meta.classes
            unknown = [c for c in request.classes if c not in known]
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"unknown class {unknown[0]!r}; this model knows {', '.join(known)}")
            class_ids = frozenset(known.index(c) for c in request.classes)
        return Query(image, Selection(score, iou, max_det, class_ids))

    def _response(self, frame_id: int, result: Result, labels: tuple[str, ...]) -> pb.DetectResponse:
        return pb.DetectResponse(
            frame_id=frame_id,
            detections=[pb.Detection(box=pb.Box(x_min=d.box[0], y_min=d.box[1], x_max=d.box[2], y_max=d.box[3]),
                                     score=d.score, class_id=d.class_id, label=labels[d.class_id])
                        for d in result.detections],
            timing=pb.Timing(queue_ms=result.queue_ms, inference_ms=result.inference_ms,
                             total_ms=result.total_ms, batch_size=result.batch_size),
            worker=self.worker_id, image_width=result.width, image_height=result.height)

    async def _serve(self, received: pb.DetectRequest | RequestView, method: str) -> pb.DetectResponse:
        if self._metrics is not None:
            self._metrics.frame(method)
        pipeline = self._pipeline()
        view: RequestView | None
        if isinstance(received, RequestView):
            view, request = received, received.message
        else:
            view, request = None, received
        result = await pipeline.run(self._query(request, pipeline, view))
        if self._metrics is not None:
            labels = pipeline.meta.classes
            self._metrics.request(method, "OK")
            self._metrics.objects(labels[d.class_id] for d in result.detections)
            self._metrics.answered(method, result.queue_ms / 1000, result.total_ms / 1000)
        return self._response(request.frame_id, result, pipeline.meta.classes)

    def _count(self, method: str, err: RequestError) -> None:
        self.errors[(method, err.code.name)] += 1
        if self._metrics is not None:
            self._metrics.request(method, err.code.name)
        event(log, "request refused", logging.DEBUG, method=method, code=err.code.name, message=err.message)

    async def _refuse(self, method: str, err: RequestError, context: grpc.aio.ServicerContext) -> None:
        """Count the refusal and end the call with its status (abort raises)."""
        self._count(method, err)
        trailer: tuple[tuple[str, str | bytes], ...] = self.load.trailer() if self.load is not None else ()
        if err.retry_elsewhere:
            trailer = (*trailer, (RETRY_ELSEWHERE_KEY, RETRY_ELSEWHERE_QUEUE_FULL))
        if trailer:
            context.set_trailing_metadata(trailer)
        await context.abort(err.code, err.message)

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        try:
            self.unary_calls.take()
            try:
                response = await self._serve(request, "Detect")
            finally:
                self.unary_calls.give()
            if self.load is not None:
                context.set_trailing_metadata(self.load.trailer())
            return response
        except Exception as e:
            await self._refuse("Detect", _status_of(e), context)
            raise  # unreachable: abort raises

    async def _stream_frame(self, request: pb.DetectRequest | RequestView | MalformedRequest) -> pb.DetectResponse:
        """One stream frame: a bad frame is answered with an error; UNAVAILABLE ends the stream."""
        if isinstance(request, MalformedRequest):
            self._count("DetectStream", RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.error))
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed DetectRequest: {request.error}")
        try:
            return await self._serve(request, "DetectStream")
        except Exception as e:
            err = _status_of(e)
            self._count("DetectStream", err)
            if err.code == grpc.StatusCode.UNAVAILABLE:
                raise err from None
            message = request.message if isinstance(request, RequestView) else request
            return pb.DetectResponse(frame_id=message.frame_id, worker=self.worker_id,
                                     error=pb.FrameError(code=err.code.value[0], message=err.message,
                                                         retry_elsewhere=err.retry_elsewhere))

    async def _read_frames(self, requests: AsyncIterator[pb.DetectRequest],
                           pending: asyncio.Queue[asyncio.Task[pb.DetectResponse] | None]) -> None:
        """Start each frame as it arrives (so a stream's frames can share batches); stop on drain."""
        draining = asyncio.ensure_future(self.draining.wait())
        nxt: asyncio.Future[Any] | None = None
        try:
            it = aiter(requests)
            while True:
                nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait({nxt, draining}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    break
                try:
                    request = nxt.result()
                except StopAsyncIteration:
                    break
                await pending.put(asyncio.create_task(self._stream_frame(request)))
                if isinstance(request, MalformedRequest):
                    break  # no frame_id to answer it with: the stream ends with INVALID_ARGUMENT
        finally:
            draining.cancel()
            if nxt is not None:
                # Cancelled mid-read (the stream ended): the read may still finish, with the end of the
                # requests; take its outcome so asyncio does not log it as an error nobody retrieved.
                nxt.cancel()
                nxt.add_done_callback(_retrieve)
            await pending.put(None)

    async def DetectStream(self, request_iterator: AsyncIterator[pb.DetectRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectResponse]:
        try:
            self.streams.take()
        except RequestError as err:
            await self._refuse("DetectStream", err, context)
            return  # unreachable: abort raises
        # Bounded: a client faster than the model is slowed by flow control, not buffered here.
        pending: asyncio.Queue[asyncio.Task[pb.DetectResponse] | None] = asyncio.Queue(self._max_stream_inflight)
        reader = asyncio.create_task(self._read_frames(request_iterator, pending))
        try:
            while (task := await pending.get()) is not None:
                try:
                    yield await task
                except RequestError as err:
                    await context.abort(err.code, err.message)
            if self.draining.is_set():
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "worker is draining (shutting down); reopen the stream on another worker")
        finally:
            self.streams.give()
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetModelInfoResponse:
        try:
            self.unary_calls.take()
        except RequestError as err:
            await self._refuse("GetModelInfo", err, context)
            raise  # unreachable: abort raises
        try:
            pipeline = self._pipeline()
        except RequestError as err:
            await context.abort(err.code, err.message)
            raise
        finally:
            self.unary_calls.give()
        meta = pipeline.meta
        return pb.GetModelInfoResponse(name=meta.name, version=meta.version, classes=list(meta.classes),
                            input_height=meta.input_size[0], input_width=meta.input_size[1],
                            device=self.device, half_precision=self.half,
                            max_batch_size=pipeline.max_batch, worker=self.worker_id, backend=self.backend)
