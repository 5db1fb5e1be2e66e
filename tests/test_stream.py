"""A client stream's decisions with a fake clock: order, exactly once, stalls versus backlog, the window."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from eagleeye.common.loopbehind import LoopBehind
from eagleeye.router.budget import BudgetConfig, RetryBudget
from eagleeye.router.fleet import Backend, StreamPlace
from eagleeye.router.stream import (
    Abort,
    Action,
    Answered,
    BytePool,
    Close,
    Deliver,
    EndWrites,
    Failed,
    Finish,
    Moved,
    Open,
    Refused,
    SideTry,
    StreamConfig,
    StreamCore,
    Write,
)

P, S = Backend.PRIMARY, Backend.STANDBY


@dataclass
class FakeFleet:
    usable_set: set[Backend] = field(default_factory=lambda: {P, S})
    wanted: Backend | None = None
    stall: float = 0.2
    progress: dict[Backend, float] = field(default_factory=dict)   # the backend's last answer to anything
    behind: LoopBehind = field(default_factory=LoopBehind)          # when the router's own loop ran late
    at_capacity: set[Backend] = field(default_factory=set)          # headroom NOT_SERVING

    def usable(self, backend: Backend) -> bool:
        return backend in self.usable_set

    def alternative(self, backend: Backend | None) -> Backend | None:
        return next((b for b in (P, S) if b != backend and b in self.usable_set), None)

    def placement(self, place: StreamPlace, current: Backend | None) -> Backend | None:
        return self.wanted

    def hedge_delay_s(self, backend: Backend) -> float:
        return 0.05

    def progress_at(self, backend: Backend) -> float:
        return self.progress.get(backend, float("-inf"))

    def heard_since(self, t: float) -> float:
        return t + self.behind.after(t)

    def loaded(self, backend: Backend) -> bool:
        return backend in self.at_capacity

    def stall_s(self, backend: Backend) -> float:
        return self.stall


def frame(fid: int, size: int = 10) -> bytes:
    return f"req{fid}".encode().ljust(size, b".")


def answer(fid: int) -> bytes:
    return f"ans{fid}".encode()


class Harness:
    """A StreamCore and what it asked for, with the client taking answers at once unless told not to."""

    def __init__(self, fleet: FakeFleet | None = None, cfg: StreamConfig | None = None,
                 pool: BytePool | None = None, budget: RetryBudget | None = None,
                 deadline: float | None = None) -> None:
        self.fleet = fleet or FakeFleet()
        self.pool = pool or BytePool(10**9)
        self.core = StreamCore(cfg or StreamConfig(backend_window=4, max_frames=8, max_bytes=1000), self.fleet,
                               budget or RetryBudget(BudgetConfig()), self.pool, affinity=50.0, deadline=deadline)
        self.delivered: list[bytes] = []
        self.take = True
        self.untaken: list[int] = []

    def run(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, Deliver):
                self.delivered.append(a.data)
                if self.take:
                    self.core.on_client_took(a.size)
                else:
                    self.untaken.append(a.size)
        return actions

    def writes(self, actions: list[Action]) -> list[tuple[int, bytes]]:
        return [(a.gen, a.data) for a in actions if isinstance(a, Write)]

    def send(self, *fids: int, now: float = 0.0) -> list[Action]:
        out: list[Action] = []
        for fid in fids:
            out += self.run(self.core.on_frame(fid, frame(fid), now))
        return out

    def answer(self, gen: int, *fids: int, now: float = 0.0, queue_full: bool = False) -> list[Action]:
        out: list[Action] = []
        for fid in fids:
            out += self.run(self.core.on_answer(gen, fid, answer(fid), queue_full, now))
        return out


def started(h: Harness | None = None) -> Harness:
    h = h or Harness()
    assert h.core.begin(P, 0.0) == [Open(1, P)]
    return h


def test_frames_are_answered_in_order_and_the_stream_finishes() -> None:
    h = started()
    assert h.writes(h.send(1, 2)) == [(1, frame(1)), (1, frame(2))]
    out = h.answer(1, 1, 2, now=0.02)
    assert h.delivered == [answer(1), answer(2)]
    assert [a for a in out if isinstance(a, Answered)] == [Answered(P, 0.02, 0.02), Answered(P, 0.02, 0.0)]
    assert h.run(h.core.on_client_end(0.03)) == [EndWrites(1), Close(1), Finish()]


def test_a_backlog_that_is_being_answered_is_not_a_stall() -> None:
    h = started()
    h.send(*range(8))                       # 4 outstanding (the leg's window), 4 queued
    now = 0.0
    for fid in range(8):
        now += 0.15                        # each answer within the 0.2 s stall time, the oldest waits 1.2 s
        assert h.core.on_timer(now) == []
        h.answer(1, fid, now=now)
        h.send(100 + fid, now=now)         # the client keeps the backlog full
    assert h.delivered == [answer(f) for f in range(8)]
    assert h.core.backend is P


def test_a_stalled_leg_is_replaced_and_its_frames_replayed_in_order_paced_to_the_window() -> None:
    h = started()
    h.send(*range(6), now=0.0)             # 0-3 outstanding, 4-5 queued
    h.answer(1, 0, now=0.05)
    assert h.core.next_timer() == 0.1      # the placement check comes first ...
    assert h.core.on_timer(0.1) == []
    assert h.core.next_timer() == 0.2
    assert h.core.on_timer(0.2) == []
    assert h.core.next_timer() == pytest.approx(0.25)  # the stall time after the last progress
    out = h.run(h.core.on_timer(0.25))
    assert out[:3] == [Close(1), Failed(P, 4), Open(2, S)]  # four frames unanswered: four failed calls
    assert isinstance(out[3], Moved) and out[3].replayed == 4 and out[3].failure
    assert h.writes(out) == [(2, frame(1)), (2, frame(2)), (2, frame(3)), (2, frame(4))]  # 4 at most
    assert h.answer(1, 1, now=0.26) == []  # a late answer on the old leg is never delivered
    h.answer(2, 1, 2, 3, 4, 5, now=0.3)
    assert h.delivered == [answer(f) for f in range(6)]


def test_a_failed_leg_replays_on_the_other_backend_without_duplicates() -> None:
    h = started()
    h.send(1, 2, 3)
    h.answer(1, 1)
    out = h.run(h.core.on_leg_end(1, True, "UNAVAILABLE", "connection reset", 0.1))
    assert out[:3] == [Close(1), Failed(P, 2), Open(2, S)]
    assert h.writes(out) == [(2, frame(2)), (2, frame(3))]
    h.answer(2, 2, 3)
    assert h.delivered == [answer(1), answer(2), answer(3)]


def test_health_moves_the_stream_without_blaming_the_backend() -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1)
    fleet.usable_set = {S}
    out = h.core.on_timer(0.1)
    assert out[:2] == [Close(1), Open(2, S)] and not any(isinstance(a, Failed) for a in out)


def test_nowhere_to_go_ends_the_stream_unavailable() -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1)
    fleet.usable_set = set()
    assert h.core.on_timer(0.1) == [Close(1), Abort("UNAVAILABLE")]
    assert h.core.on_frame(2, frame(2), 0.2) == []


def test_a_frame_that_breaks_every_backend_is_given_up() -> None:
    h = started()
    h.send(7)
    h.core.on_leg_end(1, True, "UNKNOWN", "", 0.1)
    h.core.on_leg_end(2, True, "UNKNOWN", "", 0.2)
    out = h.core.on_leg_end(3, True, "UNKNOWN", "", 0.3)
    assert out[-1] == Abort("UNAVAILABLE", "frame 7 failed on 3 backend streams in a row; not replaying it again")


@pytest.mark.parametrize(("code", "at"), [
    ("DEADLINE_EXCEEDED", 5.0),      # the leg carried the client's deadline and it passed
    ("DEADLINE_EXCEEDED", 4.995),    # gRPC's timer a few milliseconds ahead of the router's clock
    ("CANCELLED", 5.2),              # anything else that ends a leg after the deadline
])
def test_the_clients_own_deadline_ends_the_stream_without_blaming_the_backend(code: str, at: float) -> None:
    h = started(Harness(deadline=5.0))
    h.send(1)
    out = h.core.on_leg_end(1, True, code, "Deadline Exceeded", at)
    assert out == [Close(1), Abort("DEADLINE_EXCEEDED", "deadline exceeded")]


def test_a_leg_failing_well_before_the_deadline_still_fails_over() -> None:
    h = started(Harness(deadline=5.0))
    h.send(1)
    out = h.core.on_leg_end(1, True, "DEADLINE_EXCEEDED", "", 4.9)
    assert out[:3] == [Close(1), Failed(P, 1), Open(2, S)]


def test_the_deadline_is_a_timer_and_ends_a_stalled_stream_without_a_failover() -> None:
    h = started(Harness(FakeFleet(stall=10.0), deadline=1.0))
    h.send(1)
    assert h.core.next_timer() == pytest.approx(0.1)  # the placement check comes first
    h.core.on_timer(0.1)
    h.core.on_timer(0.9)
    assert h.core.next_timer() == 1.0
    assert h.core.on_timer(1.0) == [Close(1), Abort("DEADLINE_EXCEEDED", "deadline exceeded")]


def test_the_backends_verdict_on_the_stream_reaches_the_client() -> None:
    h = started()
    h.send(1)
    assert h.core.on_leg_end(1, False, "INVALID_ARGUMENT", "bad", 0.1) == [Close(1), Abort("INVALID_ARGUMENT", "bad")]


def test_a_leg_ending_cleanly_with_frames_outstanding_is_a_failure() -> None:
    h = started()
    h.send(1)
    out = h.core.on_leg_end(1, True, "OK", "", 0.1)
    assert out[:3] == [Close(1), Failed(P, 1), Open(2, S)]


def test_a_full_worker_queue_is_tried_once_on_the_other_worker_and_order_is_kept() -> None:
    h = started()
    h.send(1, 2, 3)
    out = h.answer(1, 1, queue_full=True)
    assert SideTry(1, S, frame(1), P) in out
    h.answer(1, 2, 3)
    assert h.delivered == []                        # 2 and 3 wait for 1
    h.run(h.core.on_side_result(1, b"from standby", 0.1))
    assert h.delivered == [b"from standby", answer(2), answer(3)]


def test_a_failed_side_try_delivers_the_workers_refusal() -> None:
    h = started()
    h.send(1)
    h.answer(1, 1, queue_full=True)
    h.run(h.core.on_side_result(1, None, 0.1))
    assert h.delivered == [answer(1)]


def test_no_side_try_without_budget_or_other_worker() -> None:
    fleet = FakeFleet({P})
    h = started(Harness(fleet))
    h.send(1)
    assert not any(isinstance(a, SideTry) for a in h.answer(1, 1, queue_full=True))
    assert h.delivered == [answer(1)]
    h2 = started(Harness(budget=RetryBudget(BudgetConfig(ratio=0, min_per_s=0))))
    h2.send(1)
    assert Refused() in h2.answer(1, 1, queue_full=True)
    assert h2.delivered == [answer(1)]


def test_the_window_is_bounded_in_frames_until_the_client_takes_its_answers() -> None:
    h = started()
    h.take = False                                   # a client that does not read
    h.send(*range(8))
    assert not h.core.has_room()                     # max_frames = 8
    h.answer(1, 0, 1, 2, 3)
    h.answer(1, 4, 5, 6, 7)
    assert not h.core.has_room()                     # answered but not taken still hold the window
    assert h.core.on_timer(5.0) == []                # nothing outstanding: not a stall
    for size in h.untaken:
        h.core.on_client_took(size)
    assert h.core.has_room()


def test_the_window_is_bounded_in_bytes_per_stream_and_for_the_router_before_a_frame_is_read() -> None:
    # A frame written to a worker counts twice (the window's copy and gRPC's): 200 bytes hold 400.
    h = started()
    h.core.on_frame(1, b"x" * 200, 0.0)
    assert h.core.has_room()                         # 400 held, and another 400 would fit in 1000
    h.core.on_frame(2, b"x" * 200, 0.0)
    assert not h.core.has_room()                     # 800 held: a third frame like them would not fit
    pool = BytePool(1000)
    freed: list[int] = []
    pool.on_freed = lambda: freed.append(pool.used)
    a, b = started(Harness(pool=pool)), started(Harness(pool=pool))
    a.core.on_frame(1, b"x" * 490, 0.0)
    b.core.on_frame(1, b"x" * 6, 0.0)
    assert pool.used == 992
    assert not b.core.has_room() and not a.core.has_room()   # no room for another 12 or 980
    a.answer(1, 1)                                   # the 490-byte request is replaced by its 4-byte answer
    assert b.core.has_room() and freed
    b.core.on_frame(2, b"x" * 20, 0.0)
    assert not a.core.has_room()                     # 52 used: a waits for room for a frame like its last
    a.core.release()
    b.core.release()
    assert pool.used == 0


def test_a_stream_moves_at_a_frame_boundary_when_the_weights_want_it_elsewhere() -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1, 2)
    fleet.wanted = S
    assert h.core.on_timer(0.1) == []                # frames outstanding: wait for the boundary
    assert h.writes(h.send(3)) == []                 # new frames wait too
    h.answer(1, 1)
    out = h.answer(1, 2)
    assert out[-4:] == [EndWrites(1), Open(2, S), Moved(P, S, "weights", 0, False), Write(2, frame(3))]
    h.answer(2, 3)
    assert h.delivered == [answer(1), answer(2), answer(3)]


def test_after_a_clean_end_new_frames_open_a_new_leg() -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1)
    h.answer(1, 1)
    assert h.core.on_leg_end(1, True, "OK", "", 0.1) == []
    out = h.send(2)
    assert out[0] == Open(2, P) and h.writes(out) == [(2, frame(2))]


def test_the_stall_time_is_the_fleets_and_only_counts_while_frames_are_outstanding() -> None:
    fleet = FakeFleet(stall=0.5)
    h = started(Harness(fleet))
    assert h.core.next_timer() is None               # nothing outstanding: no timer at all
    h.send(1, now=1.0)                               # the frame looks at health and weights first ...
    assert h.core.next_timer() == 1.1                # ... and the next look is due before the stall time
    h.core.on_timer(1.1)
    assert h.core.next_timer() == pytest.approx(1.2)
    assert h.core.on_timer(1.49) == []
    assert h.core.on_timer(1.5)[:2] == [Close(1), Failed(P, 1)]


def test_a_stream_faster_than_its_worker_is_not_read_while_a_frame_waits_for_the_worker() -> None:
    h = started()
    h.send(1, 2, 3, 4)                               # the leg's window (4) is full ...
    assert h.core.has_room()
    h.send(5)                                        # ... so this one waits in the router
    assert not h.core.has_room()                     # and the client is held back by flow control
    h.answer(1, 1)
    assert h.core.has_room()                         # the waiting frame went to the worker


def test_a_leg_waiting_while_its_backend_answers_others_is_load_not_a_stall() -> None:
    fleet = FakeFleet(stall=0.2)
    h = started(Harness(fleet))
    h.send(1)
    for now in (0.15, 0.3, 0.45, 0.6):          # the backend answers other streams every 0.15 s
        fleet.progress[P] = now
        assert h.core.on_timer(now + 0.01) == [], now
    assert h.core.on_timer(0.79) == []
    out = h.core.on_timer(0.8)                  # 0.2 s after the backend's last answer: a stall, blamed
    assert out[:2] == [Close(1), Failed(P, 1)]


def test_a_stall_on_a_worker_at_capacity_moves_the_stream_without_blame() -> None:
    """A burst queued more frames at the worker than it answers in the stall time, and it says so
    (headroom NOT_SERVING): the stream moves to a worker with room, and nobody is counted as failing."""
    fleet = FakeFleet(stall=0.2, at_capacity={P})
    h = started(Harness(fleet))
    h.send(1)
    out = h.core.on_timer(0.2)
    assert not any(isinstance(a, Failed) for a in out)
    assert out[0] == Close(1) and Open(2, S) in out and Write(2, frame(1)) in out


def test_a_leg_answered_by_nobody_for_leg_stall_s_moves_without_blame() -> None:
    fleet = FakeFleet(stall=0.2)
    h = started(Harness(fleet, cfg=StreamConfig(backend_window=4, max_frames=8, max_bytes=1000, leg_stall_s=2.0)))
    h.send(1)
    fleet.progress[P] = 1.99                    # the backend answers others, never this stream's frame
    out = h.core.on_timer(2.0)
    assert Failed(P, 1) not in out
    assert out[0] == Close(1) and Open(2, S) in out and Write(2, frame(1)) in out


def test_a_large_frame_adds_its_expected_cost_to_the_stall_time() -> None:
    mib = 1024 * 1024
    h = started(Harness(FakeFleet(stall=0.2), cfg=StreamConfig(backend_window=4, max_frames=8, max_bytes=64 * mib)))
    h.core.on_frame(1, b"x" * (6 * mib), 0.0)   # 5 MiB past the first at 0.1 s/MiB: 0.5 s more stall time
    assert h.core.next_timer() == pytest.approx(0.1)   # the placement check comes first
    assert h.core.on_timer(0.69) == []
    assert h.core.on_timer(0.7)[:2] == [Close(1), Failed(P, 1)]


def test_a_client_that_does_not_take_its_answers_is_what_the_window_waits_on() -> None:
    h = started()
    h.take = False
    h.send(*range(8))
    assert not h.core.waiting_on_client()        # the backend holds the frames
    h.answer(1, 0, 1, 2, 3)
    h.answer(1, 4, 5, 6, 7)
    assert h.core.waiting_on_client() and h.core.held() == 8


def test_a_draining_router_answers_every_frame_it_read_then_ends_the_stream_unavailable() -> None:
    h = started()
    h.send(1, 2, 3)
    assert h.core.on_drain("reconnect", 0.1) == [EndWrites(1)]   # nothing more for the worker
    h.answer(1, 1, 2)
    out = h.answer(1, 3)
    assert out[-1] == Abort("UNAVAILABLE", "reconnect")
    assert h.delivered == [answer(1), answer(2), answer(3)]


def test_a_client_that_already_half_closed_gets_its_ok_end_when_the_router_drains() -> None:
    h = started()
    h.send(1)
    h.core.on_client_end(0.0)
    h.core.on_drain("reconnect", 0.1)
    assert h.answer(1, 1)[-1] == Finish()


def test_a_first_frame_needs_room_for_the_reserve_and_an_empty_pool_always_has_room() -> None:
    pool = BytePool(1000)
    cfg = StreamConfig(backend_window=4, max_frames=8, max_bytes=1000, min_frame_reserve=600)
    a, b = started(Harness(pool=pool, cfg=cfg)), started(Harness(pool=pool, cfg=cfg))
    assert a.core.has_room() and b.core.has_room()
    a.core.on_frame(1, b"x" * 250, 0.0)
    assert not b.core.has_room()                      # 500 used + a first frame's 2 x 600 > 1000
    a.answer(1, 1)
    assert b.core.has_room()
    big = started(Harness(pool=BytePool(100), cfg=cfg))
    assert big.core.has_room()                        # a reserve larger than the pool: not stuck for ever


# Each case: steps on two clients' shares (capacity 100 each) of a router pool of 150, with what the
# router's pool holds after each and whether client b then has room for 10 more bytes.
POOL_STEPS: dict[str, list[tuple[str, str, int, int, bool]]] = {
    "within their shares, both clients count in the router's pool": [
        ("take", "a", 60, 60, True), ("take", "b", 50, 110, True), ("take", "b", 40, 150, False),
        ("give", "a", 60, 90, True),
    ],
    "a frame past a client's share is its own debt: the router's pool, and b, do not pay for it": [
        ("take", "a", 90, 90, True), ("take", "a", 400, 100, True),   # a holds 490, 100 of it counted
        ("take", "b", 40, 140, True), ("give", "a", 300, 140, True),    # a still past its share
        ("give", "a", 150, 80, True),                                   # a back at 40
    ],
}


@pytest.mark.parametrize("name", list(POOL_STEPS))
def test_a_clients_share_counts_in_the_routers_pool_only_up_to_its_capacity(name: str) -> None:
    router = BytePool(150)
    shares = {"a": BytePool(100, router), "b": BytePool(100, router)}
    for op, who, n, router_used, b_has_room in POOL_STEPS[name]:
        getattr(shares[who], op)(n)
        assert (router.used, shares["b"].room_for(10)) == (router_used, b_has_room), (name, op, who, n)


@pytest.mark.parametrize("change, first_write, moved", [
    # (what changed while the stream was idle, where its next frame goes, how it got there)
    ("none", Write(1, frame(1)), None),
    ("primary not ready", Write(2, frame(1)), Moved(P, S, "primary not ready", 0, True)),
    ("weights send it to the standby", Write(2, frame(1)), Moved(P, S, "weights", 0, False)),
])
def test_an_idle_stream_has_no_timer_and_its_next_frame_follows_health_and_weights(
        change: str, first_write: Write, moved: Moved | None) -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    assert h.core.next_timer() is None           # nothing outstanding: it wakes nobody, however long
    if change == "primary not ready":
        fleet.usable_set = {S}
    elif change == "weights send it to the standby":
        fleet.wanted = S
    out = h.send(1, now=60.0)
    writes = [a for a in out if isinstance(a, Write)]
    assert writes == [first_write]               # the frame went where health and weights say, once
    assert [a for a in out if isinstance(a, Moved)] == ([moved] if moved else [])
    if moved is not None:
        assert out.index(moved) < out.index(first_write)
    assert h.core.next_timer() == pytest.approx(60.1)   # busy again: watched again


@pytest.mark.parametrize("change, out", [
    ("none", []),
    ("primary not ready", [Close(1), Open(2, S), Moved(P, S, "primary not ready", 0, True)]),
    ("weights send it to the standby", [EndWrites(1), Open(2, S), Moved(P, S, "weights", 0, False)]),
])
def test_a_fleet_change_moves_an_idle_stream_at_once_without_blaming_its_worker(
        change: str, out: list[Action]) -> None:
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1)
    h.answer(1, 1)                               # answered: the stream is idle, with no timer
    assert h.core.next_timer() is None
    if change == "primary not ready":
        fleet.usable_set = {S}
    elif change == "weights send it to the standby":
        fleet.wanted = S
    assert h.core.on_fleet_change(5.0) == out    # no Failed: nothing was lost or late


def test_a_stream_begun_without_a_leg_opens_one_where_placement_says_at_its_first_frame() -> None:
    fleet = FakeFleet(wanted=S)
    h = Harness(fleet)
    assert h.core.begin(None, 0.0) == []         # the client's stream is open; no worker has a stream yet
    assert h.core.next_timer() is None
    assert h.core.on_fleet_change(1.0) == []     # nothing to move
    out = h.send(1, now=2.0)
    assert out[:2] == [Open(1, S), Write(1, frame(1))]
    assert h.core.next_timer() is not None       # busy: watched


def test_a_stream_begun_without_a_leg_that_sends_nothing_ends_without_one() -> None:
    h = Harness()
    h.core.begin(None, 0.0)
    assert h.run(h.core.on_client_end(0.5)) == [Finish()]


def test_time_the_router_itself_ran_behind_does_not_count_toward_a_stall() -> None:
    """Setting up a burst of calls, the router's loop ran 0.15 s behind: answers that came meanwhile
    waited unread, so only the time it could have heard one counts toward the stall time."""
    fleet = FakeFleet()
    h = started(Harness(fleet))
    h.send(1, now=0.0)
    fleet.behind.woke(due=0.05, now=0.2)   # a timer due at 0.05 ran at 0.2
    assert h.core.on_timer(0.2) == []
    check = h.core.next_timer()
    assert check is not None and check == pytest.approx(0.3)  # the placement check
    assert h.core.on_timer(check) == []
    stall = h.core.next_timer()
    assert stall is not None and stall == pytest.approx(0.35)  # listened 0.2 s: 0.05 + 0.15 behind + 0.2
    out = h.run(h.core.on_timer(stall))
    assert out[:2] == [Close(1), Failed(P, 1)]


def test_loop_behind_merges_its_spans_and_counts_only_those_after_a_time() -> None:
    behind = LoopBehind()
    behind.woke(due=1.0, now=1.01)          # 10 ms late: a busy host's jitter, not behind
    assert behind.after(0.0) == 0.0
    behind.woke(due=1.0, now=1.2)           # behind 1.0-1.2
    behind.woke(due=1.1, now=1.3)           # overlaps: behind 1.0-1.3
    behind.woke(due=2.0, now=2.5)           # behind 2.0-2.5
    assert behind.after(0.0) == pytest.approx(0.8)
    assert behind.after(1.1) == pytest.approx(0.7)
    assert behind.after(1.3) == pytest.approx(0.5)
    assert behind.after(2.4) == pytest.approx(0.1)
    assert behind.after(2.5) == 0.0
    behind.woke(due=1.9, now=3.0)           # a timer due long ago swallows the last span: 1.9-3.0
    assert behind.after(0.0) == pytest.approx(0.3 + 1.1)
    behind.woke(due=200.0, now=200.5)       # the old spans are forgotten after BEHIND_KEPT_S
    assert behind.after(0.0) == pytest.approx(0.5)
