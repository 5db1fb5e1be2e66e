"""bench/simworker.py: the simulated GPU worker scale tests run many of (issue 21)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.simworker import Faults, QueueFull, SimBatcher
from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.names import RETRY_ELSEWHERE_KEY
from eagleeye.harness.processes import Proc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(("faults", "readiness", "headroom"), [
    (Faults(), "", ""),
    (Faults(delay_s=1.0), "", ""),                                     # slow, within the canary deadline
    (Faults(delay_s=2.0), "over the canary deadline", ""),
    (Faults(hung=True), "inference hung", ""),
    (Faults(sticky_error="CUDA error"), "CUDA error", ""),
    (Faults(gpu_lost=True, hung=True), "GPU lost", ""),               # the cause named, not the symptom
    (Faults(utilization_percent=94.9), "", ""),
    (Faults(utilization_percent=95.0), "", "95 % busy"),
    (Faults(thermal_slowdown=True), "", "thermal slowdown"),
])
def test_fault_states_decide_readiness_and_headroom(faults: Faults, readiness: str, headroom: str) -> None:
    assert readiness in faults.readiness_reason(1.5) and bool(readiness) == bool(faults.readiness_reason(1.5))
    assert headroom in faults.headroom_reason() and bool(headroom) == bool(faults.headroom_reason())


async def test_requests_are_answered_in_batches_and_a_full_queue_refuses_at_once() -> None:
    batcher = SimBatcher(service_s=0.05, max_batch=4, max_queue=10)
    runner = asyncio.create_task(batcher.run())
    try:
        await asyncio.gather(*(batcher.submit() for _ in range(10)))
        assert batcher.batches == 3  # 4 + 4 + 2
        batcher.faults.hung = True   # nothing runs: the queue fills and the next is refused
        waiting = [asyncio.create_task(batcher.submit()) for _ in range(10)]
        await asyncio.sleep(0)       # let them enqueue
        with pytest.raises(QueueFull, match="max_queue"):
            await batcher.submit()
        batcher.faults.hung = False
        batcher.changed()
        await asyncio.gather(*waiting)
        assert batcher.batches == 6 and batcher.in_flight == 0
    finally:
        runner.cancel()


@pytest.mark.integration
async def test_the_simulated_worker_serves_like_a_worker_and_takes_the_workers_faults() -> None:
    proc = Proc("python", ["-m", "bench.simworker", "--worker-id", "sim-1", "--service-ms", "50", "--max-batch", "4",
                           "--max-queue", "8", "--start-delay-s", "0.5"])
    try:
        address = proc.wait_listening()
        async with grpc.aio.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.DetectorStub(ch)
            faults = fi_grpc.FaultInjectionStub(ch)

            async def status(name: str) -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status)

            assert await status("liveness") == SERVING
            await asyncio.to_thread(proc.wait_for_event, "model ready")
            assert [await status(n) for n in ("", "readiness", "eagleeye.detector.v1.Detector", "headroom")] == [
                SERVING] * 4

            # 8 concurrent calls: batches of up to 4, 50 ms each (the first may start before all arrive).
            started = time.monotonic()
            answers = await asyncio.gather(*(stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=5) for _ in range(8)))
            assert {a.worker for a in answers} == {"sim-1"}
            assert time.monotonic() - started < 3.0
            state = await faults.GetInferenceState(fi.GetInferenceStateRequest(), timeout=5)
            assert 2 <= state.batches <= 8 and state.in_flight == 0  # (batching itself: the test above)
            frames = [f.frame_id async for f in stub.DetectStream(
                iter([pb.DetectRequest(frame_id=i, encoded=b"x") for i in (7, 8, 9)]), timeout=5)]
            assert frames == [7, 8, 9]

            # A hang: readiness NOT_SERVING (liveness not), calls wait; past the queue, the retry-elsewhere refusal.
            await faults.HangInference(fi.HangInferenceRequest(), timeout=5)
            assert await status("readiness") == NOT_SERVING and await status("liveness") == SERVING
            waiting = [asyncio.ensure_future(stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=10)) for _ in range(8)]
            give_up = time.monotonic() + 10
            while (await faults.GetInferenceState(fi.GetInferenceStateRequest(), timeout=5)).in_flight < 8:
                assert time.monotonic() < give_up, "the 8 calls never reached the queue"
                await asyncio.sleep(0.01)  # polling the worker's own count until the 8 calls are queued
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(refused.value.trailing_metadata() or ())
            assert RETRY_ELSEWHERE_KEY in trailers, trailers
            cleared = await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
            assert cleared.state == "none"
            assert {a.worker for a in await asyncio.gather(*waiting)} == {"sim-1"}
            assert await status("readiness") == SERVING

            await faults.SetTelemetry(fi.SetTelemetryRequest(utilization_percent=99), timeout=5)
            assert await status("headroom") == NOT_SERVING and await status("readiness") == SERVING
            await faults.DelayInference(fi.DelayInferenceRequest(seconds=2), timeout=5)
            assert await status("readiness") == NOT_SERVING
            await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
            assert await status("headroom") == SERVING and await status("readiness") == SERVING
    finally:
        assert proc.stop() == 0, proc.lines[-5:]
