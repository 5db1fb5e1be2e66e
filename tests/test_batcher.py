"""The dynamic batcher: shared batches, a bounded queue, sticky CUDA errors latched."""

from __future__ import annotations

import asyncio
import threading

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
