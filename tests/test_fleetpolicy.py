"""The fleet policy (N primaries + M standbys) on a fake clock: per-primary slots, the standbys' capacity,
what each state means, stream sides, and the pair policy as its N=1, M=1 case."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from eagleeye.router.fleetpolicy import FleetDecision, FleetPolicy, Side
from eagleeye.router.policy import TRANSITION_CAUSES, BackendView, Policy, PolicyConfig, State

CFG = PolicyConfig(hold_down_s=10, hold_down_max_s=80, healthy_checks=5, ramp_s=30, degraded_recover_s=5,
                   hold_down_reset_s=300)
UP = BackendView(ready=True, healthy_checks=99, last_ok_at=0)
DOWN = BackendView(ready=False, reason="Watch stream broken")
TIGHT = BackendView(ready=True, headroom=False, healthy_checks=99, reason="queue backlog")


def views(spec: str, role: str) -> dict[str, BackendView]:
    """'UUD' -> {p1: UP, p2: UP, p3: DOWN}; T = up without headroom."""
    table = {"U": UP, "D": DOWN, "T": TIGHT}
    return {f"{role}{i + 1}": table[c] for i, c in enumerate(spec)}


@dataclass(frozen=True)
class Step:
    at: float
    primaries: str
    standbys: str
    state: State
    weights: dict[str, float]


def drive(steps: list[Step]) -> list[FleetDecision]:
    policy = FleetPolicy(CFG)
    out = []
    for i, step in enumerate(steps):
        d = policy.update(views(step.primaries, "p"), views(step.standbys, "s"), step.at)
        got = {n: round(w, 2) for n, w in d.weights.items()}
        assert (d.state, got) == (step.state, step.weights), (i, d)
        assert sum(d.weights.values()) == pytest.approx(100 if d.state is not State.BOTH_DOWN else 0)
        out.append(d)
    return out


CASES: dict[str, list[Step]] = {
    "normal: primaries carry 95 %, evenly; the standby the rest": [
        Step(0, "UU", "U", State.NORMAL, {"p1": 47.5, "p2": 47.5, "s1": 5}),
    ],
    "one primary fails: its share, and only its share, moves to the standby": [
        Step(0, "UUUU", "U", State.NORMAL, {"p1": 23.75, "p2": 23.75, "p3": 23.75, "p4": 23.75, "s1": 5}),
        Step(1, "UDUU", "U", State.FAILOVER, {"p1": 23.75, "p2": 0, "p3": 23.75, "p4": 23.75, "s1": 28.75}),
    ],
    "the failed primary comes back through its own hold-down and ramp": [
        Step(0, "UU", "U", State.NORMAL, {"p1": 47.5, "p2": 47.5, "s1": 5}),
        Step(1, "DU", "U", State.FAILOVER, {"p1": 0, "p2": 47.5, "s1": 52.5}),
        Step(2, "UU", "U", State.RECOVERING, {"p1": 0, "p2": 47.5, "s1": 52.5}),
        Step(12, "UU", "U", State.RECOVERING, {"p1": 0, "p2": 47.5, "s1": 52.5}),   # ramp starts
        Step(27, "UU", "U", State.RECOVERING, {"p1": 23.75, "p2": 47.5, "s1": 28.75}),
        Step(42, "UU", "U", State.NORMAL, {"p1": 47.5, "p2": 47.5, "s1": 5}),
    ],
    "more failed primaries than standbys: the standbys full, the survivors share the rest": [
        Step(0, "UUUU", "U", State.NORMAL, {"p1": 23.75, "p2": 23.75, "p3": 23.75, "p4": 23.75, "s1": 5}),
        Step(1, "DDUU", "U", State.STANDBYS_SHORT, {"p1": 0, "p2": 0, "p3": 37.5, "p4": 37.5, "s1": 25}),
        # p2 back: in its hold-down it still counts as failed, so the fleet is still short.
        Step(2, "DUUU", "U", State.STANDBYS_SHORT, {"p1": 0, "p2": 0, "p3": 37.5, "p4": 37.5, "s1": 25}),
        Step(12, "DUUU", "U", State.STANDBYS_SHORT, {"p1": 0, "p2": 0, "p3": 37.5, "p4": 37.5, "s1": 25}),
        Step(42, "DUUU", "U", State.FAILOVER, {"p1": 0, "p2": 23.75, "p3": 23.75, "p4": 23.75, "s1": 28.75}),
    ],
    "two standbys cover two failed primaries": [
        Step(0, "UUUU", "UU", State.NORMAL,
             {"p1": 23.75, "p2": 23.75, "p3": 23.75, "p4": 23.75, "s1": 2.5, "s2": 2.5}),
        Step(1, "DDUU", "UU", State.FAILOVER, {"p1": 0, "p2": 0, "p3": 23.75, "p4": 23.75, "s1": 26.25, "s2": 26.25}),
        Step(2, "DDUU", "DU", State.STANDBYS_SHORT, {"p1": 0, "p2": 0, "p3": 37.5, "p4": 37.5, "s1": 0, "s2": 25}),
    ],
    "no standby ready: the primaries carry everything, a failed one's share goes to the others": [
        Step(0, "UU", "D", State.STANDBY_DOWN, {"p1": 50, "p2": 50, "s1": 0}),
        Step(1, "UD", "D", State.STANDBYS_SHORT, {"p1": 100, "p2": 0, "s1": 0}),
        Step(2, "DD", "D", State.BOTH_DOWN, {"p1": 0, "p2": 0, "s1": 0}),
        Step(3, "DD", "U", State.STANDBYS_SHORT, {"p1": 0, "p2": 0, "s1": 100}),   # all it has
    ],
    "a primary without headroom splits its own share with the standbys": [
        Step(0, "UT", "U", State.DEGRADED, {"p1": 47.5, "p2": 25, "s1": 27.5}),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_fleet_transitions(name: str) -> None:
    drive(CASES[name])


def test_all_primaries_down_with_one_standby_is_short() -> None:
    d = FleetPolicy(CFG).update(views("DD", "p"), views("U", "s"), 0)
    assert d.short_by == pytest.approx(0.9)  # 2 x 0.95 shares on 1 standby
    # Nothing else can take it: the standby takes all, and the fleet says it is short.
    assert d.state is State.STANDBYS_SHORT and d.weights["s1"] == pytest.approx(100)


def test_a_slot_transition_names_its_primary_and_others_are_untouched() -> None:
    policy = FleetPolicy(CFG)
    policy.update(views("UUU", "p"), views("U", "s"), 0)
    d = policy.update({"p1": UP, "p2": DOWN, "p3": UP}, views("U", "s"), 1)
    slot = [t for t in d.transitions if t.worker]
    assert [(t.worker, t.transition.to_state) for t in slot] == [("p2", State.FAILOVER)]
    assert "Watch stream broken" in slot[0].transition.reason
    assert d.slots["p1"].state is State.NORMAL and d.slots["p3"].state is State.NORMAL
    fleet = [t.transition for t in d.transitions if not t.worker]
    assert [(t.from_state, t.to_state, t.cause) for t in fleet] == [(State.NORMAL, State.FAILOVER, "fleet_changed")]


def test_hold_down_is_per_primary() -> None:
    """p1 flaps and its hold-down grows; p2 fails once and gets the base hold-down."""
    policy = FleetPolicy(CFG)
    policy.update(views("UU", "p"), views("U", "s"), 0)
    policy.update({"p1": DOWN, "p2": UP}, views("U", "s"), 1)
    policy.update(views("UU", "p"), views("U", "s"), 2)               # p1 recovering, hold-down 10
    policy.update({"p1": DOWN, "p2": UP}, views("U", "s"), 3)         # fails in hold-down: next 20
    d = policy.update({"p1": DOWN, "p2": DOWN}, views("U", "s"), 4)
    assert d.slots["p1"].next_hold_down_s == 20 and d.slots["p2"].next_hold_down_s == 10


def test_primaries_join_and_leave() -> None:
    policy = FleetPolicy(CFG)
    policy.update(views("UU", "p"), views("U", "s"), 0)
    d = policy.update(views("UUU", "p"), views("U", "s"), 1)
    # A new primary is ready for the first time: no hold-down, it takes its share at once.
    assert d.slots["p3"].state is State.NORMAL and d.weights["p3"] == pytest.approx(95 / 3)
    d = policy.update({"p1": UP, "p3": UP}, views("U", "s"), 2)
    assert set(d.slots) == {"p1", "p3"} and d.weights["p1"] == pytest.approx(47.5)
    assert d.side("p2", 10.0) is Side.PRIMARIES   # a stream homed on the gone primary needs a new home


def test_a_new_primary_still_loading_is_not_a_failure() -> None:
    policy = FleetPolicy(CFG)
    policy.update(views("U", "p"), views("U", "s"), 0)
    loading = BackendView(ready=False, been_ready=False, reason="loading model")
    d = policy.update({"p1": UP, "p2": loading}, views("U", "s"), 1)
    assert d.slots["p2"].state is State.FAILOVER and d.transitions[0].transition.cause == "primary_not_ready_yet"
    d = policy.update(views("UU", "p"), views("U", "s"), 2)
    assert d.slots["p2"].state is State.NORMAL


@pytest.mark.parametrize(("primaries", "standbys", "home", "affinity", "side"), [
    ("UU", "U", "p1", 10.0, Side.HOME),
    ("UU", "U", "p1", 97.0, Side.STANDBYS),           # the warm 5 % of p1's streams
    ("DU", "U", "p1", 10.0, Side.STANDBYS),
    ("DU", "U", "p2", 10.0, Side.HOME),                # another primary's streams are untouched
    ("DDUU", "U", "p1", 10.0, Side.STANDBYS),          # standbys short: half of the failed shares fit ...
    ("DDUU", "U", "p1", 90.0, Side.PRIMARIES),         # ... the rest goes to the survivors
    ("TU", "U", "p1", 90.0, Side.STAY),                # DEGRADED moves no running stream
    ("UD", "D", "p2", 10.0, Side.PRIMARIES),
    ("DD", "D", "p1", 10.0, Side.NOWHERE),
])
def test_stream_sides(primaries: str, standbys: str, home: str, affinity: float, side: Side) -> None:
    policy = FleetPolicy(CFG)
    policy.update(views("U" * len(primaries), "p"), views("U" * len(standbys), "s"), 0)
    d = policy.update(views(primaries, "p"), views(standbys, "s"), 1)
    assert d.side(home, affinity) is side


def test_stream_sides_match_the_weights() -> None:
    """Streams spread over affinities land on each side in the proportions of the weights."""
    policy = FleetPolicy(CFG)
    policy.update(views("UUUU", "p"), views("U", "s"), 0)
    d = policy.update(views("DDUU", "p"), views("U", "s"), 1)
    counts: dict[Side, int] = {}
    for i in range(10_000):
        side = d.side("p1", i / 100)
        counts[side] = counts.get(side, 0) + 1
    # The standby takes what it can carry (one share, 25 %) of all that leaves a home (2 x 25 % of the
    # failed primaries and 2 x 1.25 % warm), the same part of every home's leaving streams.
    assert counts[Side.STANDBYS] / 10_000 == pytest.approx(25 / 52.5, abs=0.01)


def test_the_pair_policy_is_the_fleet_of_one_and_one() -> None:
    """Random signal sequences: the fleet policy with one primary and one standby decides exactly as
    the pair policy does (state, weights, transitions, hold-downs)."""
    rng = random.Random(7)
    pick = [UP, DOWN, TIGHT, BackendView(ready=True, healthy_checks=2),
            BackendView(ready=False, been_ready=False, reason="starting")]
    for _ in range(200):
        pair, fleet = Policy(CFG), FleetPolicy(CFG)
        now = 0.0
        for _ in range(60):
            now += rng.choice([0.1, 1.0, 5.0, 12.0, 40.0])
            p, s = rng.choice(pick), rng.choice(pick[:3])
            want = pair.update(p, s, now)
            got = fleet.update({"p": p}, {"s": s}, now)
            assert got.state is want.state
            assert got.weights["p"] == pytest.approx(want.primary_weight)
            assert got.weights["s"] == pytest.approx(want.standby_weight)
            assert [t.transition for t in got.transitions] == list(want.transitions)
            assert got.slots["p"] == want


def test_every_fleet_cause_is_declared() -> None:
    seen: set[tuple[State, str]] = set()
    for steps in CASES.values():
        policy = FleetPolicy(CFG)
        for step in steps:
            d = policy.update(views(step.primaries, "p"), views(step.standbys, "s"), step.at)
            seen |= {(t.transition.to_state, t.transition.cause) for t in d.transitions}
    assert seen <= set(TRANSITION_CAUSES), seen - set(TRANSITION_CAUSES)
