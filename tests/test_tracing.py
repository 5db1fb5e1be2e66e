"""One trace spans client -> router -> detector, with the worker's decode, queue and inference as spans.

The test is the OTLP collector: a gRPC TraceService on 127.0.0.1 that every process exports to.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from client.processes import BIN, LocalCluster
from detector.defaultmodel.scenes import make_scene
from detector.imaging import encode_jpeg

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.changed:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(Span(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                               s.parent_span_id.hex()))
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def chain(self, span: Span) -> list[Span]:
        """The span and its ancestors, nearest first."""
        by_id = {s.span_id: s for s in self.spans}
        out = [span]
        while out[-1].parent_id and out[-1].parent_id in by_id:
            out.append(by_id[out[-1].parent_id])
        return out


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    c = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # Child processes inherit these: the standard OpenTelemetry variables, nothing of our own.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    yield c
    server.stop(None)


def test_one_trace_from_client_through_router_to_inference(collector: Collector, tmp_path: Path) -> None:
    cluster = LocalCluster()
    try:
        cluster.wait_ready()
        cluster.router.wait_for_event("switch", to_state="NORMAL")
        image = tmp_path / "frame.jpg"
        image.write_bytes(encode_jpeg(make_scene(9, size=(320, 240)).image))
        out = subprocess.run([str(BIN / "eagleeye"), "detect", "--target", cluster.router_address, str(image)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

        def complete() -> list[Span] | None:
            for span in collector.spans:
                if span.name == "inference":
                    chain = collector.chain(span)
                    if chain[-1].service == "eagleeye":
                        return chain
            return None

        with collector.changed:
            assert collector.changed.wait_for(lambda: complete() is not None, 30), \
                sorted({(s.service, s.name) for s in collector.spans})
            chain = complete()
    finally:
        cluster.stop()
    assert chain is not None
    services = [s.service for s in chain]
    assert services[0] == "eagleeye-detector" and "eagleeye-router" in services and services[-1] == "eagleeye"
    assert len({s.trace_id for s in chain}) == 1
    assert services.index("eagleeye-router") > services.index("eagleeye-detector")
    names = {s.name for s in collector.spans if s.trace_id == chain[0].trace_id}
    assert {"decode", "queue", "inference"} <= names
    assert any("Detect" in n for n in names)
