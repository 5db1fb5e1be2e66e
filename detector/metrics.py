"""The worker's metrics (OpenTelemetry instruments; names as Prometheus shows them in the README)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from eagleeye.detector.gpu import GpuSample

# What a call carries, as the ScreenFilter deployment counted it: single images, or video frames.
_KINDS = {"Detect": "image", "DetectStream": "video"}


class DetectorMetrics:
    """Instruments, and the callbacks that read gauges from the worker's own state when scraped."""

    def __init__(self, meter: metrics.Meter, *, queue_depth: Callable[[], int],
                 gpu: Callable[[], GpuSample | None], health: Callable[[], dict[str, bool]]) -> None:
        self._requests = meter.create_counter(
            "eagleeye_detector_requests", unit="1",
            description="Detector calls (unary) and stream frames, by method and gRPC status code")
        self._frames = meter.create_counter("eagleeye_detector_frames", unit="1",
                                            description="Images received, by method")
        self._objects = meter.create_counter("eagleeye_detector_objects", unit="1",
                                             description="Objects detected, by class")
        self._inference = meter.create_histogram("eagleeye_detector_inference_duration", unit="s",
                                                 description="Model time per batch")
        self._queue = meter.create_histogram("eagleeye_detector_queue_duration", unit="s",
                                             description="Time a frame waited for its batch")
        self._total = meter.create_histogram("eagleeye_detector_request_duration", unit="s",
                                             description="Time from a frame's arrival to its answer, in the worker")
        self._batch = meter.create_histogram("eagleeye_detector_batch_size", unit="1",
                                             description="Frames per inference batch")

        def observe_queue(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(queue_depth())]

        def observe_health(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(1 if ok else 0, {"service": name}) for name, ok in health().items()]

        def gpu_gauge(read: Callable[[GpuSample], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                sample = gpu()
                # No GPU (or no NVML): no series at all, never a made-up zero.
                return [] if sample is None or sample.gpu_lost else [Observation(read(sample))]
            return observe

        meter.create_observable_gauge("eagleeye_detector_queue_depth", [observe_queue], unit="1",
                                      description="Frames waiting for inference")
        meter.create_observable_gauge("eagleeye_health_status", [observe_health], unit="1",
                                      description="1 when the health service name is SERVING, else 0")
        meter.create_observable_gauge("eagleeye_gpu_utilization_ratio",
                                      [gpu_gauge(lambda s: s.utilization_percent / 100)], unit="1",
                                      description="GPU utilization from NVML, 0-1")
        meter.create_observable_gauge("eagleeye_gpu_memory_used", [gpu_gauge(lambda s: s.memory_used_bytes)],
                                      unit="By", description="GPU memory in use, from NVML")
        meter.create_observable_gauge("eagleeye_gpu_memory_total", [gpu_gauge(lambda s: s.memory_total_bytes)],
                                      unit="By", description="GPU memory in all, from NVML")
        meter.create_observable_gauge("eagleeye_gpu_temperature", [gpu_gauge(lambda s: s.temperature_c)],
                                      unit="Cel", description="GPU temperature from NVML, degrees Celsius")

    def request(self, method: str, code: str) -> None:
        self._requests.add(1, {"method": method, "kind": _KINDS.get(method, "other"), "code": code})

    def frame(self, method: str) -> None:
        self._frames.add(1, {"method": method, "kind": _KINDS.get(method, "other")})

    def objects(self, labels: Iterable[str]) -> None:
        for label in labels:
            self._objects.add(1, {"class": label})

    def answered(self, method: str, queue_s: float, total_s: float) -> None:
        self._queue.record(queue_s)
        self._total.record(total_s, {"method": method})

    def batch(self, size: int, inference_s: float) -> None:
        self._batch.record(size)
        self._inference.record(inference_s)
