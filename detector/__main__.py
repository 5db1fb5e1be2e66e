"""eagleeye-detector: a detection worker with GPU-aware standard gRPC health."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from eagleeye.api import names
from eagleeye.api.detector.v1 import detector_pb2_grpc
from eagleeye.api.names import DETECTOR_SERVICE
from eagleeye.common import grpcopts
from eagleeye.common import telemetry as telemetry_mod
from eagleeye.common.cli import ConfigError, OneLineParser, parse_host_port, probe_bind, run_service
from eagleeye.common.grpcguard import guarded
from eagleeye.common.health import HealthServicer
from eagleeye.common.loadreport import Counters, LoadReporter
from eagleeye.common.logs import LOG_FORMATS, event
from eagleeye.common.looplag import LoopLagMonitor
from eagleeye.common.serving import (
    HEALTH_SERVICE,
    OWN_FILES,
    add_listener,
    health_server,
    raise_open_file_limit,
    serve_reflection,
)
from eagleeye.common.tls import ServerTls
from eagleeye.detector import config as config_mod
from eagleeye.detector.batcher import Batcher, InferenceHooks
from eagleeye.detector.config import DetectorConfig
from eagleeye.detector.contract import Detector, ModelError
from eagleeye.detector.gpu import InjectedSource, NoGpu, SwitchableSource, open_source
from eagleeye.detector.imaging import ImageLimits, letterbox
from eagleeye.detector.metrics import DetectorMetrics
from eagleeye.detector.monitor import Golden, HealthPublisher, Monitor
from eagleeye.detector.pipeline import LatencyWindow, Pipeline
from eagleeye.detector.requestview import with_request_views
from eagleeye.detector.server import Defaults, DetectorServicer

log = logging.getLogger("eagleeye.detector")
PROG = "eagleeye-detector"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, add_version=True,
                      epilog="Settings not given as flags come from --config (TOML), then defaults; "
                             "see docs/configuration.md.")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (port 0: any free port)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port)")
    p.add_argument("--health-listen", metavar="HOST:PORT",
                   help="also serve grpc.health.v1 alone, in plaintext, here (for kubelet probes when --listen is TLS)")
    p.add_argument("--tls-cert", metavar="FILE", type=Path, help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="FILE", type=Path, help="... and this PEM private key")
    p.add_argument("--tls-client-ca", metavar="FILE", type=Path,
                   help="require client certificates signed by this PEM CA (mTLS)")
    p.add_argument("--device", metavar="auto|cpu|cuda:N", help="where the model runs (default auto)")
    p.add_argument("--model", metavar="FILE", type=Path,
                   help="a .pt2 (torch.export) or TorchScript model file (default: the embedded model)")
    p.add_argument("--config", metavar="FILE", type=Path, help="a TOML file with any of the settings")
    p.add_argument("--half", action="store_const", const=True, help="run the model in fp16 (CUDA only)")
    p.add_argument("--compile", action="store_const", const=True,
                   help="torch backend, .pt2 models: compile the model with torch.compile before serving, one "
                        "graph per batch size 1, 2, 4, ... --max-batch (readiness waits: about 20 s per size on "
                        "2 CPU cores the first time, less from inductor's cache)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"],
                   help="torch (.pt2, TorchScript) or onnxruntime (.onnx); default auto: by the model file")
    p.add_argument("--ort-trt", action="store_const", const=True,
                   help="onnxruntime on CUDA: TensorRT execution provider first")
    p.add_argument("--worker-id", metavar="NAME", help="name reported in responses (default HOST:PORT)")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help=f"intra-op threads for CPU inference (default {config_mod.DEFAULT_TORCH_THREADS})")
    p.add_argument("--max-batch", type=int, metavar="N", help="largest dynamic batch (default 8)")
    p.add_argument("--inference-threads", type=int, metavar="N",
                   help="batches in flight at once, each with its own thread and CUDA stream "
                        "(default 0: auto, 2 on CUDA, 1 on the CPU)")
    p.add_argument("--max-queue-delay-ms", type=float, metavar="MS",
                   help="how long a frame waits for others to share its batch while the model is idle "
                        "(default 0: adaptive, batches form while the model runs)")
    p.add_argument("--max-queue", type=int, metavar="N",
                   help="frames waiting for inference before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--shutdown-grace-s", type=float, metavar="S",
                   help="time in-flight work gets to finish after SIGTERM (default 10)")
    p.add_argument("--require-gpu", action="store_const", const=True,
                   help="readiness NOT_SERVING when no GPU is usable")
    p.add_argument("--fault-injection", action="store_const", const=True,
                   help="serve the FaultInjection service (tests and demos only; needs a loopback --listen)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=list(LOG_FORMATS),
                   help="log lines as JSON or as text (default auto: text on a terminal, JSON otherwise)")
    return p


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The torch device to use and, for CUDA, the GPU's UUID for NVML."""
    import torch

    if requested == "auto":
        requested = "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu", None
    index = int(requested.partition(":")[2])
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ConfigError(f"device={requested!r}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} visible)")
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return requested, f"GPU-{uuid}" if uuid else None


def inference_threads(cfg: DetectorConfig, device: str, model: Detector) -> int:
    """Batches to run at once: the setting, or 1 for a model that writes its own state in forward."""
    wanted = cfg.inference_threads_on(device)
    if wanted > 1 and not getattr(model, "concurrent", True):
        why = getattr(model, "serial_reason", "") or "model writes its own buffers in forward"
        event(log, f"{why}: one batch at a time", logging.WARNING, inference_threads=wanted)
        return 1
    return wanted


def load_and_warm(cfg: DetectorConfig, device: str) -> tuple[Detector, Any, Golden]:
    """Load the model, run warm-up batches, and record the canary's golden answer (blocking)."""
    import numpy as np
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH
    from eagleeye.scenes import canary_image

    torch.set_num_threads(cfg.torch_threads)
    model: Detector
    if cfg.model_backend() == "onnxruntime":
        from eagleeye.detector.onnxmodel import OnnxDetector

        model = OnnxDetector(cfg.model or DEFAULT_ONNX_PATH, device, cfg.ort_trt, threads=cfg.torch_threads)
    else:
        from eagleeye.detector.model import batch_buckets, load_model

        torch_model = load_model(cfg.model or DEFAULT_MODEL_PATH, device, half=cfg.half and device.startswith("cuda"))
        if cfg.compile:
            event(log, "compiling the model (torch.compile); readiness waits", batch_sizes=list(
                batch_buckets(cfg.max_batch)))
            torch_model.compile(cfg.max_batch, lambda size, s: event(
                log, "compiled", batch_size=size, seconds=round(s, 1)))
        model = torch_model
    canary, _ = letterbox(canary_image(), model.meta.input_size)
    for size in sorted({1, cfg.max_batch}):
        out = model.infer(np.stack([canary] * size))
    golden = Golden.of(out[0])
    # torch, the model and gRPC leave some 340,000 objects that live as long as the process: a full
    # collection of them holds the GIL, so the event loop (health answers) too, for ~160 ms on a small
    # machine. Collected once here, while loading (the loop-lag warnings are not on yet), then kept out
    # of the collector's way for good.
    gc.collect()
    gc.freeze()
    return model, canary, golden


async def serve(cfg: DetectorConfig) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    frame_limit = cfg.max_image_bytes + names.MESSAGE_OVERHEAD_BYTES
    host, wanted = parse_host_port("listen", cfg.listen)
    probe_bind("listen", host, wanted)
    tel = telemetry_mod.setup("eagleeye-detector", cfg.worker_id or cfg.listen, cfg.metrics_listen or None)
    # A router carries all its calls to a worker over a few connections: a connection may hold all the
    # worker's calls, streams and Watches, but no more.
    per_connection = grpcopts.streams_per_connection(cfg.max_concurrent_rpcs + cfg.max_concurrent_streams
                                                     + cfg.max_watch_streams)
    listeners = 1 + bool(cfg.health_listen)
    raise_open_file_limit(listeners * cfg.max_connections + OWN_FILES)
    server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS, *grpcopts.message_size_options(frame_limit),
                                      *per_connection, *grpcopts.connection_cap(cfg.max_connections)],
                             interceptors=tel.server_interceptors())
    tls = ServerTls.of(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    port = add_listener(server, "listen", cfg.listen, tls)
    worker_id = cfg.worker_id or f"{socket.gethostname()}:{port}"

    health = HealthServicer(cfg.max_watch_streams, cfg.max_watch_streams_per_peer)
    health_pb2_grpc.add_HealthServicer_to_server(health, guarded(server))
    probes: grpc.aio.Server | None = None
    if cfg.health_listen:
        probes, health_port = health_server(health, cfg.health_listen, cfg.max_watch_streams_per_peer,
                                            cfg.max_connections)
    publisher = HealthPublisher(health)
    defaults = Defaults(cfg.score_threshold, cfg.iou_threshold, cfg.max_detections)
    batcher_ref: list[Batcher] = []
    monitor_ref: list[Monitor] = []
    metrics = DetectorMetrics(tel.meter, queue_depth=lambda: batcher_ref[0].depth if batcher_ref else 0,
                              gpu=lambda: monitor_ref[0].gpu if monitor_ref else None, health=publisher.statuses)
    detector = DetectorServicer(worker_id, defaults, cfg.max_stream_inflight, metrics,
                                max_rpcs=cfg.max_concurrent_rpcs, max_streams=cfg.max_concurrent_streams)
    detector_pb2_grpc.add_DetectorServicer_to_server(detector, with_request_views(guarded(server)))

    def load_counters() -> Counters:
        b, gpu = batcher_ref[0] if batcher_ref else None, monitor_ref[0].gpu if monitor_ref else None
        errors = detector.worker_errors()
        return Counters(busy_s=b.busy_seconds() if b else 0.0, answered=(b.frames if b else 0) + errors,
                        errors=errors, queue=b.in_flight if b else 0, capacity=cfg.max_queue,
                        gpu=None if gpu is None or gpu.gpu_lost else gpu.utilization_percent / 100)

    detector.load = LoadReporter(load_counters)
    guarded(server).add_generic_rpc_handlers((detector.load.handler(),))

    # Listen before importing torch and loading the model: probes get answers (liveness SERVING,
    # readiness NOT_SERVING) during the seconds that takes.
    latency = LatencyWindow(cfg.health.latency_window_s)
    hooks: InferenceHooks | None = None
    telemetry = SwitchableSource(NoGpu("device not opened yet"))
    if cfg.fault_injection:
        from eagleeye.api.detector.testing.v1 import fault_injection_pb2, fault_injection_pb2_grpc
        from eagleeye.detector.faults import FaultHooks, FaultInjectionServicer

        hooks = FaultHooks()
    monitor = Monitor(cfg.health, telemetry, publisher, latency)
    monitor_ref.append(monitor)
    services = [DETECTOR_SERVICE, HEALTH_SERVICE]
    if cfg.fault_injection:
        assert isinstance(hooks, FaultHooks)
        fault_injection_pb2_grpc.add_FaultInjectionServicer_to_server(
            FaultInjectionServicer(hooks, telemetry, lambda: batcher_ref[0] if batcher_ref else None,
                                   monitor.wake), guarded(server))
        services.append(fault_injection_pb2.DESCRIPTOR.services_by_name["FaultInjection"].full_name)
    serve_reflection(server, *services)

    await server.start()
    if probes is not None:
        await probes.start()
    event(log, "listening", address=f"{host}:{port}", worker=worker_id, metrics=tel.metrics_address,
          tls="mTLS" if tls and tls.client_ca else "TLS" if tls else "off",
          health=f"{parse_host_port('health_listen', cfg.health_listen)[0]}:{health_port}" if probes else None,
          fault_injection=cfg.fault_injection)
    monitor_task = asyncio.create_task(monitor.run())
    lag = LoopLagMonitor("detector", tel.meter)
    lag.start(warn=False)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def start_model() -> tuple[str, Detector, Any, Golden]:
        device, uuid = await asyncio.to_thread(resolve_device, cfg.device)
        source = await asyncio.to_thread(open_source, device, uuid)
        telemetry.use(InjectedSource(source) if cfg.fault_injection else source)
        event(log, "device", device=device, gpu_telemetry=telemetry.description)
        return (device, *await asyncio.to_thread(load_and_warm, cfg, device))

    loader = asyncio.ensure_future(start_model())
    await asyncio.wait({loader, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    batcher: Batcher | None = None
    if loader.done():
        try:
            device, model, canary, golden = loader.result()
        except ConfigError as e:
            sys.stderr.write(f"{PROG}: invalid configuration: {e}\n")
            exit_code = 2
            stop.set()
        except ModelError as e:
            sys.stderr.write(f"{PROG}: cannot load the model: {e}\n")
            monitor.model_failed(str(e))
            exit_code = 2
            stop.set()
        except Exception as e:  # warm-up failed on this device: a restart may help, say why
            sys.stderr.write(f"{PROG}: model warm-up failed: {e}\n")
            monitor.model_failed(f"warm-up failed: {e}")
            exit_code = 1
            stop.set()
        else:
            batcher = Batcher(model, max_batch=cfg.max_batch, max_delay_s=cfg.max_queue_delay_ms / 1000,
                              max_queue=cfg.max_queue, threads=inference_threads(cfg, device, model), hooks=hooks,
                              on_sticky_error=lambda _: monitor.wake(), on_batch=metrics.batch)
            batcher.start()
            batcher_ref.append(batcher)
            detector.device, detector.half = device, cfg.half and device.startswith("cuda")
            detector.backend = model.backend
            detector.pipeline = Pipeline(model.meta, batcher,
                                         ImageLimits(cfg.max_image_bytes, cfg.max_image_pixels), latency, tel,
                                         max_decode_bytes=cfg.max_decode_bytes)
            monitor.model_ready(batcher, canary, golden, gpu_expected=device.startswith("cuda"),
                                decode_waiting=lambda: detector.pipeline.decode_waiting if detector.pipeline else 0)
            lag.warn = True
            event(log, "model ready", model=model.meta.name, version=model.meta.version, device=device,
                  backend=model.backend,
                  classes=list(model.meta.classes), torch_threads=cfg.torch_threads,
                  inference_threads=batcher.threads)
            await stop.wait()

    # Drain: NOT_SERVING first, so routers move traffic; then finish what was accepted.
    event(log, "draining", grace_s=cfg.shutdown_grace_s)
    monitor.stop()
    await publisher.shutdown()
    detector.draining.set()
    await server.stop(cfg.shutdown_grace_s)
    if probes is not None:
        await probes.stop(None)
    if batcher is not None:
        batcher.close()
        await asyncio.to_thread(batcher.join, 1.0)
    if detector.pipeline is not None:
        detector.pipeline.close()
    monitor_task.cancel()
    await lag.stop()
    telemetry.close()
    tel.shutdown()
    event(log, "stopped", exit_code=exit_code,
          errors={f"{m}/{c}": n for (m, c), n in sorted(detector.errors.items())})
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("torch") is None:  # `pip install .` alone is the router and the client
        sys.stderr.write(f"{PROG}: torch is not installed: the worker needs the detector extra, "
                         "pip install 'eagleeye[detector]' (after the torch build for your CUDA version)\n")
        return 2
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    return run_service(PROG, lambda: config_mod.load(args.config, flags, os.environ), serve)


if __name__ == "__main__":
    sys.exit(main())
