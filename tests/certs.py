"""Certificates for TLS tests: a CA and leaf certificates for 127.0.0.1, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pem:
    """A leaf certificate and its key, as files."""

    cert: Path
    key: Path


class TestCA:
    """A throwaway CA that writes its certificate and the leaves it issues under `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self._ca = trustme.CA(organization_name=f"EagleEye test {name}")
        self._dir = directory
        self._name = name
        self.cert = directory / f"{name}.pem"
        self._ca.cert_pem.write_to_path(str(self.cert))

    def issue(self, name: str, *identities: str) -> Pem:
        """A certificate for `identities` (default 127.0.0.1 and localhost), good for servers and clients."""
        leaf = self._ca.issue_cert(*(identities or ("127.0.0.1", "localhost")), common_name=name)
        pem = Pem(self._dir / f"{self._name}-{name}.crt", self._dir / f"{self._name}-{name}.key")
        pem.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(pem.key))
        return pem
