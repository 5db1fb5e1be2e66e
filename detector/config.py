"""The detector's configuration: one frozen, validated object built from a TOML file and flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eagleeye.api import names
from eagleeye.common import settings, tls
from eagleeye.common.cli import ConfigError, is_loopback, parse_host_port
from eagleeye.common.logs import LOG_FORMATS

MiB = 1024 * 1024

# One intra-op thread per two cores: with 2 threads on a 2-core box, a forward pass was measured
# 15-25x slower while another process used a core (shared/FACTS.md); 1 thread stays stable.
DEFAULT_TORCH_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))


LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds of the health rules (SPEC.md section 2); defaults from field practice."""

    evaluate_interval_s: float = 0.5
    canary_interval_s: float = 1.0
    canary_deadline_s: float = 2.0      # readiness NOT_SERVING past this
    canary_hang_s: float = 15.0         # liveness NOT_SERVING past this: inference is hung
    utilization_high_percent: float = 95.0
    utilization_high_for_s: float = 10.0
    memory_high_fraction: float = 0.92
    memory_trend_samples: int = 5       # "still growing" = rising across this many samples
    min_free_memory_bytes: int = 512 * MiB
    temperature_high_c: float = 85.0        # soft trigger (headroom) past this for temperature_high_for_s
    temperature_high_for_s: float = 30.0
    # Hardware protection: past temperature_critical_c for temperature_critical_for_s, readiness goes
    # NOT_SERVING (the router fails over) and stays so until the GPU has stayed below
    # temperature_recover_c for temperature_recover_for_s.
    temperature_critical_c: float = 85.0
    temperature_critical_for_s: float = 30.0
    temperature_recover_c: float = 80.0
    temperature_recover_for_s: float = 60.0
    latency_budget_ms: float = 250.0
    latency_window_s: float = 10.0
    # Once over budget, latency counts as a soft trigger until p95 is below this share of the budget
    # (a Schmitt trigger): a p95 hovering at the budget under steady overload must not flap headroom.
    latency_clear_fraction: float = 0.8
    backlog_fraction: float = 0.8       # queue at least this full: a soft trigger
    confirm_evaluations: int = 3        # consecutive evaluations that confirm a soft condition
    require_gpu: bool = False

    def __post_init__(self) -> None:
        for name in ("evaluate_interval_s", "canary_interval_s", "canary_deadline_s", "canary_hang_s",
                     "utilization_high_for_s", "temperature_high_for_s", "latency_budget_ms",
                     "latency_window_s", "temperature_critical_for_s", "temperature_recover_for_s"):
            settings.positive(f"health.{name}", getattr(self, name))
        if self.canary_hang_s <= self.canary_deadline_s:
            raise ConfigError(f"health.canary_hang_s={self.canary_hang_s}: must exceed "
                              f"health.canary_deadline_s={self.canary_deadline_s}")
        if self.temperature_recover_c >= self.temperature_critical_c:
            raise ConfigError(f"health.temperature_recover_c={self.temperature_recover_c}: must be below "
                              f"health.temperature_critical_c={self.temperature_critical_c}")
        settings.in_range("health.utilization_high_percent", self.utilization_high_percent, 0, 100)
        settings.in_range("health.memory_high_fraction", self.memory_high_fraction, 0, 1)
        settings.in_range("health.backlog_fraction", self.backlog_fraction, 0, 1)
        settings.in_range("health.latency_clear_fraction", self.latency_clear_fraction, 0, 1)
        settings.at_least("health.memory_trend_samples", self.memory_trend_samples, 2)
        settings.at_least("health.confirm_evaluations", self.confirm_evaluations, 1)
        settings.at_least("health.min_free_memory_bytes", self.min_free_memory_bytes, 0)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a worker needs to run; see `eagleeye-detector --help` and docs/configuration.md."""

    listen: str = "127.0.0.1:50051"
    metrics_listen: str = ""            # HOST:PORT for Prometheus /metrics; "": none
    health_listen: str = ""             # HOST:PORT, plaintext, grpc.health.v1 only (kubelet probes); "": none
    tls_cert: Path | None = None        # with tls_key: serve TLS on `listen`
    tls_key: Path | None = None
    tls_client_ca: Path | None = None   # require client certificates signed by this CA (mTLS)
    device: str = "auto"
    model: Path | None = None           # None: the embedded default model
    half: bool = False
    # torch (.pt2, TorchScript) or onnxruntime (.onnx); auto: by the model file's suffix (torch for the
    # embedded model). onnxruntime without a model: the embedded model's ONNX export.
    backend: str = "auto"
    ort_trt: bool = False               # onnxruntime on CUDA: try TensorRT first
    # torch backend, .pt2: torch.compile the model before serving, one static graph per batch size of
    # 1, 2, 4, ... max_batch (a batch runs padded to the next); start-up takes that much longer.
    compile: bool = False
    worker_id: str = ""                 # "": host:port once bound
    torch_threads: int = DEFAULT_TORCH_THREADS
    max_batch: int = 8
    # Batches in flight at once, each on its own thread (and, on CUDA, its own CUDA stream), so that one
    # batch's host work and copies overlap the next one's forward pass. 0: auto, 2 on CUDA and 1 on the
    # CPU (where a second batch would only take the cores the first one's intra-op threads use).
    inference_threads: int = 0
    # 0: adaptive batching. The model never waits with frames queued: frames that arrive while a batch
    # runs share the next one, so batches grow with the load and a lone frame goes straight in. A fixed
    # wait (a few ms, Triton's style) only delays frames while the model sits idle.
    max_queue_delay_ms: float = 0.0
    max_queue: int = 64
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 100
    max_image_bytes: int = names.DEFAULT_MAX_IMAGE_BYTES
    # 4K is the largest input a 256-320 px model gains anything from; a 4096x4096 RGB image decodes to
    # 48 MiB. Larger images (by header, before decoding) are refused.
    max_image_pixels: int = names.DEFAULT_MAX_IMAGE_PIXELS
    # Encoded bytes admitted to decoding at once; beyond it RESOURCE_EXHAUSTED (busy: try another
    # worker). Four largest images: decoding runs on two threads, so two more wait.
    max_decode_bytes: int = 128 * MiB
    max_stream_inflight: int = 16       # frames of one stream in the worker at once
    # What one peer, or all peers together, may hold open. A router opens one worker stream per client
    # stream, so the stream bound matches the router's.
    max_concurrent_rpcs: int = 256      # unary calls at once (Detect, GetModelInfo)
    max_concurrent_streams: int = 1000  # DetectStream calls at once
    max_watch_streams: int = 100        # health Watch streams at once (a router holds 2 per worker)
    # ... and from one client (address host, with mTLS also its identity): room for 4 routers on one
    # host, while one client can no longer take every slot and lock routers out (issue 20).
    max_watch_streams_per_peer: int = 8
    # Client connections open at once, on each listener (routers hold a few each; zero-hop clients one).
    max_connections: int = 4096
    shutdown_grace_s: float = 10.0
    fault_injection: bool = False       # the --fault-injection flag only, and only on a loopback `listen`
    log_level: str = "info"
    log_format: str = "auto"           # json, text, or auto (text on a terminal, JSON otherwise)
    health: HealthConfig = field(default_factory=HealthConfig)

    def __post_init__(self) -> None:
        parse_host_port("listen", self.listen)
        if self.metrics_listen:
            parse_host_port("metrics_listen", self.metrics_listen)
        if self.health_listen:
            parse_host_port("health_listen", self.health_listen)
        tls.check_server_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.device not in ("auto", "cpu") and not _is_cuda(self.device):
            raise ConfigError(f"device={self.device!r}: must be auto, cpu or cuda:N")
        settings.at_least("torch_threads", self.torch_threads, 1)
        settings.in_range("max_batch", self.max_batch, 1, 64)
        settings.in_range("inference_threads", self.inference_threads, 0, 8)
        settings.at_least("max_queue", self.max_queue, 1)
        settings.at_least("max_queue_delay_ms", self.max_queue_delay_ms, 0)
        settings.in_range("score_threshold", self.score_threshold, 0, 1)
        if not 0 < self.iou_threshold <= 1:
            raise ConfigError(f"iou_threshold={self.iou_threshold}: must be in (0, 1]")
        settings.in_range("max_detections", self.max_detections, 1, 1000)
        settings.at_least("max_image_bytes", self.max_image_bytes, 1024)
        settings.at_least("max_image_pixels", self.max_image_pixels, 64 * 64)
        settings.at_least("max_stream_inflight", self.max_stream_inflight, 1)
        settings.at_least("max_decode_bytes", self.max_decode_bytes, self.max_image_bytes)
        for name in ("max_concurrent_rpcs", "max_concurrent_streams", "max_watch_streams",
                     "max_watch_streams_per_peer", "max_connections"):
            settings.at_least(name, getattr(self, name), 1)
        settings.at_least("shutdown_grace_s", self.shutdown_grace_s, 0)
        settings.one_of("log_level", self.log_level, LOG_LEVELS)
        settings.one_of("log_format", self.log_format, LOG_FORMATS)
        if self.fault_injection and not is_loopback(parse_host_port("listen", self.listen)[0]):
            raise ConfigError(f"fault_injection: served only on a loopback listen address (127.0.0.1, ::1, "
                              f"localhost), not listen={self.listen!r}; it lets any caller break this worker")
        if self.model is not None and not self.model.is_file():
            raise ConfigError(f"model={str(self.model)!r}: no such file")
        settings.one_of("backend", self.backend, BACKENDS)
        onnx_file = self.model is not None and self.model.suffix == ".onnx"
        if self.backend == "torch" and onnx_file:
            raise ConfigError(f"backend='torch': cannot load {str(self.model)!r}; use backend onnxruntime for .onnx")
        if self.backend == "onnxruntime" and self.model is not None and not onnx_file:
            raise ConfigError(f"backend='onnxruntime': model={str(self.model)!r} is not a .onnx file")
        if self.compile and self.model_backend() != "torch":
            raise ConfigError("compile: torch.compile is the torch backend's; ONNX Runtime optimises its graph "
                              "itself (and --ort-trt builds TensorRT engines)")
        if self.compile and self.model is not None and self.model.suffix != ".pt2":
            raise ConfigError(f"compile: needs a torch.export (.pt2) model, not {str(self.model)!r}")
        if self.model_backend() == "onnxruntime" and self.half:
            raise ConfigError("half: fp16 is the torch backend's; with onnxruntime export an fp16 model, "
                              "or use --ort-trt (TensorRT runs fp16 itself)")

    def inference_threads_on(self, device: str) -> int:
        """inference_threads, with auto resolved for the device the model runs on."""
        if self.inference_threads:
            return self.inference_threads
        return 2 if device.startswith("cuda") else 1

    def model_backend(self) -> str:
        """torch or onnxruntime, with auto resolved."""
        if self.backend != "auto":
            return self.backend
        return "onnxruntime" if self.model is not None and self.model.suffix == ".onnx" else "torch"


def _is_cuda(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def load(file: Path | None, flags: dict[str, Any], env: Mapping[str, str] | None = None) -> DetectorConfig:
    """Build the config: defaults, then the TOML file, then EAGLEEYE_... variables, then flags (None = not given)."""
    # Fault injection lets any caller break the worker: only a deliberate flag turns it on.
    return settings.load(DetectorConfig, file, flags, nested={"health": HealthConfig},
                         nested_flags={"require_gpu": "health"}, flag_only=("fault_injection",), env=env)
