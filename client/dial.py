"""How the client tool dials: plaintext, TLS (--tls-ca) or mTLS (--tls-cert/--tls-key), in one place.

Every command that dials takes the same options (`add_tls_arguments`). The files are read and
checked before anything is dialed (`tls_from_args`), so a missing or malformed file is one line and
exit code 2, not a handshake failure later.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# Room for a 4K raw frame (3840 x 2160 x 3 = 24.9 MB) and then some.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

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


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS options, identical on every command that dials."""
    g = parser.add_argument_group(
        "TLS", "Without --tls-ca the connection is plaintext. With it, the server's certificate must be signed by "
               "that CA and name the host in --target (or --tls-server-name).")
    g.add_argument("--tls-ca", type=Path, metavar="FILE",
                   help="use TLS and trust server certificates signed by this CA (PEM)")
    g.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="client certificate (PEM) for servers that require one (mTLS); needs --tls-key and --tls-ca")
    g.add_argument("--tls-key", type=Path, metavar="FILE",
                   help="private key (PEM, not encrypted) of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="check the server certificate against NAME instead of the host in --target "
                        "(e.g. when dialing an IP address or a port-forward); needs --tls-ca")


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read ({e.strerror or e})") from None


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def tls_from_args(args: argparse.Namespace) -> Tls | None:
    """The TLS settings the options ask for (None: plaintext); UsageError names the flag and the file."""
    ca_path: Path | None = args.tls_ca
    cert_path: Path | None = args.tls_cert
    key_path: Path | None = args.tls_key
    server_name: str | None = args.tls_server_name
    if (cert_path is None) != (key_path is None):
        given, missing = ("--tls-cert", "--tls-key") if key_path is None else ("--tls-key", "--tls-cert")
        raise UsageError(f"{given} needs {missing} (a client certificate and its private key go together)")
    if ca_path is None:
        if cert_path is not None:
            raise UsageError("--tls-cert and --tls-key need --tls-ca (a client certificate is only sent over TLS)")
        if server_name is not None:
            raise UsageError("--tls-server-name needs --tls-ca (without it the connection is plaintext)")
        return None
    if server_name is not None and not server_name.strip():
        raise UsageError("--tls-server-name: must not be empty")
    ca = _read("--tls-ca", ca_path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca.decode("latin-1"))
    except (ssl.SSLError, ValueError) as e:
        raise UsageError(f"--tls-ca {ca_path}: not a PEM CA certificate ({e})") from None
    if cert_path is None or key_path is None:
        return Tls(ca=ca, server_name=server_name)
    cert, key = _read("--tls-cert", cert_path), _read("--tls-key", key_path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise UsageError(f"--tls-cert {cert_path}, --tls-key {key_path}: not a PEM certificate and its matching "
                         f"unencrypted private key ({e})") from None
    return Tls(ca=ca, cert=cert, key=key, server_name=server_name)


def channel(target: str, tls: Tls | None = None) -> grpc.aio.Channel:
    """A channel to HOST:PORT or xds:///NAME, plaintext or TLS, that carries large frames (and the trace,
    when tracing)."""
    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
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


def add_xds_argument(parser: argparse.ArgumentParser) -> None:
    from eagleeye.client.admin import address_arg  # here: client.admin imports this module

    parser.add_argument("--xds-server", metavar="HOST:PORT", type=address_arg,
                        help="with --target xds:///NAME: the router's control plane (its --xds-listen address); "
                             "the workers are then called directly, as the router decides (zero-hop mode)")


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
