"""Zero-hop mode, the pure part of one ADS stream: the state-of-the-world protocol for one client.

Requests and snapshots go in; what the client is due comes out, one response at a time, when the shell
can write it (`next_response`). Nothing is queued: a type is due while what the client last got differs
from what it should have now (its subscription, or the snapshot's version), so a client that does not
read holds no backlog: at most one response per type is due, built from the latest state when it is
written. A request that changes nothing (a repeated subscription, an ACK, an empty nonce) makes
nothing due; a NACK does not make the refused version due again.

A client's own text (node id, user agent, versions, NACK reasons) is kept only cut and printable
(eagleeye.common.printable), and NACKs are logged at most once per `NACK_LOG_INTERVAL_S` per stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eagleeye.api.router.xds.v3 import xds_pb2 as x
from eagleeye.common.printable import printable
from eagleeye.router.xds.resources import ENDPOINTS, SHORT, TYPES, Snapshot

# The router serves one resource per type (named xds_name); a client process subscribes to the names
# it dials, a handful at most. The limits keep a stream's state small (names are kept, up to twice:
# asked for and last sent) whatever a client writes; a request beyond them ends the stream.
MAX_NAMES_PER_TYPE = 32
MAX_NAME_CHARS = 256      # Kubernetes names stop at 253; xdstp:// names of real deployments fit too
# A client that keeps refusing (a bug, or on purpose) gets one log line per this period, with the
# count of the NACKs not logged since the last line; every NACK is still counted in the metrics.
NACK_LOG_INTERVAL_S = 10.0


@dataclass
class TypeState:
    """One resource type on one stream: what the client asked for, was sent, and accepted."""

    names: frozenset[str] = frozenset()   # empty: every listener or cluster (a wildcard); no assignment
    subscribed: bool = False
    sent: bool = False                    # a response of this type went out on this stream
    sent_names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nack: str = ""                        # the client's reason (printable, cut), while it refuses sent_version

    def due(self, snapshot: Snapshot | None, type_url: str) -> bool:
        """Whether the client should be sent this type: its subscription or the content changed."""
        return self.subscribed and snapshot is not None and (
            not self.sent or self.names != self.sent_names or self.sent_version != snapshot.versions[type_url])


@dataclass(frozen=True)
class Outcome:
    """What the shell does about one request, besides writing what becomes due."""

    nack: str | None = None     # the request refused the last response: the reason (printable, cut)
    log_nack: bool = False      # ... and it is to be logged now (NACK_LOG_INTERVAL_S)
    suppressed: int = 0         # NACKs not logged since the previous line, for that line
    refused: str = ""           # the request broke a limit: end the stream with this message


@dataclass
class AdsSession:
    """State of the world ADS for one client stream. Feed it requests and snapshots; write `next_response()`."""

    node_id: str = ""
    user_agent: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    nacks: int = 0
    _nonce: int = 0
    _nack_logged_at: float | None = None
    _nacks_unlogged: int = 0

    def on_request(self, req: x.DiscoveryRequest, now: float = 0.0) -> Outcome:
        """Take a client's request (`now`: seconds on any monotonic clock, for the NACK log's period)."""
        if req.HasField("node") and not self.node_id:  # sent on a stream's first request only
            self.node_id = printable(req.node.id)
            self.user_agent = printable(f"{req.node.user_agent_name} {req.node.user_agent_version}".strip())
        if req.type_url not in TYPES:
            return Outcome()  # a type we do not serve (e.g. RouteConfiguration: routes are inline)
        if refused := _over_limits(req.type_url, req.resource_names):
            return Outcome(refused=refused)
        ts = self.types.setdefault(req.type_url, TypeState())
        if req.response_nonce and req.response_nonce != ts.sent_nonce:
            return Outcome()  # answers an older response; the newer one is on its way or answered
        outcome = Outcome()
        if req.response_nonce:
            if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
                ts.nack = printable(req.error_detail.message or f"code {req.error_detail.code}")
                outcome = self._nack(ts.nack, now)
            else:
                ts.acked_version, ts.nack = printable(req.version_info), ""
        ts.names, ts.subscribed = frozenset(req.resource_names), True
        return outcome

    def _nack(self, reason: str, now: float) -> Outcome:
        self.nacks += 1
        if self._nack_logged_at is not None and now - self._nack_logged_at < NACK_LOG_INTERVAL_S:
            self._nacks_unlogged += 1
            return Outcome(nack=reason)
        suppressed, self._nacks_unlogged, self._nack_logged_at = self._nacks_unlogged, 0, now
        return Outcome(nack=reason, log_nack=True, suppressed=suppressed)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """A new decision: each subscribed type whose version changed becomes due."""
        self.snapshot = snapshot

    def due(self) -> bool:
        """Whether a response is waiting to be written."""
        return any(ts.due(self.snapshot, t) for t, ts in self.types.items())

    def next_response(self) -> x.DiscoveryResponse | None:
        """The next response the client is due, built now from the latest state; None when it has all it asked."""
        for type_url in TYPES:  # listeners before clusters before assignments, as a change is best applied
            ts = self.types.get(type_url)
            if ts is not None and ts.due(self.snapshot, type_url):
                return self._build(type_url, ts)
        return None

    def _build(self, type_url: str, ts: TypeState) -> x.DiscoveryResponse:
        assert self.snapshot is not None  # nothing is due before the router knows its workers
        available = self.snapshot.resources[type_url]
        if ts.names:
            wanted: Iterable[str] = sorted(n for n in ts.names if n in available)
        else:  # a wildcard for listeners and clusters; for assignments, no names means none wanted
            wanted = [] if type_url == ENDPOINTS else sorted(available)
        self._nonce += 1
        ts.sent, ts.sent_names = True, ts.names
        ts.sent_version, ts.sent_nonce = self.snapshot.versions[type_url], str(self._nonce)
        return x.DiscoveryResponse(version_info=ts.sent_version, type_url=type_url, nonce=ts.sent_nonce,
                                   resources=[available[n] for n in wanted])


def _over_limits(type_url: str, names: Sequence[str]) -> str:
    """Why a subscription is refused ("" when it is not)."""
    if len(names) > MAX_NAMES_PER_TYPE:
        return (f"{len(names)} {SHORT[type_url]} names in one request; the router takes at most "
                f"{MAX_NAMES_PER_TYPE} per type (MAX_NAMES_PER_TYPE)")
    longest = max((len(n) for n in names), default=0)
    if longest > MAX_NAME_CHARS:
        return (f"a {SHORT[type_url]} name of {longest} characters; the router takes names of at most "
                f"{MAX_NAME_CHARS} (MAX_NAME_CHARS)")
    return ""
