"""How the library dials: plaintext, TLS or mTLS (`Tls`), a router or worker at HOST:PORT, or
xds:///NAME through the router's control plane (zero-hop), in one place.

No argparse here: the command-line options that fill these in are client/args.py.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import grpc

from eagleeye.api import names
from eagleeye.common import grpcopts

# Client interceptors added to every channel (the trace context, when tracing is configured).
INTERCEPTORS: list[Any] = []


class UsageError(ValueError):
    """A wrong combination of options or an unusable file: one line, exit code 2."""


@dataclass(frozen=True)
class Tls:
    """What a TLS channel needs: the CA to trust, an optional client certificate, a name override."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None


def channel(target: str, tls: Tls | None = None) -> grpc.aio.Channel:
    """A channel to HOST:PORT or xds:///NAME, plaintext or TLS, that carries large frames (and the trace,
    when tracing)."""
    options: list[tuple[str, Any]] = [*grpcopts.message_size_options(names.CLIENT_MAX_MESSAGE_BYTES)]
    if target.startswith(XDS_SCHEME):
        options += XDS_CHANNEL_OPTIONS
    interceptors = list(INTERCEPTORS) or None
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                               certificate_chain=tls.cert)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


# -- zero-hop mode: the router's decisions over xDS, the workers called directly ----------------------

XDS_SCHEME = "xds:///"
BOOTSTRAP_ENV = ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")
# gRPC waits ~1 s before reconnecting to an address it lost; a worker back from a restart would sit
# out that second after the router already offers it again.
XDS_CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.initial_reconnect_backoff_ms", 100),
                                              ("grpc.min_reconnect_backoff_ms", 100)]


def xds_bootstrap(server: str, node_id: str) -> dict[str, Any]:
    """gRPC's xDS bootstrap for the router's control plane at HOST:PORT (plaintext).

    `ignore_resource_deletion`: should a control plane ever answer without a resource, clients keep
    the one they have instead of failing every call. `node.locality`: grpc-js refuses a bootstrap
    without one ("locality field missing in node element"); an empty one says "no zone" to every gRPC.
    """
    return {"xds_servers": [{"server_uri": server, "channel_creds": [{"type": "insecure"}],
                             "server_features": ["xds_v3", "ignore_resource_deletion"]}],
            "node": {"id": node_id, "cluster": "eagleeye-clients", "locality": {}}}


def default_node_id() -> str:
    """A node id that tells operators which client it is (`eagleeye status` lists them)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def use_xds(target: str, xds_server: str | None) -> None:
    """Check --target and --xds-server together; put the bootstrap in the environment before any channel."""
    if target.startswith(XDS_SCHEME):
        if xds_server:
            os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(xds_bootstrap(xds_server, default_node_id()))
        elif not any(os.environ.get(k) for k in BOOTSTRAP_ENV):
            raise UsageError(f"--target {target} needs --xds-server HOST:PORT (the router's --xds-listen address), "
                             "or a bootstrap in GRPC_XDS_BOOTSTRAP")
    elif xds_server:
        raise UsageError("--xds-server needs --target xds:///NAME (e.g. xds:///eagleeye-detector)")
