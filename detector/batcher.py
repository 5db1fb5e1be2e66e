"""The dynamic batcher: requests from every client share batches on one inference thread.

Callers on the event loop `await submit(image)`; the thread takes the oldest request, waits up to
`max_delay_s` for more (up to `max_batch`), runs the model once, and resolves every future with one
hop back to the loop. The queue is bounded: when full, `submit` raises QueueFull at once rather than
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eagleeye.common.logs import event
from eagleeye.detector.contract import Detector, RawDetections

log = logging.getLogger("eagleeye.batcher")

# Substrings of CUDA errors after which the context is unusable until the process restarts.
STICKY_CUDA_MARKERS = (
    "illegal memory access",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ECC error",
    "misaligned address",
    "illegal instruction",
    "an illegal",
    "CUDA error: unknown error",
)


def is_sticky_cuda_error(err: BaseException) -> bool:
    """Whether an exception from inference leaves the CUDA context unusable."""
    text = str(err)
    return "CUDA" in text and any(m in text for m in STICKY_CUDA_MARKERS)


class QueueFull(Exception):
    """The batcher's queue is at capacity."""


class InferenceUnavailable(Exception):
    """Inference cannot run here now (sticky CUDA error, shutting down); another worker may serve."""


class InferenceFailed(Exception):
    """Inference raised for this batch (not a client error)."""


@dataclass(frozen=True)
class BatchResult:
    """One request's detections and where its time went."""

    detections: RawDetections
    queue_s: float
    inference_s: float
    batch_size: int
    started_at: float  # time.monotonic() when its batch entered the model


class InferenceHooks:
    """Points where fault injection acts on the inference thread; the default does nothing."""

    def before_batch(self) -> None:
        """Called on the inference thread before each batch; may sleep, block or raise."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float


class Batcher:
    """A bounded queue in front of one inference thread."""

    def __init__(self, model: Detector, *, max_batch: int, max_delay_s: float, max_queue: int,
                 hooks: InferenceHooks | None = None,
                 on_sticky_error: Callable[[str], None] | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self._model = model
        self.max_batch = max_batch
        self._max_delay_s = max_delay_s
        self.capacity = max_queue
        self._hooks = hooks or InferenceHooks()
        self._on_sticky = on_sticky_error
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._running = 0          # requests in the batch the thread is running now
        self._closed = False
        self.sticky_error: str | None = None
        self.batches = 0
        self.frames = 0            # frames that went through the model (or failed in it)
        self._busy_s = 0.0         # seconds the model ran, finished batches
        self._batch_started: float | None = None
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the inference thread; results go back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests queued or in the running batch."""
        with self._cond:
            return len(self._queue) + self._running

    def busy_seconds(self) -> float:
        """Seconds the model has run since start, the batch running now included (load reports)."""
        started = self._batch_started
        return self._busy_s + (time.monotonic() - started if started is not None else 0.0)

    async def submit(self, image: np.ndarray) -> BatchResult:
        """Queue one letterboxed image (H x W x 3 uint8) and wait for its detections."""
        if self.sticky_error is not None:
            raise InferenceUnavailable(f"GPU context unusable after a CUDA error ({self.sticky_error}); "
                                       "this worker needs a restart")
        assert self._loop is not None, "Batcher.start() was not called"
        future: asyncio.Future[BatchResult] = self._loop.create_future()
        with self._cond:
            if self._closed:
                raise InferenceUnavailable("worker is shutting down")
            if len(self._queue) >= self.capacity:
                raise QueueFull(f"inference queue is full ({self.capacity} requests waiting); retry later "
                                "or send to another worker")
            self._queue.append(_Item(image, future, time.monotonic()))
            self._cond.notify()
        return await future

    def close(self) -> None:
        """Stop the thread once the queue is empty; queued requests are still served."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to finish (after close)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self._max_delay_s
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            # A caller that gave up (deadline, cancelled stream) no longer needs its slot.
            batch = [item for item in batch if not item.future.cancelled()]
            self._running = len(batch)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            if batch:
                self._run_batch(batch)
            with self._cond:
                self._running = 0

    def _run_batch(self, batch: list[_Item]) -> None:
        started = self._batch_started = time.monotonic()
        results: list[BatchResult] | BaseException
        try:
            if self.sticky_error is not None:
                raise InferenceUnavailable(f"GPU context unusable after a CUDA error ({self.sticky_error})")
            self._hooks.before_batch()
            detections = self._model.infer(np.stack([item.image for item in batch]))
            elapsed = time.monotonic() - started
            if self._on_batch is not None:
                self._on_batch(len(batch), elapsed)
            results = [BatchResult(d, started - item.enqueued, elapsed, len(batch), started)
                       for d, item in zip(detections, batch)]
        except InferenceUnavailable as e:
            results = e
        except Exception as e:
            if is_sticky_cuda_error(e):
                self.sticky_error = str(e).splitlines()[0]
                event(log, "sticky cuda error: worker needs a restart", logging.ERROR, error=self.sticky_error)
                if self._on_sticky is not None:
                    self._on_sticky(self.sticky_error)
                results = InferenceUnavailable(f"GPU context unusable after a CUDA error ({self.sticky_error}); "
                                               "this worker needs a restart")
            else:
                event(log, "inference failed", logging.ERROR, error=repr(e), batch_size=len(batch))
                results = InferenceFailed(f"inference failed: {e}")
        self.batches += 1
        self.frames += len(batch)
        self._busy_s += time.monotonic() - started
        self._batch_started = None
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_deliver, batch, results)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass


def _deliver(batch: list[_Item], results: list[BatchResult] | BaseException) -> None:
    for i, item in enumerate(batch):
        if item.future.done():
            continue
        if isinstance(results, BaseException):
            item.future.set_exception(results)
        else:
            item.future.set_result(results[i])
