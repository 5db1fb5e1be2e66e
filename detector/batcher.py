"""The dynamic batcher: requests from every client share batches on the inference threads.

Callers on the event loop `await submit(image)`; an inference thread takes the oldest requests (up to
`max_batch`; with `max_delay_s`, it waits that long for more), copies them into its own input buffer,
runs the model once, and resolves every future with one hop back to the loop. The queue is bounded:
when full, `submit` raises QueueFull at once rather than letting latency grow without bound.

With `threads` > 1, that many batches run at once, each thread with its own input buffer (pinned
host memory on CUDA, from the model's `input_buffer`) and, on CUDA, its own CUDA stream: one batch's
upload, the host work around it (stacking, post-processing, the hand-off back to the loop) and the
next batch's forward pass overlap, so the GPU does not wait for the host between batches.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
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
                 threads: int = 1, hooks: InferenceHooks | None = None,
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
        self._running = 0          # requests in the batches running now
        self._active = 0           # batches running now
        self._closed = False
        self.sticky_error: str | None = None
        self.batches = 0
        self.frames = 0            # frames that went through the model (or failed in it)
        self._busy_s = 0.0         # seconds with at least one batch running, up to _busy_since
        self._busy_since: float | None = None
        self.threads = threads
        self._threads = [threading.Thread(target=self._run, name="inference" if threads == 1 else f"inference-{i}",
                                          daemon=True) for i in range(threads)]
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the inference threads; results go back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        for thread in self._threads:
            thread.start()

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
        """Seconds with the model running since start, the batches running now included (load reports).
        Batches that overlap count once: this is the device's busy time, not the threads' sum."""
        with self._cond:
            since = self._busy_since
            return self._busy_s + (time.monotonic() - since if since is not None else 0.0)

    async def submit(self, image: np.ndarray, *, urgent: bool = False) -> BatchResult:
        """Queue one letterboxed image (H x W x 3 uint8) and wait for its detections.

        `urgent` (the health canary, one at a time): to the head of the queue and never refused as full,
        so it measures the model and not the backlog in front of it; a hung model still holds it."""
        if self.sticky_error is not None:
            raise InferenceUnavailable(f"GPU context unusable after a CUDA error ({self.sticky_error}); "
                                       "this worker needs a restart")
        assert self._loop is not None, "Batcher.start() was not called"
        future: asyncio.Future[BatchResult] = self._loop.create_future()
        with self._cond:
            if self._closed:
                raise InferenceUnavailable("worker is shutting down")
            item = _Item(image, future, time.monotonic())
            if urgent:
                self._queue.appendleft(item)
            elif len(self._queue) >= self.capacity:
                raise QueueFull(f"inference queue is full ({self.capacity} requests waiting); retry later "
                                "or send to another worker")
            else:
                self._queue.append(item)
            self._cond.notify()
        return await future

    def close(self) -> None:
        """Stop the threads once the queue is empty; queued requests are still served."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to finish (after close), `timeout` for all of them together."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take_batch(self) -> list[_Item] | None:
        """The next batch for this thread (None once closed and empty); counts it as running."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                # The oldest frame's wait (an urgent one may stand before it at the head).
                deadline = min(item.enqueued for item in itertools.islice(self._queue, 2)) + self._max_delay_s
                while 0 < len(self._queue) < self.max_batch and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                # A caller that gave up (deadline, cancelled stream) no longer needs its slot.
                batch = [item for item in batch if not item.future.cancelled()]
                if batch:  # else another thread took them, or every caller gave up: wait again
                    break
            if self._queue:  # more than one batch waits: an idle thread may take the rest now
                self._cond.notify()
            self._running += len(batch)
            if not self._active:
                self._busy_since = time.monotonic()
            self._active += 1
            return batch

    def _finished(self, size: int) -> None:
        with self._cond:
            self._running -= size
            self._active -= 1
            self.batches += 1
            self.frames += size
            if not self._active and self._busy_since is not None:
                self._busy_s += time.monotonic() - self._busy_since
                self._busy_since = None

    def _run(self) -> None:
        # This thread's input buffer, reused for every batch it runs (pinned memory on CUDA): the
        # images are copied once, from the request's pixels into the memory the model reads.
        buffer: np.ndarray | None = None
        make_buffer = getattr(self._model, "input_buffer", None)
        try:
            if make_buffer is not None:
                buffer = make_buffer(self.max_batch)
            else:
                buffer = np.empty((self.max_batch, *self._model.meta.input_size, 3), np.uint8)
        except Exception as e:  # out of pinned memory, say: stacking into a fresh array still works
            event(log, "no input buffer: batches are stacked into new arrays", logging.WARNING, error=repr(e))
        while (batch := self._take_batch()) is not None:
            try:
                results = self._run_batch(batch, buffer)
            finally:
                self._finished(len(batch))
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_deliver, batch, results)
            except RuntimeError:  # the loop is closed: the process is exiting
                pass

    def _run_batch(self, batch: list[_Item], buffer: np.ndarray | None) -> list[BatchResult] | BaseException:
        """Run one batch: its results, or the exception every request in it gets."""
        started = time.monotonic()
        results: list[BatchResult] | BaseException
        try:
            if self.sticky_error is not None:
                raise InferenceUnavailable(f"GPU context unusable after a CUDA error ({self.sticky_error})")
            self._hooks.before_batch()
            detections = self._model.infer(_stack([item.image for item in batch], buffer))
            elapsed = time.monotonic() - started
            if self._on_batch is not None:
                self._on_batch(len(batch), elapsed)
            results = [BatchResult(d, started - item.enqueued, elapsed, len(batch), started)
                       for d, item in zip(detections, batch)]
        except InferenceUnavailable as e:
            results = e
        except Exception as e:
            if is_sticky_cuda_error(e):
                error = str(e).splitlines()[0]
                with self._cond:
                    first = self.sticky_error is None
                    if first:
                        self.sticky_error = error
                    latched = self.sticky_error or error
                if first:  # another thread's batch may fail on the same broken context: say it once
                    event(log, "sticky cuda error: worker needs a restart", logging.ERROR, error=error)
                    if self._on_sticky is not None:
                        self._on_sticky(error)
                results = InferenceUnavailable(f"GPU context unusable after a CUDA error ({latched}); "
                                               "this worker needs a restart")
            else:
                event(log, "inference failed", logging.ERROR, error=repr(e), batch_size=len(batch))
                results = InferenceFailed(f"inference failed: {e}")
        return results


def _stack(images: list[np.ndarray], buffer: np.ndarray | None) -> np.ndarray:
    """The images as one N x H x W x 3 array: a view of the first N of `buffer` when they fit it."""
    if buffer is not None and len(images) <= len(buffer) and all(i.shape == buffer.shape[1:] for i in images):
        return np.stack(images, out=buffer[:len(images)])
    return np.stack(images)


def _deliver(batch: list[_Item], results: list[BatchResult] | BaseException) -> None:
    for i, item in enumerate(batch):
        if item.future.done():
            continue
        if isinstance(results, BaseException):
            item.future.set_exception(results)
        else:
            item.future.set_result(results[i])
