"""One trace spans client -> router -> detector, with the worker's decode, queue and inference as spans.

The test is the OTLP collector: a gRPC TraceService on 127.0.0.1 that every process exports to.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.otlp_sink import OtlpSink, Span
from eagleeye.harness.processes import BIN, LocalCluster
from eagleeye.scenes import encode_jpeg, make_scene

pytestmark = pytest.mark.integration


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpSink]:
    c = OtlpSink()
    server, endpoint = c.start()
    # Child processes inherit these: the standard OpenTelemetry variables, nothing of our own.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    yield c
    server.stop(None)


def test_one_trace_from_client_through_router_to_inference(collector: OtlpSink, tmp_path: Path) -> None:
    cluster = LocalCluster()
    try:
        cluster.wait_normal()
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
