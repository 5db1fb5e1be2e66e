"""Imported by the client tool before anything loads grpc: keep gRPC core's own log lines off the terminal.

A failed TLS handshake makes gRPC core print an INFO line of its own ("Handshake failed with error
SSL_ERROR_SSL ...") besides the one-line error the tool prints, which already carries that text.
gRPC reads GRPC_VERBOSITY once, as it loads; an operator's own setting is kept. The variable is
removed again, so processes the tool starts (the demo's servers) log as they would.
"""

from __future__ import annotations

import os

if "GRPC_VERBOSITY" not in os.environ:
    os.environ["GRPC_VERBOSITY"] = "ERROR"
    try:
        import grpc  # noqa: F401
    finally:
        del os.environ["GRPC_VERBOSITY"]
