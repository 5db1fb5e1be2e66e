"""Listeners: a port with or without TLS, and the plaintext health-only server kubelet probes use."""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from eagleeye.common import grpcopts
from eagleeye.common.cli import ConfigError, parse_host_port, probe_bind
from eagleeye.common.grpcguard import guarded
from eagleeye.common.health import HealthServicer
from eagleeye.common.logs import event
from eagleeye.common.tls import ServerTls


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's open-file limit to its hard limit (a soft limit of 1024 is common on a host,
    a few hundred connections' worth); returns the limit now in force. `needed`: what the process's
    connection caps allow, plus its own files; a hard limit below it is logged, since past it a peer's
    connections would take the files the process needs for its own work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        event(log, "open-file limit below the connection caps", logging.WARNING, limit=soft, needed=needed,
              hint="raise the hard limit (ulimit -Hn, LimitNOFILE=, the container runtime's nofile) or lower "
                   "max_connections")
    return int(soft)


# Files the process needs for itself beyond its client connections: connections to workers, logs, libraries.
OWN_FILES = 1024


def add_listener(server: grpc.aio.Server, field: str, address: str, tls: ServerTls | None) -> int:
    """Bind `address` on `server` (TLS when given); the bound port, or a ConfigError naming `field`."""
    host, wanted = parse_host_port(field, address)
    probe_bind(field, host, wanted)
    try:
        if tls is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, tls.credentials()))
    except RuntimeError:
        raise ConfigError(f"{field}={address!r}: cannot bind; is another server on this port?") from None


HEALTH_SERVICE = health.SERVICE_NAME
log = logging.getLogger("eagleeye.serving")


def serve_reflection(server: grpc.aio.Server, *services: str) -> None:
    """gRPC server reflection (what grpcurl and grpcui list and describe) for `services`, the ones `server`
    serves, and for itself."""
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME), server)


def health_server(health: HealthServicer, address: str, watches_per_peer: int, max_connections: int,
                  options: Sequence[tuple[str, Any]] = ()) -> tuple[grpc.aio.Server, int]:
    """A plaintext server answering grpc.health.v1 only (the same statuses as the main port), not started.

    For kubelet's gRPC probes, which cannot speak TLS: it reveals statuses and nothing else.
    """
    server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS, ("grpc.max_receive_message_length", 4096),
                                      *grpcopts.streams_per_connection(watches_per_peer),
                                      *grpcopts.connection_cap(max_connections), *options])
    health_pb2_grpc.add_HealthServicer_to_server(health, guarded(server))
    return server, add_listener(server, "health_listen", address, None)
