"""Load reports: how a worker tells its callers how loaded it is, in the standard ORCA format.

ORCA (Open Request Cost Aggregation, xds.data.orca.v3.OrcaLoadReport) is what gRPC's own load
balancing reads: a worker that reports it is balanced by load by any gRPC client that runs weighted
round robin (zero-hop mode publishes that policy), and by the router. A worker reports:

    application_utilization   the share of the last WINDOW_S its model was busy (0..1; 1: saturated)
    rps_fractional, eps       frames answered, and answered with an error, per second over that window
    cpu_utilization           its process's CPU over that window, a share of the CPUs it may use
    utilization["gpu"]        the GPU's own utilisation (NVML), where it has one
    named_metrics["queue"]    frames waiting for the model or in it, now ("queue_capacity": how many
                              may wait before it refuses with RESOURCE_EXHAUSTED)

It sends one with every unary answer, in the trailer `endpoint-load-metrics-bin` (where gRPC's
weighted round robin reads it: a worker's weight is its rps over its utilisation, so a faster worker
gets more), and streams one every interval to whoever subscribes on the out-of-band service
xds.service.orca.v3.OpenRcaService/StreamCoreMetrics: the router does, since streams are long-lived
and a stream's trailer comes only at its end.

The report is computed at most every CACHE_S and reused in between, so a trailer costs a worker a
tuple, not a serialisation, per call. Out-of-band subscribers are bounded in total and per peer (the
same peer key as the worker's health Watch streams), and their interval is clamped to
[MIN_INTERVAL_S, MAX_INTERVAL_S]: a client cannot make a worker report a thousand times a second.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from eagleeye.api import names
from eagleeye.api.common.orca.v3 import orca_pb2
from eagleeye.common.admission import Full, Slots, peer_key

TRAILER, OOB_SERVICE, OOB_METHOD = names.ORCA_TRAILER, names.ORCA_OOB_SERVICE, names.ORCA_OOB_METHOD
OOB_PATH = f"/{OOB_SERVICE}/{OOB_METHOD}"
QUEUE, QUEUE_CAPACITY, GPU = names.ORCA_QUEUE, names.ORCA_QUEUE_CAPACITY, names.ORCA_GPU

WINDOW_S = 2.0            # rates and utilisation are over about this long
CACHE_S = 0.1             # a report is recomputed at most this often
MIN_INTERVAL_S, DEFAULT_INTERVAL_S, MAX_INTERVAL_S = 0.5, 1.0, 60.0
MAX_SUBSCRIBERS, MAX_SUBSCRIBERS_PER_PEER = 64, 8


@dataclass(frozen=True)
class Counters:
    """What a worker counts, read at one moment: totals since it started, and its queue now."""

    busy_s: float          # seconds its model has run, the batch running now included
    answered: int          # frames answered, errors included
    errors: int            # frames answered with an error
    queue: int             # frames waiting or in the model now
    capacity: int          # frames that may wait before it refuses
    gpu: float | None = None  # the GPU's utilisation (0..1), None without one


@dataclass(frozen=True)
class Load:
    """A report as a reader needs it (the router): None fields were not reported."""

    utilization: float
    rps: float
    queue: float | None
    capacity: float | None

    @classmethod
    def parse(cls, report: orca_pb2.OrcaLoadReport) -> Load:
        named = report.named_metrics
        return cls(utilization=report.application_utilization or report.cpu_utilization,
                   rps=report.rps_fractional or float(report.rps),
                   queue=named.get(QUEUE),
                   capacity=named.get(QUEUE_CAPACITY))


def _share(value: float) -> float:
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LoadReporter:
    """A worker's ORCA reports from its `counters`; `trailer()` per call, `handler()` for subscribers."""

    def __init__(self, counters: Callable[[], Counters], *, clock: Callable[[], float] = time.monotonic,
                 cpu_seconds: Callable[[], float] = time.process_time, cpus: int | None = None,
                 window_s: float = WINDOW_S, max_subscribers: int = MAX_SUBSCRIBERS,
                 max_subscribers_per_peer: int = MAX_SUBSCRIBERS_PER_PEER) -> None:
        self._counters = counters
        self._clock = clock
        self._cpu_seconds = cpu_seconds
        self._cpus = cpus or cpus_available()
        self._window_s = window_s
        # (time, busy_s, answered, errors, cpu_s), oldest first: one before the window, the rest in it
        self._samples: collections.deque[tuple[float, float, int, int, float]] = collections.deque()
        self._report = orca_pb2.OrcaLoadReport()
        self._encoded: tuple[tuple[str, bytes], ...] = ((TRAILER, b""),)
        self._at = -math.inf
        self.subscribers = Slots(max_subscribers, max_subscribers_per_peer)

    def report(self) -> orca_pb2.OrcaLoadReport:
        """The current report (recomputed when the last is older than CACHE_S)."""
        now = self._clock()
        if now - self._at >= CACHE_S:
            self._report = self._compute(now)
            self._encoded = ((TRAILER, self._report.SerializeToString()),)
            self._at = now
        return self._report

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        """The trailing metadata that carries the current report."""
        self.report()
        return self._encoded

    def _compute(self, now: float) -> orca_pb2.OrcaLoadReport:
        c, cpu = self._counters(), self._cpu_seconds()
        samples = self._samples
        samples.append((now, c.busy_s, c.answered, c.errors, cpu))
        while len(samples) > 2 and samples[1][0] <= now - self._window_s:
            samples.popleft()
        t0, busy0, answered0, errors0, cpu0 = samples[0]
        span = now - t0
        report = orca_pb2.OrcaLoadReport(named_metrics={QUEUE: float(c.queue), QUEUE_CAPACITY: float(c.capacity)})
        if span > 0:
            report.application_utilization = _share((c.busy_s - busy0) / span)
            report.rps_fractional = max(c.answered - answered0, 0) / span
            report.eps = max(c.errors - errors0, 0) / span
            report.cpu_utilization = _share((cpu - cpu0) / span / self._cpus)
        if c.gpu is not None:
            report.utilization[GPU] = _share(c.gpu)
        return report

    async def _stream(self, request: orca_pb2.OrcaLoadReportRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[orca_pb2.OrcaLoadReport]:
        key = peer_key(context.peer(), context.peer_identities())
        full = self.subscribers.take(key)
        if full is not None:
            bound = (f"{MAX_SUBSCRIBERS_PER_PEER} from one client" if full is Full.PEER
                     else f"{MAX_SUBSCRIBERS} in all")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"load report subscribers: at most {bound}; use the per-call trailer {TRAILER}")
        try:
            asked = request.report_interval.seconds + request.report_interval.nanos / 1e9
            interval = min(max(asked, MIN_INTERVAL_S), MAX_INTERVAL_S) if asked > 0 else DEFAULT_INTERVAL_S
            while True:
                yield self.report()
                await asyncio.sleep(interval)  # the report period the subscriber asked for
        finally:
            self.subscribers.give_back(key)

    def handler(self) -> grpc.GenericRpcHandler:
        """The out-of-band service, under its xDS path (register with common/grpcguard.guarded)."""
        return grpc.method_handlers_generic_handler(OOB_SERVICE, {OOB_METHOD: grpc.unary_stream_rpc_method_handler(
            self._stream, request_deserializer=orca_pb2.OrcaLoadReportRequest.FromString,
            response_serializer=orca_pb2.OrcaLoadReport.SerializeToString)})


def subscribe(channel: grpc.aio.Channel, interval_s: float) -> grpc.aio.UnaryStreamCall:
    """Open an out-of-band subscription on `channel`: a stream of reports, one every `interval_s`."""
    call = channel.unary_stream(OOB_PATH, request_serializer=orca_pb2.OrcaLoadReportRequest.SerializeToString,
                                response_deserializer=orca_pb2.OrcaLoadReport.FromString)
    request = orca_pb2.OrcaLoadReportRequest()
    request.report_interval.FromNanoseconds(int(interval_s * 1e9))
    return call(request)
