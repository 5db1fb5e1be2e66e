"""Load reports (common/loadreport.py): what a worker says about its load, per call and out of band.

The pure part runs on an injected clock; the wire part against the simulated worker (bench/simworker.py),
which reports exactly as the worker does, and through the router, which must not pass a worker's
report on as its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import grpc
import pytest

from eagleeye.api.common.orca.v3 import orca_pb2
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.common import loadreport
from eagleeye.common.loadreport import CACHE_S, GPU, QUEUE, QUEUE_CAPACITY, TRAILER, Counters, Load, LoadReporter
from eagleeye.harness.processes import Proc
from tests.h2raw import Relay, literal_header_values


@dataclass
class Fake:
    now: float = 100.0
    cpu: float = 0.0
    counters: Counters = field(default_factory=lambda: Counters(busy_s=0.0, answered=0, errors=0, queue=0,
                                                                capacity=64))

    def reporter(self, cpus: int = 2, window_s: float = 2.0) -> LoadReporter:
        return LoadReporter(lambda: self.counters, clock=lambda: self.now, cpu_seconds=lambda: self.cpu,
                            cpus=cpus, window_s=window_s)

    def advance(self, seconds: float, *, busy: float = 0.0, answered: int = 0, errors: int = 0, cpu: float = 0.0,
                queue: int | None = None) -> None:
        c = self.counters
        self.now += seconds
        self.cpu += cpu
        self.counters = replace(c, busy_s=c.busy_s + busy, answered=c.answered + answered,
                                errors=c.errors + errors, queue=c.queue if queue is None else queue)


def test_a_report_says_how_busy_the_model_was_how_fast_it_answered_and_what_waits() -> None:
    fake = Fake()
    reporter = fake.reporter(cpus=2)
    first = reporter.report()
    assert first.named_metrics[QUEUE] == 0 and first.named_metrics[QUEUE_CAPACITY] == 64
    assert first.application_utilization == 0 and first.rps_fractional == 0  # nothing measured yet
    # One second: the model ran 0.75 s, 120 frames answered (6 refused), one CPU of two half used.
    fake.advance(1.0, busy=0.75, answered=120, errors=6, cpu=0.5, queue=9)
    report = reporter.report()
    assert report.application_utilization == pytest.approx(0.75)
    assert report.rps_fractional == pytest.approx(120)
    assert report.eps == pytest.approx(6)
    assert report.cpu_utilization == pytest.approx(0.25)
    assert report.named_metrics[QUEUE] == 9
    assert GPU not in report.utilization  # no GPU: no claim about one
    load = Load.parse(report)
    assert load.utilization == pytest.approx(0.75) and load.rps == pytest.approx(120)
    assert (load.queue, load.capacity) == (9, 64)


def test_rates_cover_the_recent_window_not_the_whole_life() -> None:
    fake = Fake()
    reporter = fake.reporter(window_s=2.0)
    reporter.report()
    for _ in range(10):  # ten busy seconds ...
        fake.advance(1.0, busy=1.0, answered=100)
        reporter.report()
    for _ in range(3):   # ... then three idle ones: the report says idle, not 10/13 busy
        fake.advance(1.0)
        reporter.report()
    report = reporter.report()
    assert report.application_utilization == pytest.approx(0.0)
    assert report.rps_fractional == pytest.approx(0.0)


def test_a_report_is_reused_within_its_cache_time_and_is_never_out_of_range() -> None:
    fake = Fake()
    reporter = fake.reporter()
    reporter.report()
    fake.advance(CACHE_S / 2, busy=CACHE_S / 2, answered=5, queue=3)
    assert reporter.report().named_metrics[QUEUE] == 0  # the same report: not recomputed per call
    assert reporter.trailer()[0][0] == TRAILER
    fake.advance(CACHE_S, busy=5.0, cpu=-1.0)  # counters that jump (a clock step, a reset): clamped
    report = reporter.report()
    assert report.named_metrics[QUEUE] == 3
    assert 0.0 <= report.application_utilization <= 1.0 and 0.0 <= report.cpu_utilization <= 1.0
    fake.counters = replace(fake.counters, gpu=0.42)
    fake.advance(2 * CACHE_S)
    assert reporter.report().utilization[GPU] == pytest.approx(0.42)
    # The trailer is the report, serialised: what gRPC's weighted round robin parses.
    parsed = orca_pb2.OrcaLoadReport.FromString(reporter.trailer()[0][1])
    assert parsed == reporter.report()


@pytest.fixture(scope="module")
async def simworker() -> AsyncIterator[str]:
    proc = Proc("python", ["-m", "bench.simworker", "--worker-id", "sim-load", "--service-ms", "50",
                           "--max-batch", "2", "--max-queue", "32", "--start-delay-s", "0"])
    try:
        address = str((await asyncio.to_thread(proc.wait_for_event, "listening", 60))["address"])
        await asyncio.to_thread(proc.wait_for_event, "model ready", 60)
        yield address
    finally:
        await asyncio.to_thread(proc.stop)


async def test_every_answer_carries_the_workers_load_in_the_standard_trailer(simworker: str) -> None:
    # grpcio's client consumes this trailer itself (its weighted round robin reads it) and does not hand
    # it to the application, so the test reads what reached the wire.
    relay = Relay(simworker)
    try:
        async with grpc.aio.insecure_channel(relay.address) as ch:
            for _ in range(3):
                await pb_grpc.DetectorStub(ch).Detect(pb.DetectRequest(encoded=b"x"), timeout=10)
    finally:
        relay.close()
    reports = [orca_pb2.OrcaLoadReport.FromString(v) for v in literal_header_values(bytes(relay.answers), TRAILER)]
    assert len(reports) == 3, reports
    assert all(r.named_metrics[QUEUE_CAPACITY] == 32 and QUEUE in r.named_metrics for r in reports)


async def test_subscribers_get_reports_that_follow_the_load_and_are_bounded_per_client(simworker: str) -> None:
    async with grpc.aio.insecure_channel(simworker) as ch:
        stub = pb_grpc.DetectorStub(ch)
        reports = loadreport.subscribe(ch, 0.5)
        idle = await asyncio.wait_for(reports.read(), 10)
        assert isinstance(idle, orca_pb2.OrcaLoadReport)
        # 12 callers, each calling again as soon as answered, against 2 frames per 50 ms: the model is
        # never idle and frames wait.
        done = asyncio.Event()

        async def caller() -> None:
            while not done.is_set():
                await stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=30)

        busy = asyncio.gather(*(caller() for _ in range(12)))
        seen: list[orca_pb2.OrcaLoadReport] = []
        try:
            for _ in range(6):
                seen.append(await asyncio.wait_for(reports.read(), 10))
        finally:
            done.set()
            await busy
        assert max(r.application_utilization for r in seen) > 0.8, seen
        assert max(r.named_metrics[QUEUE] for r in seen) >= 4, seen
        assert max(r.rps_fractional for r in seen) > 20, seen

        # One client may hold a few subscriptions, not an unbounded number of streams.
        held = [loadreport.subscribe(ch, 60) for _ in range(loadreport.MAX_SUBSCRIBERS_PER_PEER - 1)]
        for call in held:
            await asyncio.wait_for(call.read(), 10)
        extra = loadreport.subscribe(ch, 60)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(extra.read(), 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert TRAILER in (err.value.details() or "")
        reports.cancel()
        for call in held:
            call.cancel()
