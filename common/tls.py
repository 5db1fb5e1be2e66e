"""TLS for every hop: server credentials that follow certificate rotation, and channel credentials.

A server's certificate is re-read when its files change (cert-manager or a script replacing them):
gRPC asks `_Rotation.fetch` at every new handshake, which compares the files' stamps and, when they
moved, offers the new pair. Connections already open keep the certificate they were made with, so
open streams are not broken. A half-written or mismatched pair is refused (logged once) and the
previous one stays in use until the files are whole again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from eagleeye.common.cli import ConfigError
from eagleeye.common.logs import event

log = logging.getLogger("eagleeye.tls")


def _readable(field: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{field}={str(path)!r}: cannot read ({e.strerror})") from None


def _load_pair(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Raise ssl.SSLError/OSError unless the files hold a certificate, its key and (if given) a CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)


def check_server_files(cert: Path | None, key: Path | None, client_ca: Path | None, prefix: str = "tls") -> None:
    """Validate a listener's TLS settings (ConfigError naming the field)."""
    if (cert is None) != (key is None):
        raise ConfigError(f"{prefix}_cert and {prefix}_key: give both (the certificate and its private key) or neither")
    if client_ca is not None and cert is None:
        raise ConfigError(f"{prefix}_client_ca: needs {prefix}_cert and {prefix}_key (mTLS is TLS with client "
                          "certificates)")
    if cert is None or key is None:
        return
    for field, path in ((f"{prefix}_cert", cert), (f"{prefix}_key", key), (f"{prefix}_client_ca", client_ca)):
        if path is not None:
            _readable(field, path)
    try:
        _load_pair(cert, key, client_ca)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{prefix}_cert={str(cert)!r}, {prefix}_key={str(key)!r}: not a PEM certificate and its "
                          f"matching private key{' (or ' + prefix + '_client_ca is not a PEM CA)' if client_ca else ''}"
                          f": {e}") from None


def check_client_files(prefix: str, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """Validate a dialer's TLS settings: CA, and optionally a client certificate and key."""
    if (cert is None) != (key is None):
        raise ConfigError(f"{prefix}_cert and {prefix}_key: give both (the client certificate and its key) or neither")
    if cert is not None and ca is None:
        raise ConfigError(f"{prefix}_cert: needs {prefix}_ca (a client certificate is sent only over TLS)")
    for field, path in ((f"{prefix}_ca", ca), (f"{prefix}_cert", cert), (f"{prefix}_key", key)):
        if path is not None:
            _readable(field, path)
    if cert is not None and key is not None:
        try:
            _load_pair(cert, key, None)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{prefix}_cert={str(cert)!r}, {prefix}_key={str(key)!r}: not a PEM certificate and "
                              f"its matching private key: {e}") from None


@dataclass(frozen=True)
class ServerTls:
    """A listener's certificate, key and, for mTLS, the CA its clients' certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @staticmethod
    def of(cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
        """The settings as a ServerTls, or None for plaintext."""
        return None if cert is None or key is None else ServerTls(cert, key, client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that pick up a replaced certificate at the next handshake."""
        return _Rotation(self).credentials()


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class FileWatch:
    """Tells whether any of some files was replaced or changed since the last time it was asked."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = tuple(paths)
        self._stamp = self._now()

    def _now(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return _stamp(self._paths)
        except OSError:
            return None  # a file is being replaced

    def changed(self) -> bool:
        stamp = self._now()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


class _Rotation:
    """Serves gRPC's certificate-configuration fetcher for one listener."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._files = FileWatch([p for p in (tls.cert, tls.key, tls.client_ca) if p is not None])
        self._lock = threading.Lock()  # gRPC may call the fetcher from its own threads
        self._initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        t = self._tls
        return grpc.ssl_server_certificate_configuration(
            [(t.key.read_bytes(), t.cert.read_bytes())],
            root_certificates=t.client_ca.read_bytes() if t.client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self._tls.client_ca is not None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed and hold a usable pair; None: keep the current one."""
        with self._lock:
            if not self._files.changed():
                return None  # unchanged, or a file is being replaced: look again at the next handshake
            try:
                _load_pair(self._tls.cert, self._tls.key, self._tls.client_ca)
                config = self._configuration()
            except (ssl.SSLError, OSError) as e:  # tried again when the files change again
                event(log, "certificate reload refused; serving the previous one", logging.WARNING,
                      cert=str(self._tls.cert), error=str(e))
                return None
            event(log, "certificate reloaded", cert=str(self._tls.cert))
            return config


def channel_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate chains to `ca`, with a client certificate for mTLS if given."""
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(),
                                        private_key=key.read_bytes() if key else None,
                                        certificate_chain=cert.read_bytes() if cert else None)
