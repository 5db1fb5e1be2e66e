"""OpenTelemetry for both services: metrics (Prometheus over HTTP, OTLP when configured) and traces.

`--metrics-listen HOST:PORT` serves Prometheus text on /metrics. OTLP export follows the standard
environment variables: OTEL_EXPORTER_OTLP_ENDPOINT (or the _METRICS_/_TRACES_ variants) turns it on,
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the process. Without an OTLP endpoint no spans are
recorded, so tracing costs nothing; trace context still passes through the router untouched.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource

from eagleeye.api.names import DETECTOR_SERVICE
from eagleeye.common.cli import ConfigError, parse_host_port
from eagleeye.common.logs import event

log = logging.getLogger("eagleeye.telemetry")


# Latency buckets in seconds: a 2 ms CPU health check to a 10 s stall, dense where inference lives.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def tracing_configured() -> bool:
    """Whether the standard environment asks for OTLP trace export."""
    return _otlp("TRACES")


def _otlp(signal: str) -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or
                os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


@dataclass
class Telemetry:
    """The meter and tracer a service records with, and where its metrics are served."""

    meter: metrics.Meter
    tracer: trace.Tracer
    tracing: bool
    metrics_address: str | None
    _providers: tuple[Any, ...] = ()
    _server: Any = None

    def server_interceptors(self) -> list[Any]:
        """gRPC aio server interceptors that continue the caller's trace on Detector calls.

        Only the Detector service is traced: health probes would flood the traces, and the
        instrumentation cannot wrap handlers that stream with context.write() (grpc_health's Watch).
        """
        if not self.tracing:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        return [aio_server_interceptor(filter_=filters.service_name(DETECTOR_SERVICE))]  # type: ignore[no-untyped-call]

    def client_interceptors(self) -> list[Any]:
        """gRPC aio client interceptors that carry the current trace to the callee (none without tracing)."""
        if not self.tracing:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

        return list(aio_client_interceptors(  # type: ignore[no-untyped-call]
            filter_=filters.service_name(DETECTOR_SERVICE)))

    def span_between(self, name: str, start_monotonic: float, end_monotonic: float, **attributes: Any) -> None:
        """A finished child span of the current one, for an interval measured with time.monotonic()."""
        if not self.tracing:
            return
        offset_ns = time.time_ns() - time.monotonic_ns()
        span = self.tracer.start_span(name, start_time=int(start_monotonic * 1e9) + offset_ns, attributes=attributes)
        span.end(end_time=int(end_monotonic * 1e9) + offset_ns)

    def shutdown(self) -> None:
        """Flush exporters and stop the metrics server."""
        for provider in self._providers:
            provider.shutdown()
        if self._server is not None:
            self._server.shutdown()


def disabled() -> Telemetry:
    """No metrics served, no spans: for library use and tests."""
    return Telemetry(meter=metrics.NoOpMeter("eagleeye"), tracer=trace.NoOpTracer(), tracing=False,
                     metrics_address=None)


def setup(service: str, instance: str, metrics_listen: str | None) -> Telemetry:
    """Metrics readers (Prometheus, OTLP) and, with an OTLP endpoint, a tracer provider."""
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service),
                                SERVICE_INSTANCE_ID: instance})
    readers: list[MetricReader] = []
    server, address = None, None
    if metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = parse_host_port("metrics_listen", metrics_listen)
        try:
            server, _ = start_http_server(port, addr=host)
        except OSError as e:
            raise ConfigError(f"metrics_listen={metrics_listen!r}: cannot bind ({e.strerror})") from None
        address = f"{host}:{server.server_port}"
        readers.append(PrometheusMetricReader())
    if _otlp("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    views = [View(instrument_name="*_duration", aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)),
             View(instrument_name="*_event_loop_lag", aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)),
             View(instrument_name="*_batch_size", aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS))]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=views)
    providers: list[Any] = [meter_provider]
    # Nobody reads metrics: instruments that record nothing (the SDK's cost on every call is
    # measurable in the router's CPU per RPC).
    meter = meter_provider.get_meter("eagleeye") if readers else metrics.NoOpMeter("eagleeye")
    tracing = _otlp("TRACES")
    if tracing:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        providers.append(tracer_provider)
    event(log, "telemetry", metrics=address, otlp_metrics=_otlp("METRICS"), otlp_traces=tracing)
    return Telemetry(meter=meter, tracer=trace.get_tracer("eagleeye"),
                     tracing=tracing, metrics_address=address, _providers=tuple(providers), _server=server)
