"""Who may use the router's admin API, how much and how often (pure; peers and `now` in, verdicts out).

Failed token checks take turns. A wrong or missing token books a turn of `auth_failure_delay_s` in
one failure slot that all peers share (turns end one after another), and until its turn has ended,
that peer's next token is not even looked at: its calls are refused at once with the time to wait.
The turn is booked when the token is checked, not when the caller is answered, so a caller that stops
waiting (a short deadline, a cancel) spends it all the same. Guessing therefore costs one turn per
guess whatever the caller's deadline or concurrency: one peer checks at most one token per delay,
and many peers together about one per delay once each has spent its first. A right token is never
made to wait for the slot: an operator at another address is not slowed by a peer that guesses.

The admin listener takes `ADMIN_MAX_CALLS` calls at once (gRPC refuses more), and one client at most
`ADMIN_MAX_CALLS_PER_PEER` of them, counted before a call's request is read (common/grpcguard.py): a
client that opens calls and never sends their request holds its own share, and only for
`ADMIN_REQUEST_TIMEOUT_S`. Event streams without a token are long-lived and cost nothing to open, so
they have bounds of their own, well below that (common/admission.py counts them, in total and per
peer): operators' calls and unary reads always find a slot.
"""

from __future__ import annotations

from dataclasses import dataclass

# Operators, not clients: a few dozen calls at once (event followers included) is plenty for one
# client; the listener's bound is a memory bound, well above what a few operators' hosts need.
ADMIN_MAX_CALLS = 256
ADMIN_MAX_CALLS_PER_PEER = 16
# An admin request is a few bytes: one not received this long after its call opened is not coming.
ADMIN_REQUEST_TIMEOUT_S = 5.0
# The most event streams without a token that max_anonymous_streams may allow, and the most per client
# (half a client's calls): the rest are always left for operators and unary reads.
MAX_ANONYMOUS_STREAMS = 32
MAX_ANONYMOUS_STREAMS_PER_PEER = ADMIN_MAX_CALLS_PER_PEER // 2
# Peers whose failed attempt's turn has not ended; past this, no other peer's token is checked until
# turns end. It bounds the memory (a few hundred bytes a peer) a guessing attack from many addresses
# can take; at one turn a second, it is a queue of 17 minutes.
MAX_PACED_PEERS = 1024


@dataclass(frozen=True)
class AdminLimits:
    """The admin API's bounds (RouterConfig.admin_limits())."""

    auth_failure_delay_s: float = 1.0            # a wrong token is answered after this, and is a turn this long
    max_anonymous_streams: int = 16              # event streams without a token, all peers together
    max_anonymous_streams_per_peer: int = 4      # ... and from one peer (common/admission.peer_key)


@dataclass(frozen=True)
class Wait:
    """A token not checked now: its peer's turn ends at `until`; `crowded`: too many peers have one.

    `quiet`: a refusal like this one was already logged in this turn (or, crowded, in this delay), so
    this one needs no line of its own: a guessing loop would otherwise write thousands of lines a second.
    """

    until: float
    crowded: bool = False
    quiet: bool = False


class FailurePacing:
    """The failure slot: who may have a token checked now, and the turns that wrong tokens book."""

    def __init__(self, delay_s: float, max_peers: int = MAX_PACED_PEERS) -> None:
        self._delay_s = delay_s
        self._max_peers = max_peers
        self._slot_free_at = float("-inf")
        self._turns: dict[str, float] = {}  # peer -> end of its turn; booked in order, so they end in order
        self._refused: set[str] = set()      # peers refused (unchecked) at least once in their current turn
        self._crowd_logged_until = float("-inf")

    def _expire(self, now: float) -> None:
        while self._turns:
            peer = next(iter(self._turns))
            if self._turns[peer] > now:
                return
            del self._turns[peer]
            self._refused.discard(peer)

    @property
    def paced(self) -> int:
        """Peers whose turn has not ended (as of the last call)."""
        return len(self._turns)

    def may_check(self, peer: str, now: float) -> Wait | None:
        """None: check this peer's token now; otherwise refuse the call without looking at the token."""
        self._expire(now)
        end = self._turns.get(peer)
        if end is not None:
            quiet = peer in self._refused
            self._refused.add(peer)
            return Wait(end, quiet=quiet)
        if len(self._turns) >= self._max_peers:
            quiet = now < self._crowd_logged_until
            if not quiet:
                self._crowd_logged_until = now + self._delay_s
            return Wait(next(iter(self._turns.values())), crowded=True, quiet=quiet)
        return None

    def failed(self, peer: str, now: float) -> float:
        """Book the turn of a wrong token `peer` gave at `now` (after may_check said None); when to answer.

        The caller is answered after one delay; the peer's turn may end later, behind other peers' turns.
        """
        end = max(now, self._slot_free_at) + self._delay_s
        self._slot_free_at = end
        self._turns.pop(peer, None)  # (may_check expired it) keep the order of ending
        self._refused.discard(peer)
        self._turns[peer] = end
        return now + self._delay_s
