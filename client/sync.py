"""Detector: AsyncDetector for code without asyncio (its own event loop on a thread of its own).

    with Detector("router:50050") as det:
        print(det.detect(open("street.jpg", "rb").read()).detections)
        for result in det.stream(camera_frames()):   # any iterable; read on a thread, so it may block
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.aio import DEFAULT_TIMEOUT_S, DEFAULT_WINDOW, AsyncDetector
from eagleeye.client.dial import Tls
from eagleeye.client.types import Image, Result

T = TypeVar("T")
_END = object()


class Detector:
    """The same client as AsyncDetector, called from ordinary (threaded) code; safe to share between
    threads. It runs an event loop on a thread of its own; the arguments are AsyncDetector's."""

    def __init__(self, target: str, *, xds_server: str | None = None, tls: Tls | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, window: int = DEFAULT_WINDOW) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="eagleeye-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncDetector:  # grpc.aio channels belong to the loop they are made in
            return AsyncDetector(target, xds_server=xds_server, tls=tls, timeout=timeout, window=window)

        try:
            self._async = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def stats(self) -> dict[str, int]:
        """What the library did for the caller: streams reopened, frames sent again, answers dropped as
        duplicates, unary retries and hedges."""
        return self._async.stats

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End every call of this client, its connection and its thread; calling it again does nothing."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
            self._run(self._drain())
        finally:
            self._stop_loop()

    async def _drain(self) -> None:
        """End what still runs on the loop (a stream the caller left), and the frame reads on threads."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_default_executor()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def model_info(self) -> pb.GetModelInfoResponse:
        """The model the service runs (name, version, classes, input size)."""
        return self._run(self._async.model_info())

    def detect(self, image: Image, **knobs: Any) -> Result:
        """Detections in one image: see AsyncDetector.detect."""
        return self._run(self._async.detect(image, **knobs))

    def stream(self, frames: Iterable[Any], **knobs: Any) -> Iterator[Result]:
        """One result per frame, in order, exactly once: see AsyncDetector.stream. `frames` is read on a
        thread, so a camera read that blocks does not hold up answers."""
        results: queue.Queue[Any] = queue.Queue()
        taken = asyncio.Semaphore(self._async.window)  # results handed over and not yet taken, at most
        stopping = threading.Event()                   # the caller left: end the stream where it is
        source = iter(frames)

        async def pull() -> AsyncIterator[Any]:
            while not stopping.is_set() and (item := await asyncio.to_thread(next, source, _END)) is not _END:
                yield item

        async def run() -> None:
            try:
                async with contextlib.aclosing(self._async.stream(pull(), **knobs)) as answers:
                    async for result in answers:
                        await taken.acquire()  # the caller's pace bounds what is held
                        if stopping.is_set():
                            break
                        results.put(result)
                results.put(_END)
            except Exception as e:
                results.put(e)

        done = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            while (item := results.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                self._loop.call_soon_threadsafe(taken.release)
                yield item
        finally:
            # No cross-thread cancel: the run sees the flag at its next step and closes the stream itself
            # (its calls end there); close() waits for what is still running.
            stopping.set()
            if not done.done() and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(taken.release)
