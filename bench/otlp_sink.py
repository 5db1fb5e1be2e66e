"""A minimal OTLP trace receiver on 127.0.0.1: what tests and benchmarks export spans to."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
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

    def start(self) -> tuple[grpc.Server, str]:
        """Serve on a free port of 127.0.0.1; returns the server and its endpoint URL."""
        server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, f"http://127.0.0.1:{port}"
