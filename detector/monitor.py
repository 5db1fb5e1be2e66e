"""The health shell: gathers signals (canary, telemetry, batcher), evaluates, publishes to gRPC health.

The canary is a tiny image sent through the real batcher and model on an interval; its answer must
match the golden answer recorded at warm-up. Evaluation runs on an interval and at once when
something happens (a canary finishes, a sticky error, an injected fault).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from eagleeye.common.aio import wait_event
from eagleeye.common.logs import event
from eagleeye.detector.batcher import Batcher
from eagleeye.detector.config import HealthConfig
from eagleeye.detector.contract import RawDetections
from eagleeye.detector.gpu import LOST, GpuSample, TelemetrySource
from eagleeye.detector.health import CanaryOutcome, CanaryState, HealthEvaluator, HealthReport, Signals
from eagleeye.detector.pipeline import LatencyWindow

log = logging.getLogger("eagleeye.health")

# A telemetry read that takes this long means the driver is stuck: count the GPU as lost.
TELEMETRY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Golden:
    """The canary's top detection at warm-up, which later canaries must reproduce."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]

    @staticmethod
    def of(raw: RawDetections) -> Golden:
        """The top-scoring candidate of a canary answer."""
        i = int(np.argmax(raw.scores))
        b = raw.boxes[i]
        return Golden(int(raw.classes[i]), float(raw.scores[i]), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))

    def check(self, raw: RawDetections) -> tuple[CanaryOutcome, str]:
        """Compare an answer with the golden one (tolerant of batch-size and fp16 noise)."""
        if not (np.isfinite(raw.scores).all() and np.isfinite(raw.boxes).all()):
            return CanaryOutcome.NON_FINITE, "NaN or infinite values in the model output"
        top = Golden.of(raw)
        iou = _iou(self.box, top.box)
        if top.class_id != self.class_id or abs(top.score - self.score) > 0.1 or iou < 0.7:
            return CanaryOutcome.WRONG, (f"top detection class {top.class_id} score {top.score:.3f} IoU {iou:.2f}; "
                                         f"golden class {self.class_id} score {self.score:.3f}")
        return CanaryOutcome.OK, ""


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reason_shapes(reasons: tuple[str, ...]) -> frozenset[str]:
    """The reasons with their figures taken out: what changes when a new cause appears or one goes, not
    when a latency or a backlog moves."""
    return frozenset(re.sub(r"\d+(\.\d+)?", "#", r) for r in reasons)


class HealthPublisher:
    """Pushes statuses into grpcio-health-checking's servicer and logs each transition once; and logs
    "health reasons" when the causes change while every status stays (a GPU falling off the bus while
    the worker is already not ready for a late canary: the log must still name it)."""

    def __init__(self, servicer: health_aio.HealthServicer) -> None:
        self._servicer = servicer
        self._last: dict[str, bool] = {}
        self._last_shapes: frozenset[str] = frozenset()
        self._shut_down = False
        self.report: HealthReport | None = None

    def statuses(self) -> dict[str, bool]:
        """Service name -> SERVING, as last published (all False once shutting down)."""
        return dict.fromkeys(self._last, False) if self._shut_down else dict(self._last)

    async def publish(self, report: HealthReport) -> None:
        """Set every status that changed; Watch subscribers get the change at once."""
        statuses = report.statuses()
        changed = {name: ok for name, ok in statuses.items() if self._last.get(name) != ok}
        for name, ok in changed.items():
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING if ok
                                     else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._last = statuses
        self.report = report
        shapes, shapes_before = reason_shapes(report.reasons), self._last_shapes
        self._last_shapes = shapes
        if changed:
            event(log, "health transition", logging.INFO if report.ready else logging.WARNING,
                  ready=report.ready, live=report.live, headroom=report.headroom,
                  changed={name or '""': "SERVING" if ok else "NOT_SERVING" for name, ok in changed.items()},
                  reasons=list(report.reasons))
        elif shapes != shapes_before:
            event(log, "health reasons", logging.INFO if report.ready else logging.WARNING,
                  ready=report.ready, live=report.live, headroom=report.headroom, reasons=list(report.reasons))

    async def shutdown(self) -> None:
        """Every service NOT_SERVING, for good (SIGTERM)."""
        self._shut_down = True
        await self._servicer.enter_graceful_shutdown()
        event(log, "health transition", logging.WARNING, changed="all NOT_SERVING",
              reasons=["shutting down (SIGTERM): draining in-flight work"])


class Monitor:
    """Owns the evaluator and everything that feeds it."""

    def __init__(self, cfg: HealthConfig, telemetry: TelemetrySource, publisher: HealthPublisher,
                 latency: LatencyWindow, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._telemetry = telemetry
        self._publisher = publisher
        self._latency = latency
        self._clock = clock
        self._evaluator = HealthEvaluator(cfg)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gpu_expected = False
        self._model_error: str | None = None
        self._batcher: Batcher | None = None
        self._decode_waiting: Callable[[], int] = lambda: 0
        self._canary_input: np.ndarray | None = None
        self._golden: Golden | None = None
        self._canary = CanaryState()
        self._canary_task: asyncio.Task[None] | None = None
        self._telemetry_task: asyncio.Task[GpuSample | None] | None = None
        self._gpu: GpuSample | None = None
        self._stopped = False

    @property
    def gpu(self) -> GpuSample | None:
        """The last GPU reading (None: no GPU or unknown)."""
        return self._gpu

    def model_ready(self, batcher: Batcher, canary_input: np.ndarray, golden: Golden, gpu_expected: bool,
                    decode_waiting: Callable[[], int] = lambda: 0) -> None:
        """The model is loaded and warm: start canaries. `decode_waiting`: frames waiting for a decode
        thread, counted with the batch queue as the backlog."""
        self._batcher, self._canary_input, self._golden = batcher, canary_input, golden
        self._decode_waiting = decode_waiting
        self._gpu_expected = gpu_expected
        self.wake()

    def model_failed(self, error: str) -> None:
        """Loading or warm-up failed."""
        self._model_error = error
        self.wake()

    def wake(self) -> None:
        """Evaluate now (safe from any thread)."""
        if self._loop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run_canary(self) -> None:
        assert self._batcher is not None and self._canary_input is not None and self._golden is not None
        started = self._clock()
        previous = self._canary
        self._canary = CanaryState(previous.last, previous.detail, inflight_since=started)
        try:
            # Ahead of the queue: the canary judges the model, and a backlog (load) is the backlog rule's.
            out = await self._batcher.submit(self._canary_input, urgent=True)
        except Exception as e:
            self._canary = CanaryState(CanaryOutcome.FAILED, str(e))
            self.wake()
            return
        took = self._clock() - started
        outcome, detail = self._golden.check(out.detections)
        if outcome is CanaryOutcome.OK and took > self._cfg.canary_deadline_s:
            outcome, detail = CanaryOutcome.LATE, f"answered in {took:.2f} s (deadline {self._cfg.canary_deadline_s} s)"
        self._canary = CanaryState(outcome, detail)
        self._latency.add(self._clock(), (took - out.queue_s) * 1000)
        if outcome is not previous.last:
            self.wake()

    async def _sample(self) -> GpuSample | None:
        # NVML calls can block when the driver is in trouble: read on a thread, with a timeout.
        if self._telemetry_task is None:
            self._telemetry_task = asyncio.ensure_future(asyncio.to_thread(self._telemetry.sample))
        done, _ = await asyncio.wait({self._telemetry_task}, timeout=TELEMETRY_TIMEOUT_S)
        if not done:
            return LOST
        task, self._telemetry_task = self._telemetry_task, None
        return task.result()

    def signals(self) -> Signals:
        """What the evaluator sees now."""
        now = self._clock()
        batcher = self._batcher
        return Signals(
            model_ready=batcher is not None,
            model_error=self._model_error,
            canary=self._canary,
            sticky_cuda_error=batcher.sticky_error if batcher else None,
            gpu_expected=self._gpu_expected,
            gpu=self._gpu,
            latency_p95_ms=self._latency.p95(now),
            queue_depth=batcher.depth + self._decode_waiting() if batcher else 0,
            queue_capacity=batcher.capacity if batcher else 1,
        )

    async def evaluate_once(self) -> HealthReport:
        """Gather, evaluate and publish once."""
        self._gpu = await self._sample()
        report = self._evaluator.evaluate(self.signals(), self._clock())
        if not self._stopped:
            await self._publisher.publish(report)
        return report

    async def run(self) -> None:
        """Evaluate every interval and on wake-ups; run canaries on their own interval."""
        self._loop = asyncio.get_running_loop()
        next_canary = 0.0
        while not self._stopped:
            now = self._clock()
            canary_idle = self._canary_task is None or self._canary_task.done()
            if self._batcher is not None and canary_idle and now >= next_canary:
                self._canary_task = asyncio.create_task(self._run_canary())
                next_canary = now + self._cfg.canary_interval_s
            await self.evaluate_once()
            await wait_event(self._wake, self._cfg.evaluate_interval_s)
            self._wake.clear()

    def stop(self) -> None:
        """Stop publishing (the shutdown path owns health from here)."""
        self._stopped = True
        if self._canary_task is not None:
            self._canary_task.cancel()
        self._wake.set()
