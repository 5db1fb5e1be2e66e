"""Log lines: JSON for machines, text for people, trace ids inside traced calls."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from eagleeye.common.logs import JsonFormatter, TextFormatter, event


def record(name: str = "listening", **fields: Any) -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, r: logging.LogRecord) -> None:
            captured.append(r)

    logger = logging.getLogger("eagleeye.test")
    logger.addHandler(handler := Keep())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        event(logger, name, **fields)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_json_lines_carry_the_event_and_its_fields() -> None:
    line = json.loads(JsonFormatter().format(record(address="127.0.0.1:1", ready=True)))
    assert line["event"] == "listening" and line["address"] == "127.0.0.1:1" and line["ready"] is True
    assert line["level"] == "info" and line["logger"] == "eagleeye.test" and line["ts"].endswith("Z")
    assert "trace_id" not in line


def test_text_lines_read_as_one_line_with_quoted_values_where_needed() -> None:
    text = TextFormatter().format(record("switch", reason="primary not ready", weights=[95, 5], to="FAILOVER"))
    expected = r'\S+Z INFO    eagleeye\.test: switch  reason="primary not ready" weights="\[95, 5\]" to=FAILOVER'
    assert re.fullmatch(expected, text), text


def test_lines_logged_inside_a_span_carry_its_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("Detect") as span:
        ctx = span.get_span_context()
        line = json.loads(JsonFormatter().format(record()))
        text = TextFormatter().format(record())
    assert line["trace_id"] == format(ctx.trace_id, "032x") and line["span_id"] == format(ctx.span_id, "016x")
    assert f"trace_id={line['trace_id']}" in text
