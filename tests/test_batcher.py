"""The dynamic batcher: shared batches, a bounded queue, sticky CUDA errors latched."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from eagleeye.detector.batcher import Batcher, InferenceFailed, InferenceHooks, InferenceUnavailable, QueueFull
from eagleeye.detector.contract import ModelMeta, RawDetections

META = ModelMeta("fake", "0", ("a",), (4, 4))


class FakeModel:
    """Records batch sizes; can be held on an event or made to raise."""

    meta = META
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.error: Exception | None = None

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        self.gate.wait(10)
        self.batches.append(len(batch))
        if self.error is not None:
            raise self.error
        # Echo each image's first pixel as its score, so answers can be matched to requests.
        return [RawDetections(np.zeros((1, 4), np.float32), np.array([img[0, 0, 0]], np.float32),
                              np.zeros(1, np.int64)) for img in batch]


def image(v: int) -> np.ndarray:
    return np.full((4, 4, 3), v, np.uint8)


async def started(model: FakeModel, **kw: object) -> Batcher:
    b = Batcher(model, **{"max_batch": 4, "max_delay_s": 0.05, "max_queue": 8, **kw})  # type: ignore[arg-type]
    b.start()
    return b


async def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    model = FakeModel()
    b = await started(model)
    results = await asyncio.gather(*(b.submit(image(v)) for v in range(8)))
    assert [float(r.detections.scores[0]) for r in results] == list(range(8))
    assert sum(model.batches) == 8 and max(model.batches) == 4
    b.close()
    b.join(5)


async def test_full_queue_is_refused_at_once() -> None:
    model = FakeModel()
    model.gate.clear()
    b = await started(model, max_batch=1, max_queue=2)
    first = asyncio.create_task(b.submit(image(0)))
    while b.in_flight < 1 or b.depth:  # wait until the thread holds the first one
        await asyncio.sleep(0.001)
    queued = [asyncio.create_task(b.submit(image(i))) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="queue is full"):
        await b.submit(image(3))
    model.gate.set()
    await asyncio.gather(first, *queued)
    b.close()
    b.join(5)


async def test_sticky_cuda_error_latches_and_fails_fast() -> None:
    model = FakeModel()
    seen: list[str] = []
    b = await started(model, on_sticky_error=seen.append)
    model.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(InferenceUnavailable, match="needs a restart"):
        await b.submit(image(1))
    assert b.sticky_error and seen == [b.sticky_error]
    model.error = None
    with pytest.raises(InferenceUnavailable):
        await b.submit(image(1))
    assert model.batches == [1]  # nothing more reached the GPU
    b.close()
    b.join(5)


async def test_other_errors_fail_the_batch_only() -> None:
    model = FakeModel()
    b = await started(model)
    model.error = ValueError("shape mismatch")
    with pytest.raises(InferenceFailed, match="shape mismatch"):
        await b.submit(image(1))
    model.error = None
    assert float((await b.submit(image(7))).detections.scores[0]) == 7
    assert b.sticky_error is None
    b.close()
    b.join(5)


async def test_hooks_run_before_each_batch_and_close_serves_the_queue() -> None:
    calls = []

    class Hooks(InferenceHooks):
        def before_batch(self) -> None:
            calls.append(1)

    b = await started(FakeModel(), hooks=Hooks())
    pending = [asyncio.create_task(b.submit(image(i))) for i in range(3)]
    await asyncio.sleep(0)
    b.close()
    assert len(await asyncio.gather(*pending)) == 3
    assert calls
    with pytest.raises(InferenceUnavailable, match="shutting down"):
        await b.submit(image(0))
    b.join(5)


class OverlapModel(FakeModel):
    """Each batch waits at a barrier for `parties` batches to be inside `infer` at once, then answers
    from the pixels it was given: a batch whose input another batch overwrote answers wrongly."""

    def __init__(self, parties: int, hold_s: float = 0.0) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.hold_s = hold_s
        self.inputs: list[np.ndarray] = []
        self._lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        with self._lock:
            self.inputs.append(batch)
        self.barrier.wait()  # the other batches have stacked their images by now
        if self.hold_s:
            time.sleep(self.hold_s)  # the forward pass itself, simulated
        return super().infer(batch)


async def test_with_two_threads_two_batches_run_at_once_each_from_its_own_buffer() -> None:
    model = OverlapModel(parties=2)
    b = await started(model, max_batch=2, threads=2)
    # Four frames: two batches of two, in the model together (a lone thread would break the barrier).
    results = await asyncio.gather(*(b.submit(image(v)) for v in (1, 2, 3, 4)))
    assert [float(r.detections.scores[0]) for r in results] == [1, 2, 3, 4]
    assert sorted(model.batches) == [2, 2] and b.batches == 2 and b.frames == 4
    a, c = model.inputs
    assert not np.shares_memory(a, c)
    b.close()
    b.join(5)
    assert b.in_flight == 0


async def test_one_thread_runs_one_batch_at_a_time() -> None:
    model = OverlapModel(parties=2)
    model.barrier = threading.Barrier(2, timeout=0.5)
    b = await started(model, max_batch=2)
    with pytest.raises(InferenceFailed):  # the barrier is never met: no second batch runs alongside
        await asyncio.gather(*(b.submit(image(v)) for v in (1, 2, 3, 4)))
    b.close()
    b.join(5)


async def test_busy_seconds_count_overlapping_batches_once() -> None:
    model = OverlapModel(parties=2, hold_s=0.3)
    b = await started(model, max_batch=1, threads=2)
    start = time.monotonic()
    await asyncio.gather(b.submit(image(1)), b.submit(image(2)))
    wall = time.monotonic() - start
    busy = b.busy_seconds()
    # The threads together ran 0.6 s of batches; the model was busy 0.3 s of the wall time.
    assert 0.3 <= busy <= wall < 0.6, (busy, wall)
    b.close()
    b.join(5)


class BufferModel(FakeModel):
    """Hands the batcher its own input buffers, as a CUDA model hands out pinned memory."""

    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[np.ndarray] = []
        self.seen: list[np.ndarray] = []

    def input_buffer(self, max_batch: int) -> np.ndarray:
        buffer = np.zeros((max_batch, 4, 4, 3), np.uint8)
        self.buffers.append(buffer)
        return buffer

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        self.seen.append(batch)
        return super().infer(batch)


async def test_batches_are_stacked_into_the_models_own_buffer_and_odd_shapes_still_run() -> None:
    model = BufferModel()
    b = await started(model, max_batch=4)
    for v in (5, 6):
        assert float((await b.submit(image(v))).detections.scores[0]) == v
    odd = np.full((2, 2, 3), 9, np.uint8)  # not the model's input size: stacked into a new array
    assert float((await b.submit(odd)).detections.scores[0]) == 9
    (buffer,) = model.buffers
    assert [np.shares_memory(s, buffer) for s in model.seen] == [True, True, False]
    b.close()
    b.join(5)


async def test_a_sticky_error_seen_by_two_threads_is_latched_and_reported_once() -> None:
    model = OverlapModel(parties=2)
    model.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    seen: list[str] = []
    b = await started(model, max_batch=1, threads=2, on_sticky_error=seen.append)
    outcomes = await asyncio.gather(b.submit(image(1)), b.submit(image(2)), return_exceptions=True)
    assert all(isinstance(o, InferenceUnavailable) for o in outcomes), outcomes
    assert seen == [b.sticky_error] and b.sticky_error is not None
    b.close()
    b.join(5)


async def test_close_with_several_threads_serves_the_queue_and_stops_them_all() -> None:
    b = await started(FakeModel(), max_batch=1, threads=3)
    pending = [asyncio.create_task(b.submit(image(i))) for i in range(7)]
    await asyncio.sleep(0)
    b.close()
    assert [float(r.detections.scores[0]) for r in await asyncio.gather(*pending)] == list(range(7))
    b.join(5)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("inference-")]


async def test_the_canary_goes_first_and_is_not_refused_by_a_full_queue() -> None:
    model = FakeModel()
    model.gate.clear()
    b = await started(model, max_batch=2, max_queue=4)
    first = asyncio.create_task(b.submit(image(0)))
    while b.in_flight < 1 or b.depth:  # the thread holds the first frame in the model
        await asyncio.sleep(0.001)
    queued = [asyncio.create_task(b.submit(image(v))) for v in (1, 2, 3, 4)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await b.submit(image(5))
    canary = asyncio.create_task(b.submit(image(9), urgent=True))
    await asyncio.sleep(0)
    assert b.in_flight == 6  # one in the model, four queued, the canary
    model.gate.set()
    await asyncio.gather(first, canary, *queued)
    # The canary shared the very next batch with the oldest waiting frame, ahead of the backlog.
    assert model.batches == [1, 2, 2, 1]
    assert float(canary.result().detections.scores[0]) == 9 and canary.result().batch_size == 2
    assert canary.result().queue_s < queued[1].result().queue_s
    b.close()
    b.join(5)
