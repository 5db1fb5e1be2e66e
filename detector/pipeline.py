"""One request's path through the worker: decode, letterbox, batch, select. No protobuf here."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from eagleeye.common.telemetry import Telemetry, disabled
from eagleeye.detector.batcher import Batcher
from eagleeye.detector.contract import ModelMeta
from eagleeye.detector.imaging import (
    ImageLimits,
    Letterbox,
    decode_encoded_to_fit,
    decode_raw,
    letterbox,
    use_pil_guard,
)
from eagleeye.detector.postprocess import Detection, Selection, select


@dataclass(frozen=True)
class EncodedImage:
    """JPEG/PNG bytes (or a view of the request's bytes: detector/requestview.py)."""

    data: bytes | memoryview


@dataclass(frozen=True)
class RawImage:
    """RGB pixels, height x width x 3, row-major (bytes, or a view of the request's bytes)."""

    data: bytes | memoryview
    width: int
    height: int


@dataclass(frozen=True)
class Query:
    """One image and what to keep of its detections."""

    image: EncodedImage | RawImage
    selection: Selection


@dataclass(frozen=True)
class Result:
    """Detections in image pixels, with timing."""

    detections: list[Detection]
    width: int
    height: int
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int


# Nice value of the decode threads (Linux sets it per thread): far enough below the event loop and the
# inference thread that those win a contended core, while decoding still uses any idle one.
DECODE_NICE = 10


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICE)
    except (AttributeError, OSError):
        pass  # not Linux: the threads keep the process's priority


class DecodeBusy(Exception):
    """Too many request bytes are waiting for decoding: the worker is busy, another may serve."""


class DecodeAdmission:
    """Request bytes admitted to decoding (queued for the decode threads or decoding), up to a limit.

    A request that does not fit is refused at once rather than queued; one that arrives while nothing
    is admitted is taken whatever its size, so no request is refused for ever as "busy".
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()  # admitted on the event loop, released on the decode threads
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Bytes admitted and not yet released."""
        return self._admitted

    def admit(self, size: int) -> None:
        """Count `size` more bytes, or raise DecodeBusy (naming max_decode_bytes) without counting them."""
        with self._lock:
            if self._admitted and self._admitted + size > self.limit:
                raise DecodeBusy(f"worker busy: {self._admitted} bytes of images are waiting for decoding and "
                                 f"this one is {size} (max_decode_bytes {self.limit}); retry later or use "
                                 "another worker")
            self._admitted += size

    def release(self, size: int) -> None:
        """Give back bytes admitted before."""
        with self._lock:
            self._admitted -= size


class LatencyWindow:
    """Latencies of the requests of the last `window_s` seconds, for the p95 health rule."""

    def __init__(self, window_s: float, max_samples: int = 4096) -> None:
        self._window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=max_samples)

    def add(self, now: float, latency_ms: float) -> None:
        """Record one request that finished at `now`."""
        self._samples.append((now, latency_ms))

    def p95(self, now: float) -> float | None:
        """The 95th percentile over the window, or None when it is empty."""
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(v for _, v in self._samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Pipeline:
    """Turns Queries into Results through the shared batcher."""

    def __init__(self, meta: ModelMeta, batcher: Batcher, limits: ImageLimits, latency: LatencyWindow,
                 telemetry: Telemetry | None = None, decode_threads: int = 2,
                 max_decode_bytes: int = 128 * 1024 * 1024) -> None:
        self.meta = meta
        use_pil_guard(limits.max_pixels)  # process-wide, like PIL's limit: a worker has one pipeline
        self._admission = DecodeAdmission(max_decode_bytes)
        self._telemetry = telemetry or disabled()
        self._batcher = batcher
        self.max_batch = batcher.max_batch
        self._limits = limits
        self._latency = latency
        # Decoding and resizing run off the event loop; PIL releases the GIL while it works. The decode
        # threads run at a lower CPU priority: on a machine with few cores, large images must not take
        # the core the event loop (health answers) and the inference thread need.
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode",
                                           initializer=_lower_priority)
        self._waiting_lock = threading.Lock()
        self._decode_waiting = 0

    def _prepare(self, image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox]:
        if isinstance(image, EncodedImage):
            pixels, full = decode_encoded_to_fit(image.data, self._limits, self.meta.input_size)
            return letterbox(pixels, self.meta.input_size, full)
        pixels = decode_raw(image.data, image.width, image.height, self._limits)
        return letterbox(pixels, self.meta.input_size)

    @property
    def decode_bytes(self) -> int:
        """Request bytes admitted to decoding now (queued for the decode threads or decoding)."""
        return self._admission.admitted

    async def prepare(self, image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox]:
        """Decode and letterbox on the decode threads; raises ImageError for a bad image, DecodeBusy
        (at once, before queueing) when admitting it would exceed max_decode_bytes. A raw frame of the
        model's input size is used as it is, here: no decoding, no copy, no trip to a thread."""
        pixels, lb, _ = await self._prepare_waited(image)
        return pixels, lb

    async def _prepare_waited(self, image: EncodedImage | RawImage) -> tuple[np.ndarray, Letterbox, float]:
        """prepare(), and the seconds the image waited for a decode thread."""
        if isinstance(image, RawImage) and (image.height, image.width) == self.meta.input_size:
            return (*self._prepare(image), 0.0)
        size = len(image.data)
        self._admission.admit(size)
        submitted = time.monotonic()
        started = threading.Event()

        def decode() -> tuple[np.ndarray, Letterbox, float]:
            waited = time.monotonic() - submitted
            self._waiting(started)
            return (*self._prepare(image), waited)

        def done(_: object) -> None:
            # Released when the decode thread is done with the image (or drops it unstarted), not when
            # the caller stops waiting: a cancelled call's image stays in memory until its decoding ends.
            self._admission.release(size)
            self._waiting(started)

        with self._waiting_lock:
            self._decode_waiting += 1
        try:
            job = self._decoder.submit(decode)
        except BaseException:
            done(None)
            raise
        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    def _waiting(self, started: threading.Event) -> None:
        """An image stopped waiting for a decode thread (it started, or was dropped unstarted): once."""
        with self._waiting_lock:
            if not started.is_set():
                started.set()
                self._decode_waiting -= 1

    @property
    def decode_waiting(self) -> int:
        """Images waiting for a decode thread: with the batch queue, the backlog the health rule sees."""
        return self._decode_waiting

    async def run(self, query: Query) -> Result:
        """Detect objects in one image."""
        start = time.monotonic()
        pixels, lb, decode_wait_s = await self._prepare_waited(query.image)
        decoded = time.monotonic()
        out = await self._batcher.submit(pixels)
        detections = select(out.detections, lb, query.selection)
        end = time.monotonic()
        tel = self._telemetry
        tel.span_between("decode", start, decoded, width=lb.width, height=lb.height)
        tel.span_between("queue", decoded, out.started_at, queue_depth_capacity=self._batcher.capacity)
        tel.span_between("inference", out.started_at, out.started_at + out.inference_s, batch_size=out.batch_size)
        total_ms = (end - start) * 1000
        # The latency rule sees the worker's own time on the frame, not its waits for a decode thread
        # and in the batch queue: those are load, which the backlog rule reports; counted as latency
        # too, one client's burst would make two soft triggers and take readiness from a worker that is
        # only busy.
        self._latency.add(end, total_ms - (decode_wait_s + out.queue_s) * 1000)
        return Result(detections=detections, width=lb.width, height=lb.height,
                      queue_ms=out.queue_s * 1000, inference_ms=out.inference_s * 1000,
                      total_ms=total_ms, batch_size=out.batch_size)

    def close(self) -> None:
        """Stop the decode threads."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
