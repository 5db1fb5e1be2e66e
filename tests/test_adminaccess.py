"""The admin API's failure pacing, step by step with a fake clock: turns, one slot for all peers, the crowd."""

from __future__ import annotations

import pytest

from eagleeye.router.adminaccess import ADMIN_MAX_CALLS, MAX_ANONYMOUS_STREAMS, FailurePacing, Wait

DELAY = 1.0

# Each case: steps of (time, peer, what happens) and what must come back. What happens: "check" asks
# may_check (None: the token is checked now; a Wait: refused unchecked), "fail" books a wrong token's
# turn (the time its caller is answered).
Step = tuple[float, str, str, Wait | float | None]
CASES: dict[str, list[Step]] = {
    "a right token is checked at once, again and again": [
        (0.0, "a", "check", None), (0.0, "a", "check", None), (0.01, "a", "check", None),
    ],
    "a wrong token is answered after the delay; its peer's next token waits for the turn's end": [
        (0.0, "a", "check", None), (0.0, "a", "fail", 1.0),
        (0.1, "a", "check", Wait(1.0)),      # the caller gave up at 0.1 s: its turn goes on
        (0.9, "a", "check", Wait(1.0, quiet=True)),  # refused again in that turn: no second log line
        (1.0, "a", "check", None),           # (answered now) the turn is over
    ],
    "another peer's token is checked at once, right or wrong: operators are not slowed by a guesser": [
        (0.0, "a", "check", None), (0.0, "a", "fail", 1.0),
        (0.1, "b", "check", None),
    ],
    "turns end one at a time: a second peer's turn starts when the first one's ends": [
        (0.0, "a", "check", None), (0.0, "a", "fail", 1.0),
        (0.1, "b", "check", None), (0.1, "b", "fail", 1.1),   # answered after one delay ...
        (1.2, "b", "check", Wait(2.0)),                        # ... its turn ends after a's
        (1.2, "a", "check", None),
        (2.0, "b", "check", None),
    ],
    "many peers guessing: about one check per delay once each has spent its first": [
        (0.0, "a", "check", None), (0.0, "a", "fail", 1.0),
        (0.0, "b", "check", None), (0.0, "b", "fail", 1.0),
        (0.0, "c", "check", None), (0.0, "c", "fail", 1.0),
        (1.0, "a", "check", None), (1.0, "a", "fail", 2.0),   # a's next turn queues behind c's (3.0)
        (1.5, "b", "check", Wait(2.0)), (1.5, "c", "check", Wait(3.0)), (1.5, "a", "check", Wait(4.0)),
        (1.6, "a", "check", Wait(4.0, quiet=True)),
        (2.0, "b", "check", None),
    ],
    "no delay: nothing is ever paced": [
        (0.0, "a", "check", None),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_failure_pacing(name: str) -> None:
    pacing = FailurePacing(0.0 if name.startswith("no delay") else DELAY)
    for at, peer, what, expected in CASES[name]:
        got = pacing.may_check(peer, at) if what == "check" else pacing.failed(peer, at)
        assert got == expected, (name, at, peer, what)


def test_no_delay_never_paces_even_many_failures() -> None:
    pacing = FailurePacing(0.0)
    for i in range(5):
        assert pacing.may_check("a", 1.0) is None
        assert pacing.failed("a", 1.0) == 1.0, i
    assert pacing.may_check("a", 1.0) is None


def test_past_the_crowd_bound_no_new_peer_is_checked_until_turns_end() -> None:
    pacing = FailurePacing(DELAY, max_peers=2)
    for peer in ("a", "b"):
        assert pacing.may_check(peer, 0.0) is None
        pacing.failed(peer, 0.0)
    assert pacing.may_check("operator", 0.5) == Wait(1.0, crowded=True)  # the first turn's end
    assert pacing.may_check("other", 0.6) == Wait(1.0, crowded=True, quiet=True)  # one line per delay
    assert pacing.paced == 2
    assert pacing.may_check("operator", 1.0) is None  # a's turn is over: there is room again
    assert pacing.paced == 1


def test_anonymous_streams_leave_at_least_half_the_admin_calls() -> None:
    assert 0 < MAX_ANONYMOUS_STREAMS <= ADMIN_MAX_CALLS - MAX_ANONYMOUS_STREAMS
