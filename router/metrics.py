"""The router's metrics (OpenTelemetry instruments; names as Prometheus shows them in the README)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from eagleeye.router.policy import TRANSITION_CAUSES, State


class RouterMetrics:
    """Counters and histograms the proxy and controller record; gauges read when scraped."""

    def __init__(self, meter: metrics.Meter, *, weights: Callable[[], dict[str, float]],
                 ready: Callable[[], dict[str, bool]], state: Callable[[], State],
                 health: Callable[[], dict[str, bool]], streams: Callable[[], int],
                 backends: Sequence[str] = ("primary", "standby"),
                 outstanding: Callable[[], dict[str, int]] = dict,
                 reported_queue: Callable[[], dict[str, float]] = dict) -> None:
        # Counted here and read when scraped: a plain dict increment per call, where an SDK counter's
        # add() costs tens of microseconds of the router's CPU.
        self._request_counts: dict[tuple[str, str], int] = {}
        self._duration_attrs: dict[str, dict[str, str]] = {}

        def observe_requests(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"method": m, "code": c}) for (m, c), n in list(self._request_counts.items())]

        meter.create_observable_counter(
            "eagleeye_router_requests", [observe_requests], unit="1",
            description="Calls answered to clients (stream frames count one each), by method and gRPC status code")
        self._duration = meter.create_histogram("eagleeye_router_request_duration", unit="s",
                                                description="Time a call or stream frame spent in the router")
        self._switches = meter.create_counter("eagleeye_router_switches", unit="1",
                                              description="Policy transitions, by new state and cause")
        self._detection = meter.create_histogram(
            "eagleeye_router_failover_detection_duration", unit="s",
            description="Failure-driven switches: from the last moment the backend was seen healthy to the switch")
        self._retries = meter.create_counter("eagleeye_router_retries", unit="1",
                                             description="Unary calls retried on the other backend, by failed backend")
        self._hedges = meter.create_counter(
            "eagleeye_router_hedges", unit="1",
            description="Unary calls also sent to the other backend after the hedge delay, by slow backend")
        self._refusals = meter.create_counter(
            "eagleeye_router_retry_budget_refusals", unit="1",
            description="Hedges, retries and stream side tries the retry budget refused, by kind")
        self._migrations = meter.create_counter("eagleeye_router_stream_migrations", unit="1",
                                                description="Streams moved between backends, by reason")
        self._replayed = meter.create_counter("eagleeye_router_stream_replayed_frames", unit="1",
                                              description="Stream frames sent again to another backend after a failure")
        self._defaults = meter.create_counter(
            "eagleeye_router_request_defaults_applied", unit="1",
            description="Requests and stream frames the router filled in defaults for (request_defaults), by state")

        # Counters with known labels start at 0, so rates and alerts see a series before the first event.
        for backend in backends:
            self._retries.add(0, {"backend": backend})
            self._hedges.add(0, {"backend": backend})
        for kind in ("hedge", "retry", "side_try"):
            self._refusals.add(0, {"kind": kind})
        self._replayed.add(0)
        for reason in ("failure", "rebalance"):
            self._migrations.add(0, {"reason": reason})
        for to_state, cause in TRANSITION_CAUSES:
            self._switches.add(0, {"to_state": to_state.value, "cause": cause})

        def observe_weights(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(w / 100, {"backend": b}) for b, w in weights().items()]

        def observe_ready(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(1 if ok else 0, {"backend": b}) for b, ok in ready().items()]

        def observe_state(_: CallbackOptions) -> Iterable[Observation]:
            current = state()
            return [Observation(1 if s is current else 0, {"state": s.value}) for s in State]

        def observe_health(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(1 if ok else 0, {"service": name}) for name, ok in health().items()]

        meter.create_observable_gauge("eagleeye_router_weight_ratio", [observe_weights], unit="1",
                                      description="Share of new traffic per backend, 0-1")
        meter.create_observable_gauge("eagleeye_router_backend_ready", [observe_ready], unit="1",
                                      description="1 when the backend is ready by every signal")
        meter.create_observable_gauge("eagleeye_router_state", [observe_state], unit="1",
                                      description="1 for the router's current state")
        meter.create_observable_gauge("eagleeye_health_status", [observe_health], unit="1",
                                      description="1 when the health service name is SERVING, else 0")
        meter.create_observable_gauge(
            "eagleeye_router_backend_outstanding",
            [lambda _: [Observation(n, {"backend": b}) for b, n in outstanding().items()]], unit="1",
            description="Calls and stream legs the router has open on the backend now (its load, as placed)")
        meter.create_observable_gauge(
            "eagleeye_router_backend_reported_queue",
            [lambda _: [Observation(q, {"backend": b}) for b, q in reported_queue().items()]], unit="1",
            description="Frames waiting or in the model, as the worker's own load report last said (all callers)")
        meter.create_observable_gauge("eagleeye_router_active_streams", [lambda _: [Observation(streams())]],
                                      unit="1", description="Client DetectStreams open now")

    def request(self, method: str, code: str, seconds: float | None = None) -> None:
        key = (method, code)
        self._request_counts[key] = self._request_counts.get(key, 0) + 1
        if seconds is not None:
            attrs = self._duration_attrs.get(method)
            if attrs is None:
                attrs = self._duration_attrs[method] = {"method": method}
            self._duration.record(seconds, attrs)

    def switch(self, to_state: str, cause: str, detection_ms: float | None) -> None:
        self._switches.add(1, {"to_state": to_state, "cause": cause})
        if detection_ms is not None:
            self._detection.record(detection_ms / 1000)

    def backend_added(self, backend: str) -> None:
        """A worker joined: its counters start at 0 like the first ones'."""
        self._retries.add(0, {"backend": backend})
        self._hedges.add(0, {"backend": backend})

    def retry(self, failed_backend: str) -> None:
        self._retries.add(1, {"backend": failed_backend})

    def hedge(self, slow_backend: str) -> None:
        self._hedges.add(1, {"backend": slow_backend})

    def budget_refused(self, kind: str) -> None:
        self._refusals.add(1, {"kind": kind})

    def replayed(self, frames: int) -> None:
        self._replayed.add(frames)

    def defaults_applied(self, state: str) -> None:
        self._defaults.add(1, {"state": state})

    def migration(self, reason: str) -> None:
        self._migrations.add(1, {"reason": reason})
