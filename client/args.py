"""The command-line side of dialing, shared by every `eagleeye` command: argparse types for addresses
and targets, and the TLS and xDS options.

The TLS files are read and checked before anything is dialed (`tls_from_args`), so a missing or
malformed file is one line and exit code 2, not a handshake failure later. The library itself takes
a `Tls` (client/dial.py) and knows nothing of argparse.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from eagleeye.client.dial import XDS_SCHEME, Tls, UsageError
from eagleeye.common.cli import ConfigError, parse_host_port


def address_arg(text: str) -> str:
    """argparse type for a HOST:PORT that is not a client target (--xds-server)."""
    try:
        parse_host_port("address", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).replace("address=", "")) from None
    return text


def target_arg(text: str) -> str:
    """argparse type for --target: HOST:PORT, or xds:///NAME (zero-hop mode)."""
    if text.startswith(XDS_SCHEME):
        name = text[len(XDS_SCHEME):]
        if not name or any(c in name for c in "/?# "):
            raise argparse.ArgumentTypeError(f"{text!r} is not xds:///NAME, e.g. xds:///eagleeye-detector")
        return text
    try:
        parse_host_port("--target", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def positive_arg(text: str) -> float:
    """argparse type for a number > 0 (seconds, rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def at_least_one_arg(text: str) -> int:
    """argparse type for a whole number >= 1 (counts of frames)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return n


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


def add_xds_argument(parser: argparse.ArgumentParser) -> None:
    """--xds-server, on every command that can dial xds:///NAME."""
    parser.add_argument("--xds-server", metavar="HOST:PORT", type=address_arg,
                        help="with --target xds:///NAME: the router's control plane (its --xds-listen address); "
                             "the workers are then called directly, as the router decides (zero-hop mode)")
