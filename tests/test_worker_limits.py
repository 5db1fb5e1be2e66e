"""The worker's bounds and error hygiene: admission before decode, call slots, error ids.

The servicer tests serve a real DetectorServicer and Pipeline on 127.0.0.1:0 in the test's loop; only
the batcher is a fake, which holds calls on an event so that "in progress" is a state the test sets.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from PIL import Image, ImageFile

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.names import RETRY_ELSEWHERE_KEY, RETRY_ELSEWHERE_QUEUE_FULL
from eagleeye.common.errors import IncidentLog
from eagleeye.detector.batcher import BatchResult, InferenceFailed, InferenceUnavailable, QueueFull
from eagleeye.detector.contract import ModelMeta, RawDetections
from eagleeye.detector.imaging import ImageError, ImageLimits, Letterbox
from eagleeye.detector.pipeline import (
    DecodeAdmission,
    DecodeBusy,
    EncodedImage,
    LatencyWindow,
    Pipeline,
    Query,
    RawImage,
)
from eagleeye.detector.postprocess import Selection
from eagleeye.detector.server import Defaults, DetectorServicer, RequestError, Slots, _status_of
from eagleeye.scenes import encode_png

MiB = 1024 * 1024
META = ModelMeta(name="fake", version="0", classes=("a",), input_size=(32, 32))
SMALL_PNG = encode_png(np.full((24, 32, 3), 90, np.uint8))
RETRY_ELSEWHERE = (RETRY_ELSEWHERE_KEY, RETRY_ELSEWHERE_QUEUE_FULL)


@pytest.fixture(autouse=True)
def _pil_limit_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pipeline sets PIL's process-wide limit; give the other tests theirs back."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


class FakeBatcher:
    """Answers every image with no detections, or raises `error`; holds calls while `gate` is clear."""

    max_batch = 4
    capacity = 8

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.calls = 0
        self.waiting = 0
        self._arrived = asyncio.Event()

    async def submit(self, image: np.ndarray) -> BatchResult:
        self.calls += 1
        self.waiting += 1
        self._arrived.set()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.error is not None:
            raise self.error
        none = RawDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        return BatchResult(none, queue_s=0.0, inference_s=0.001, batch_size=1, started_at=time.monotonic())

    async def until_waiting(self, n: int) -> None:
        """Wait (10 s at most) until `n` calls are held at the gate."""
        async def wait() -> None:
            while self.waiting < n:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(wait(), 10)


@dataclass
class Worker:
    servicer: DetectorServicer
    pipeline: Pipeline
    batcher: FakeBatcher
    stub: pb_grpc.DetectorStub


@asynccontextmanager
async def serving(*, max_rpcs: int = 256, max_streams: int = 1000,
                  max_decode_bytes: int = 128 * MiB) -> AsyncIterator[Worker]:
    """A DetectorServicer over a real Pipeline (fake batcher), served on 127.0.0.1:0."""
    batcher = FakeBatcher()
    pipeline = Pipeline(META, batcher, ImageLimits(8 * MiB, 4096 * 4096), LatencyWindow(10),  # type: ignore[arg-type]
                        max_decode_bytes=max_decode_bytes)
    servicer = DetectorServicer("w1", Defaults(0.25, 0.5, 100), 4, max_rpcs=max_rpcs, max_streams=max_streams)
    servicer.pipeline = pipeline
    server = grpc.aio.server()
    pb_grpc.add_DetectorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Worker(servicer, pipeline, batcher, pb_grpc.DetectorStub(channel))
    finally:
        batcher.gate.set()
        await server.stop(None)
        pipeline.close()


def frame(frame_id: int, data: bytes = SMALL_PNG) -> pb.DetectRequest:
    return pb.DetectRequest(frame_id=frame_id, encoded=data)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) for a condition the server reaches on its own time, e.g. after a cancellation."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- Images: the header refuses a bomb before any pixel is decoded -------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the worker ignores it too
async def test_a_5000x5000_png_is_refused_from_its_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000), 90).save(buf, format="PNG")  # ~35 KB on the wire, 25 MB decoded
    bomb = buf.getvalue()
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    async with serving() as w:
        assert Image.MAX_IMAGE_PIXELS == 4096 * 4096, "the pipeline puts PIL's guard at its limit"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.stub.Detect(frame(1, bomb), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "image is 5000x5000 = 25000000 pixels; the limit is 16777216 (max_image_pixels)"
        assert RETRY_ELSEWHERE not in tuple(err.value.trailing_metadata() or ()), "too large anywhere: no retry"
        assert decoded == [] and w.batcher.calls == 0 and w.pipeline.decode_bytes == 0
        await w.stub.Detect(frame(2), timeout=10)
        assert decoded and set(decoded) == {(32, 24)}, "the spy sees a decode when there is one"
        assert w.servicer.errors == collections.Counter({("Detect", "RESOURCE_EXHAUSTED"): 1})


# --- Admission before decode ---------------------------------------------------------------------

# Each case: steps on an admission of 100 bytes, ("admit", n, admitted?) or ("release", n, None),
# and the bytes counted at the end.
ADMISSION: dict[str, tuple[list[tuple[str, int, bool | None]], int]] = {
    "up to the limit is admitted": ([("admit", 60, True), ("admit", 40, True)], 100),
    "one byte past it is refused and not counted": ([("admit", 60, True), ("admit", 41, False)], 60),
    "released bytes make room again": ([("admit", 60, True), ("release", 60, None), ("admit", 100, True)], 100),
    "alone, an image over the limit is taken (never busy for ever)": ([("admit", 150, True)], 150),
    "... and nothing else while it decodes": ([("admit", 150, True), ("admit", 1, False)], 150),
}


@pytest.mark.parametrize(("steps", "admitted"), ADMISSION.values(), ids=ADMISSION.keys())
def test_decode_admission_counts_bytes_up_to_its_limit(steps: list[tuple[str, int, bool | None]],
                                                        admitted: int) -> None:
    admission = DecodeAdmission(100)
    for action, size, expect_admitted in steps:
        if action == "release":
            admission.release(size)
        elif expect_admitted:
            admission.admit(size)
        else:
            with pytest.raises(DecodeBusy, match=r"max_decode_bytes 100\)"):
                admission.admit(size)
    assert admission.admitted == admitted


async def test_the_pipeline_refuses_past_max_decode_bytes_at_once_and_releases_when_decoding_ends() -> None:
    pipeline = Pipeline(META, FakeBatcher(), ImageLimits(8 * MiB, 4096 * 4096), LatencyWindow(10),  # type: ignore[arg-type]
                        decode_threads=1, max_decode_bytes=3 * MiB)
    gates = {tag: threading.Event() for tag in b"abcde"}
    started: list[int] = []
    decoding = threading.Semaphore(0)

    def prepare(image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox]:
        started.append(image.data[0])
        decoding.release()
        gates[image.data[0]].wait(10)
        if image.data[0] == ord("a"):
            raise ImageError("image could not be decoded")
        return np.zeros((32, 32, 3), np.uint8), Letterbox(1.0, 0.0, 0.0, 32, 32)

    async def decode_started() -> None:
        assert await asyncio.to_thread(decoding.acquire, True, 10)

    pipeline._prepare = prepare  # type: ignore[method-assign]
    failing = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"a" * (2 * MiB))))
    await decode_started()
    with pytest.raises(DecodeBusy, match=r"max_decode_bytes 3145728"):
        await pipeline.prepare(EncodedImage(b"b" * (2 * MiB)))
    queued = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"c" * MiB)))  # fits; waits for the thread
    await asyncio.sleep(0)
    assert pipeline.decode_bytes == 3 * MiB
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert pipeline.decode_bytes == 2 * MiB, "cancelled before its decoding started: released at once"
    succeeding = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"d" * MiB)))
    await asyncio.sleep(0)
    gates[ord("a")].set()
    with pytest.raises(ImageError):
        await failing
    await decode_started()
    assert pipeline.decode_bytes == MiB, "a failed decode releases its bytes"
    gates[ord("d")].set()
    await succeeding
    await eventually(lambda: pipeline.decode_bytes == 0)  # released on the decode thread, just after the answer
    abandoned = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"e" * MiB)))
    await decode_started()
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert pipeline.decode_bytes == MiB, "cancelled while decoding: counted until the thread lets go of it"
    gates[ord("e")].set()
    await eventually(lambda: pipeline.decode_bytes == 0)
    assert bytes(started) == b"ade", "a refused image is never queued, a cancelled queued one never decoded"
    pipeline.close()


async def test_a_busy_decode_is_answered_resource_exhausted_marked_for_another_worker() -> None:
    async with serving(max_decode_bytes=len(SMALL_PNG) + 1) as w:
        gate = threading.Event()
        real_prepare = w.pipeline._prepare

        def held(image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox]:
            gate.wait(10)
            return real_prepare(image)

        w.pipeline._prepare = held  # type: ignore[method-assign]
        first = asyncio.ensure_future(w.stub.Detect(frame(1), timeout=30))
        await eventually(lambda: w.pipeline.decode_bytes > 0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.stub.Detect(frame(2), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_decode_bytes" in (err.value.details() or "")
        assert RETRY_ELSEWHERE in tuple(err.value.trailing_metadata() or ())
        gate.set()
        assert (await first).frame_id == 1
        await eventually(lambda: w.pipeline.decode_bytes == 0)
        assert (await w.stub.Detect(frame(3), timeout=10)).frame_id == 3


def test_busy_refusals_are_resource_exhausted_and_marked_for_another_worker() -> None:
    for err in (QueueFull("queue full"), DecodeBusy("decode busy")):
        status = _status_of(err)
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.retry_elsewhere


# --- Concurrent calls ----------------------------------------------------------------------------

def test_call_slots_refuse_past_the_limit_naming_the_setting_and_free_on_give() -> None:
    slots = Slots(2, "streams", "max_concurrent_streams")
    slots.take()
    slots.take()
    with pytest.raises(RequestError) as err:
        slots.take()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.retry_elsewhere
    assert "max_concurrent_streams" in err.value.message and "2 streams" in err.value.message
    slots.give()
    slots.take()


async def test_unary_calls_past_max_concurrent_rpcs_are_refused_and_an_ended_call_frees_its_slot() -> None:
    async with serving(max_rpcs=2) as w:
        w.batcher.gate.clear()
        held = [asyncio.ensure_future(w.stub.Detect(frame(i), timeout=30)) for i in (1, 2)]
        await w.batcher.until_waiting(2)
        for call in (w.stub.Detect(frame(3), timeout=10), w.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.details() == ("worker busy: 2 unary calls in progress (max_concurrent_rpcs); "
                                           "retry later or use another worker")
            assert RETRY_ELSEWHERE in tuple(err.value.trailing_metadata() or ()), "busy: the router may try the other"
        assert w.servicer.errors == collections.Counter({("Detect", "RESOURCE_EXHAUSTED"): 1,
                                                         ("GetModelInfo", "RESOURCE_EXHAUSTED"): 1})
        held[0].cancel()  # a call the client gives up on frees its slot too
        await eventually(lambda: w.servicer.unary_calls.used == 1)
        third = asyncio.ensure_future(w.stub.Detect(frame(3), timeout=30))
        await w.batcher.until_waiting(2)
        w.batcher.gate.set()
        assert [r.frame_id for r in await asyncio.gather(held[1], third)] == [2, 3]
        assert w.servicer.unary_calls.used == 0
        assert (await w.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)).worker == "w1"


async def test_streams_past_max_concurrent_streams_are_refused_and_a_closed_stream_frees_its_slot() -> None:
    async with serving(max_streams=1) as w:
        first = w.stub.DetectStream()
        await first.write(frame(1))
        assert (await first.read()).frame_id == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in w.stub.DetectStream(iter([frame(2)]), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == ("worker busy: 1 streams in progress (max_concurrent_streams); "
                                       "retry later or use another worker")
        assert w.servicer.errors == collections.Counter({("DetectStream", "RESOURCE_EXHAUSTED"): 1})
        assert (await w.stub.Detect(frame(3), timeout=10)).frame_id == 3, "unary calls are not streams"
        await first.done_writing()
        assert await first.read() == grpc.aio.EOF
        await eventually(lambda: w.servicer.streams.used == 0)
        assert [r.frame_id async for r in w.stub.DetectStream(iter([frame(4)]), timeout=10)] == [4]
        assert w.servicer.streams.used == 0


# --- Error hygiene -------------------------------------------------------------------------------

# Each case: what the batcher raises, the client's status and text (an id stands for the detail where
# the text is internal), and what of it must stay out of the client's sight.
INTERNAL: dict[str, tuple[Exception, grpc.StatusCode, str, str]] = {
    "inference failed (torch text)": (
        InferenceFailed("inference failed: CUDA error: an illegal memory access at 0x7f3a0001"),
        grpc.StatusCode.INTERNAL, "inference failed (error id ", "0x7f3a0001"),
    "sticky CUDA error": (
        InferenceUnavailable("GPU context unusable after a CUDA error (device-side assert at /src/k.cu:12); "
                             "this worker needs a restart"),
        grpc.StatusCode.UNAVAILABLE, "this worker needs a restart (error id ", "/src/k.cu"),
    "an exception nobody expected": (
        KeyError("/opt/models/secret-path"), grpc.StatusCode.INTERNAL, "internal error (error id ", "secret-path"),
}


@pytest.mark.parametrize(("error", "code", "text", "secret"), INTERNAL.values(), ids=INTERNAL.keys())
async def test_internal_errors_reach_clients_as_an_id_and_the_log_line_has_the_detail(
        error: Exception, code: grpc.StatusCode, text: str, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with serving() as w:
        w.batcher.error = error
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.stub.Detect(frame(1), timeout=10)
    details = err.value.details() or ""
    assert err.value.code() == code and text in details, details
    assert secret not in details and "Error" not in details
    error_id = details.split("error id ")[1].split(";")[0]
    assert len(error_id) == 12 and details.endswith("; the worker's log has the detail)")
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("error_id") == error_id]
    assert len(logged) == 1 and logged[0].levelno >= logging.WARNING
    assert secret in logged[0].fields["detail"]  # type: ignore[attr-defined]


# Request problems keep their own words: they are about the request, and tell the caller what to do.
CLIENT_ERRORS = [
    (pb.DetectRequest(encoded=SMALL_PNG, score_threshold=1.5), grpc.StatusCode.INVALID_ARGUMENT,
     "score_threshold 1.5 is outside [0, 1]"),
    (pb.DetectRequest(encoded=b"GIF89a not really"), grpc.StatusCode.INVALID_ARGUMENT,
     "image bytes are not a JPEG or PNG file (they look like GIF); the accepted formats are JPEG and PNG "
     "(or RGB pixels in image.raw)"),
    (pb.DetectRequest(), grpc.StatusCode.INVALID_ARGUMENT,
     "request has no image: set `encoded` (JPEG/PNG bytes) or `raw` (RGB pixels)"),
]


async def test_request_errors_keep_their_specific_messages() -> None:
    async with serving() as w:
        for request, code, message in CLIENT_ERRORS:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await w.stub.Detect(request, timeout=10)
            assert (err.value.code(), err.value.details()) == (code, message)


async def test_shutting_down_is_not_an_internal_error() -> None:
    async with serving() as w:
        w.batcher.error = InferenceUnavailable("worker is shutting down")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.stub.Detect(frame(1), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAVAILABLE, "worker is shutting down")


def test_a_repeated_failure_keeps_its_id_within_the_window_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    incidents = IncidentLog(logging.getLogger("test"), window_s=1.0, clock=lambda: now[0], where="router")
    caplog.set_level(logging.INFO)
    first = incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused")
    for _ in range(100):
        assert incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused") == first
    assert "10.0.0.5" not in first and first.endswith("; the router's log has the detail)")
    other = incidents.report("no worker can serve", "standby: timeout")
    assert other != first
    now[0] = 1.5
    later = incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused")
    assert later != first
    events = [(r.getMessage(), r.fields.get("repeats")) for r in caplog.records]  # type: ignore[attr-defined]
    assert events == [("internal error", None), ("internal error", None), ("internal error repeated", 100),
                      ("internal error", None)]


async def test_the_latency_rule_sees_the_workers_own_time_not_the_wait_in_the_batch_queue() -> None:
    """A backlog is load, which the backlog rule reports: if the latency window counted the queue too,
    one client's burst would be two soft triggers and readiness would go from a worker that is only busy."""

    class QueuedBatcher(FakeBatcher):
        async def submit(self, image: np.ndarray) -> BatchResult:
            queued = time.monotonic()
            await asyncio.sleep(0.3)  # the frame's turn comes after a backlog (simulated)
            none = RawDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
            return BatchResult(none, queue_s=time.monotonic() - queued, inference_s=0.0, batch_size=1,
                               started_at=time.monotonic())

    window = LatencyWindow(10)
    pipeline = Pipeline(META, QueuedBatcher(), ImageLimits(8 * MiB, 4096 * 4096), window)  # type: ignore[arg-type]
    try:
        query = Query(RawImage(bytes(32 * 32 * 3), 32, 32), Selection(0.25, 0.5, 100, None))
        result = await pipeline.run(query)
    finally:
        pipeline.close()
    assert result.total_ms >= 300 and result.queue_ms >= 300  # what the client is told: the whole wait
    p95 = window.p95(time.monotonic())
    assert p95 is not None and p95 < 100, p95


async def test_frames_waiting_for_a_decode_thread_are_counted_until_they_start_or_are_dropped() -> None:
    pipeline = Pipeline(META, FakeBatcher(), ImageLimits(8 * MiB, 4096 * 4096), LatencyWindow(10),  # type: ignore[arg-type]
                        decode_threads=1)
    release = threading.Event()
    decoding = threading.Semaphore(0)

    def prepare(image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox]:
        decoding.release()
        release.wait(10)
        return np.zeros((32, 32, 3), np.uint8), Letterbox(1.0, 0.0, 0.0, 32, 32)

    pipeline._prepare = prepare  # type: ignore[method-assign]
    try:
        jobs = [asyncio.ensure_future(pipeline.prepare(EncodedImage(bytes([i]) * 100))) for i in range(4)]
        assert await asyncio.to_thread(decoding.acquire, True, 10)  # the first is on the thread
        assert pipeline.decode_waiting == 3
        jobs[3].cancel()  # its caller gave up; the thread drops it unstarted
        release.set()
        await asyncio.gather(*jobs[:3])
        await eventually(lambda: pipeline.decode_waiting == 0 and pipeline.decode_bytes == 0)
    finally:
        release.set()
        pipeline.close()
