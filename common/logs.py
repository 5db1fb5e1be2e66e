"""Structured logs on stderr: one JSON object per line (for machines, the default off a terminal), or
one readable line per event (on a terminal, or `--log-format text`). With tracing on, a line logged
inside a traced call carries the call's trace_id and span_id."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

LOG_FORMATS = ("auto", "json", "text")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _trace_ids() -> dict[str, str]:
    """The current span's ids, when a traced call is in progress."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """Formats records as {"ts", "level", "logger", "event", ...fields, [trace_id, span_id]}."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        out.update(_trace_ids())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`2026-12-02T01:02:03.456Z INFO    eagleeye.router: listening  address=127.0.0.1:50050 ...`"""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**(getattr(record, "fields", None) or {}), **_trace_ids()}
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += "  " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def setup(level: str, fmt: str = "auto") -> None:
    """Send all logging to stderr at `level`, as JSON lines or text (auto: text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event with its fields."""
    logger.log(level, name, extra={"fields": fields})
