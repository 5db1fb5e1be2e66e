"""Admission of long-lived streams: who a stream counts against, and whether one more fits.

Pure: peer strings and counts in, a verdict out; no gRPC. A bound on all streams together keeps a
server's memory bounded, but one client can then take every slot and lock out the others (issue 20:
a client holding all 100 health Watch streams of a worker made every router starting after it see
that worker as down). A second, smaller bound per peer leaves room for the rest.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from enum import Enum
from urllib.parse import unquote


class Full(Enum):
    """Which bound a refused stream met."""

    PEER = "peer"
    TOTAL = "total"


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string without the port: 'ipv4:10.0.0.7:52114' -> '10.0.0.7',
    'ipv6:[::1]:52114' -> '[::1]'; other forms (unix sockets) as they are."""
    scheme, _, rest = unquote(peer).partition(":")  # some gRPC versions percent-encode the brackets
    host, sep, port = rest.rpartition(":")
    if scheme in ("ipv4", "ipv6") and sep and port.isdigit():
        return host
    return peer


def peer_key(peer: str, identities: Iterable[bytes] | None) -> str:
    """What a peer's streams count against: its host, and with mTLS also its certificate's identity.

    The port is left out, since a client opens as many connections (ports) as it likes. The host is kept
    with mTLS, because the replicas of one router Deployment usually share a certificate: by identity
    alone, all of them would count as one peer.
    """
    host = peer_host(peer)
    names = sorted(i.decode(errors="replace") for i in identities or ())
    return f"{','.join(names)}@{host}" if names else host


class Slots:
    """Counts streams held, in total and per peer key, against two bounds."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._by_peer: collections.Counter[str] = collections.Counter()
        self.held = 0

    def held_by(self, key: str) -> int:
        return self._by_peer[key]

    def take(self, key: str) -> Full | None:
        """Take a slot for `key`; the bound met instead (and nothing taken) when none is left.

        The peer's own bound is named first: that is the one the peer can do something about.
        """
        if self._by_peer[key] >= self._per_peer:
            return Full.PEER
        if self.held >= self._total:
            return Full.TOTAL
        self._by_peer[key] += 1
        self.held += 1
        return None

    def give_back(self, key: str) -> None:
        """Release a slot taken for `key`."""
        self._by_peer[key] -= 1
        if self._by_peer[key] <= 0:
            del self._by_peer[key]  # peers come and go: keep no key per address ever seen
        self.held -= 1
