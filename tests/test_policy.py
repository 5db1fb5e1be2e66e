"""The router policy, driven by a fake clock: every state and transition, flapping, ramp, both down."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import pytest

from eagleeye.router.policy import TRANSITION_CAUSES, BackendView, Decision, Policy, PolicyConfig, State

CFG = PolicyConfig(hold_down_s=10, hold_down_max_s=80, healthy_checks=5, ramp_s=30, degraded_recover_s=5,
                   hold_down_reset_s=300)
UP = BackendView(ready=True, healthy_checks=99, last_ok_at=0)
DOWN = BackendView(ready=False, reason="Watch stream broken")
TIGHT = BackendView(ready=True, headroom=False, healthy_checks=99, reason="gpu: utilization 99% > 95% for 10 s")


def up(checks: int) -> BackendView:
    return BackendView(ready=True, healthy_checks=checks)


def tight(checks: int = 99) -> BackendView:
    return BackendView(ready=True, headroom=False, healthy_checks=checks, reason="queue backlog 3x for 2 s")


@dataclass(frozen=True)
class Step:
    at: float
    primary: BackendView
    standby: BackendView
    state: State
    weights: tuple[float, float]
    reason: str = ""  # a substring of the reason of a transition made at this step


def drive(steps: list[Step], cfg: PolicyConfig = CFG, start: State | None = State.NORMAL) -> list[Decision]:
    policy = Policy(cfg)
    if start is State.NORMAL:
        policy.update(UP, UP, -1.0)
    out = []
    for i, step in enumerate(steps):
        d = policy.update(step.primary, step.standby, step.at)
        assert (d.state, (round(d.primary_weight, 3), round(d.standby_weight, 3))) == (step.state, step.weights), \
            (i, d)
        if step.reason:
            assert any(step.reason in t.reason for t in d.transitions), (i, step.reason, d.transitions)
        out.append(d)
    return out


CASES: dict[str, list[Step]] = {
    "normal": [Step(0, UP, UP, State.NORMAL, (95, 5))],
    "primary fails: all traffic moves at once": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100), "Watch stream broken"),
    ],
    "hold-down needs time AND consecutive checks, then a monotonic ramp": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(1, up(1), UP, State.RECOVERING, (0, 100), "hold-down 10 s"),
        Step(10.9, up(5), UP, State.RECOVERING, (0, 100)),      # time not yet served
        Step(11, up(4), UP, State.RECOVERING, (0, 100)),        # time served, checks not yet
        Step(11.5, up(5), UP, State.RECOVERING, (0, 100), "ramping back"),
        Step(19, up(6), UP, State.RECOVERING, (23.75, 76.25)),
        Step(26.5, up(7), UP, State.RECOVERING, (47.5, 52.5)),
        Step(41.5, up(8), UP, State.NORMAL, (95, 5), "ramp complete"),
    ],
    "failure during hold-down doubles the next hold-down": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(1, up(1), UP, State.RECOVERING, (0, 100)),
        Step(5, DOWN, UP, State.FAILOVER, (0, 100), "next hold-down 20 s"),
        Step(6, up(1), UP, State.RECOVERING, (0, 100), "hold-down 20 s"),
        Step(25, up(50), UP, State.RECOVERING, (0, 100)),
        Step(26, up(50), UP, State.RECOVERING, (0, 100), "ramping back"),
    ],
    "failure during the ramp goes back to FAILOVER at once": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(1, up(5), UP, State.RECOVERING, (0, 100)),
        Step(11, up(9), UP, State.RECOVERING, (0, 100), "ramping back"),
        Step(26, up(9), UP, State.RECOVERING, (47.5, 52.5)),
        Step(27, DOWN, UP, State.FAILOVER, (0, 100), "failed again during recovery"),
    ],
    "primary without headroom: a partial shift, and back only after it holds": [
        Step(0, TIGHT, UP, State.DEGRADED, (50, 50), "lacks headroom"),
        Step(1, UP, UP, State.DEGRADED, (50, 50)),
        Step(3, TIGHT, UP, State.DEGRADED, (50, 50)),
        Step(4, UP, UP, State.DEGRADED, (50, 50)),
        Step(9, UP, UP, State.NORMAL, (95, 5), "headroom back"),
    ],
    "headroom back but fewer than healthy_checks checks: stays DEGRADED": [
        Step(0, tight(), UP, State.DEGRADED, (50, 50), "next degraded hold 5 s"),
        Step(1, up(1), UP, State.DEGRADED, (50, 50)),
        Step(6, up(4), UP, State.DEGRADED, (50, 50)),          # time served, checks not yet
        Step(7, up(0), UP, State.DEGRADED, (50, 50)),          # a failed Check starts the count again
        Step(10, up(4), UP, State.DEGRADED, (50, 50)),
        Step(10.5, up(5), UP, State.NORMAL, (95, 5), "primary headroom back for 9.5 s and 5 checks"),
    ],
    "headroom flapping: each quick return to DEGRADED doubles the degraded hold": [
        Step(0, TIGHT, UP, State.DEGRADED, (50, 50), "next degraded hold 5 s"),
        Step(1, UP, UP, State.DEGRADED, (50, 50)),
        Step(6, UP, UP, State.NORMAL, (95, 5), "headroom back for 5 s and 99 checks (degraded hold 5 s)"),
        Step(8, TIGHT, UP, State.DEGRADED, (50, 50), "next degraded hold 10 s"),
        Step(9, UP, UP, State.DEGRADED, (50, 50)),
        Step(14, UP, UP, State.DEGRADED, (50, 50)),            # the old 5 s would have ended it here
        Step(18.9, UP, UP, State.DEGRADED, (50, 50)),
        Step(19, UP, UP, State.NORMAL, (95, 5), "(degraded hold 10 s)"),
        Step(20, TIGHT, UP, State.DEGRADED, (50, 50), "next degraded hold 20 s"),
        Step(21, UP, UP, State.DEGRADED, (50, 50)),
        Step(40, TIGHT, UP, State.DEGRADED, (50, 50)),         # lost again after 19 s: the 20 s starts over
        Step(41, UP, UP, State.DEGRADED, (50, 50)),
        Step(61, UP, UP, State.NORMAL, (95, 5), "headroom back for 20 s"),
    ],
    "the degraded hold does not change the ramp back into DEGRADED": [
        Step(0, TIGHT, UP, State.DEGRADED, (50, 50)),
        Step(1, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(2, up(1), UP, State.RECOVERING, (0, 100), "hold-down 10 s"),
        Step(12, tight(), UP, State.RECOVERING, (0, 100), "ramping back"),
        Step(42, tight(), UP, State.DEGRADED, (50, 50), "next degraded hold 10 s"),  # back within 300 s
    ],
    "degraded primary fails": [
        Step(0, TIGHT, UP, State.DEGRADED, (50, 50)),
        Step(1, DOWN, UP, State.FAILOVER, (0, 100)),
    ],
    "standby down: redundancy lost, primary takes all": [
        Step(0, UP, DOWN, State.STANDBY_DOWN, (100, 0), "redundancy lost"),
        Step(1, UP, UP, State.NORMAL, (95, 5), "both backends ready"),
    ],
    "both down fails fast, and either coming back serves": [
        Step(0, DOWN, DOWN, State.BOTH_DOWN, (0, 0)),
        Step(1, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(2, DOWN, DOWN, State.BOTH_DOWN, (0, 0)),
        Step(3, UP, DOWN, State.STANDBY_DOWN, (100, 0)),
    ],
    "standby dies during recovery: the primary is all there is": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(1, up(1), UP, State.RECOVERING, (0, 100)),
        Step(2, up(2), DOWN, State.STANDBY_DOWN, (100, 0)),
    ],
    "recovery ramps toward degraded weights when the primary lacks headroom": [
        Step(0, DOWN, UP, State.FAILOVER, (0, 100)),
        Step(1, BackendView(ready=True, headroom=False, healthy_checks=9), UP, State.RECOVERING, (0, 100)),
        Step(11, BackendView(ready=True, headroom=False, healthy_checks=9), UP, State.RECOVERING, (0, 100)),
        Step(26, BackendView(ready=True, headroom=False, healthy_checks=9), UP, State.RECOVERING, (25, 75)),
        Step(41, BackendView(ready=True, headroom=False, healthy_checks=9), UP, State.DEGRADED, (50, 50)),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_transitions(name: str) -> None:
    drive(CASES[name])


def test_starts_both_down_until_health_arrives() -> None:
    policy = Policy(CFG)
    assert policy.state is State.BOTH_DOWN
    d = policy.update(UP, UP, 0)
    assert d.state is State.NORMAL and d.transitions[0].from_state is State.BOTH_DOWN


def test_a_primary_not_ready_yet_is_not_a_failure() -> None:
    """A (re)started router hears the standby first, or the primary is still loading its model:
    no hold-down when the primary becomes ready for the first time."""
    policy = Policy(CFG)
    d = policy.update(BackendView(ready=False, been_ready=False, reason="connecting"), UP, 0.0)
    assert (d.state, d.standby_weight) == (State.FAILOVER, 100)
    d = policy.update(BackendView(ready=False, been_ready=False, reason="readiness NOT_SERVING"), UP, 3.0)
    assert d.state is State.FAILOVER
    d = policy.update(UP, UP, 5.0)
    assert d.state is State.NORMAL and "first time" in d.transitions[0].reason


def test_a_primary_seen_ready_then_failing_gets_the_hold_down() -> None:
    policy = Policy(CFG)
    policy.update(BackendView(ready=False, been_ready=False), UP, 0.0)
    policy.update(UP, UP, 0.1)
    policy.update(BackendView(ready=False, reason="Watch stream down"), UP, 1.0)
    assert policy.update(up(1), UP, 2.0).state is State.RECOVERING


def test_detection_time_runs_from_last_seen_healthy() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    d = policy.update(BackendView(ready=False, last_ok_at=9.75, reason="Check deadline exceeded"), UP, 10.0)
    assert d.transitions[0].detection_ms == pytest.approx(250)


def test_hold_down_is_capped_and_resets_after_a_stable_period() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    t = 0.0
    for _ in range(6):  # fail during every hold-down: 10 -> 20 -> 40 -> 80 (cap)
        t += 1
        policy.update(DOWN, UP, t)
        t += 1
        policy.update(up(1), UP, t)
    assert policy.update(up(1), UP, t).next_hold_down_s == 80
    policy.update(up(100), UP, t + 80)          # hold-down served
    policy.update(up(100), UP, t + 80 + 30)     # ramp done: NORMAL
    assert policy.state is State.NORMAL
    assert policy.update(UP, UP, t + 80 + 30 + 299).next_hold_down_s == 80
    assert policy.update(UP, UP, t + 80 + 30 + 300).next_hold_down_s == 10


def test_operator_can_skip_the_hold_down_but_not_the_ramp() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    policy.update(DOWN, UP, 1)
    policy.skip_hold_down(1.5)
    d = policy.update(up(0), UP, 2)
    assert d.state is State.RECOVERING and d.hold_down_remaining_s == 0
    assert policy.update(up(0), UP, 17).primary_weight == pytest.approx(47.5)


def test_operator_skip_during_a_hold_down_ends_it() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    policy.update(DOWN, UP, 1)
    assert policy.update(up(0), UP, 2).hold_down_remaining_s == pytest.approx(10)
    policy.skip_hold_down(4)
    d = policy.update(up(3), UP, 4)
    assert d.state is State.RECOVERING and d.hold_down_remaining_s == 0 and d.ramp_progress == 0


def test_operator_switch_outside_a_recovery_leaves_nothing_behind() -> None:
    """Switch(PRIMARY) while NORMAL must not shorten the hold-down of a failure an hour later."""
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    policy.skip_hold_down(10)
    policy.update(UP, UP, 20)
    policy.update(DOWN, UP, 3600)
    d = policy.update(up(50), UP, 3601)
    assert d.state is State.RECOVERING and d.hold_down_remaining_s == pytest.approx(10)


@pytest.mark.parametrize("period", [2.0, 7.0, 15.0, 40.0])
def test_flapping_primary_switches_back_at_most_once_per_hold_down_window(period: float) -> None:
    """A primary on a 50 % duty cycle (ready `period` s, down `period` s), observed every 0.5 s for 20 min."""
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    switch_backs: list[float] = []
    checks = 0
    t = 0.0
    while t < 1200:
        ready = int(t // period) % 2 == 1
        checks = checks + 1 if ready else 0
        d = policy.update(BackendView(ready=ready, healthy_checks=checks), UP, t)
        switch_backs += [tr.at for tr in d.transitions if "ramping back" in tr.reason]
        t += 0.5
    if period < CFG.hold_down_s:
        assert switch_backs == []
    for a, b in itertools.pairwise(switch_backs):
        assert b - a >= CFG.hold_down_s
    assert len(switch_backs) <= 4  # the hold-down doubles (10, 20, 40, 80) until it outlasts the flaps


def test_ramp_is_monotonic() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    policy.update(DOWN, UP, 1)
    weights = [policy.update(up(50), UP, 2 + i * 0.25).primary_weight for i in range(200)]
    assert all(b >= a for a, b in itertools.pairwise(weights))
    assert weights[0] == 0 and weights[-1] == 95


def test_every_transition_cause_is_declared() -> None:
    """Metrics pre-create a series per (state, cause); a cause the policy uses must be among them."""
    seen: set[tuple[State, str]] = set()
    for steps in CASES.values():
        policy = Policy(CFG)
        policy.update(UP, UP, -1.0)
        for step in steps:
            seen |= {(t.to_state, t.cause) for t in policy.update(step.primary, step.standby, step.at).transitions}
    assert seen <= set(TRANSITION_CAUSES), seen - set(TRANSITION_CAUSES)


@pytest.mark.parametrize("period", [2.0, 5.0, 8.0, 12.0, 20.0])
def test_flapping_headroom_under_sustained_overload_does_not_bounce_the_split(period: float) -> None:
    """No fault at all: the primary's headroom flips on a 50 % duty cycle (lost for the first half of each
    `period`), seen every 0.2 s for 120 s; its readiness Checks all pass."""
    policy = Policy(CFG)
    policy.update(UP, UP, -1.0)
    ticks_per_period = round(period * 5)
    transitions = []
    entered: tuple[float, float] | None = None  # (at, hold in force)
    holds: list[float] = []
    for i in range(120 * 5 + 1):
        t = i / 5
        headroom = i % ticks_per_period >= ticks_per_period / 2
        view = UP if headroom else tight()
        d = policy.update(BackendView(ready=True, headroom=view.headroom, healthy_checks=i + 1, reason=view.reason),
                          UP, t)
        for tr in d.transitions:
            transitions.append(tr)
            if tr.to_state is State.DEGRADED:
                entered = (t, d.degraded_hold_s)
                holds.append(d.degraded_hold_s)
            elif entered is not None:
                assert t - entered[0] >= entered[1], (t, entered)  # every episode outlasts the hold in force
                entered = None
        if d.state is State.DEGRADED:
            assert 0 <= d.hold_down_remaining_s <= d.degraded_hold_s
    assert len(transitions) <= 4, [(tr.at, tr.to_state.value) for tr in transitions]
    assert len(holds) <= 2
    assert holds == [min(CFG.degraded_recover_s * 2 ** k, CFG.degraded_recover_max_s) for k in range(len(holds))]
    if period / 2 < CFG.degraded_recover_s:  # headroom never back for the first hold: one switch, and it stays
        assert [tr.to_state for tr in transitions] == [State.DEGRADED]


def test_degraded_hold_doubles_on_each_quick_return_and_is_capped() -> None:
    policy = Policy(dataclasses.replace(CFG, degraded_recover_max_s=20.0))
    policy.update(UP, UP, 0)
    t, holds = 0.0, []
    for _ in range(5):
        t += 1
        d = policy.update(TIGHT, UP, t)
        assert d.state is State.DEGRADED and d.hold_down_remaining_s == d.degraded_hold_s
        holds.append(d.degraded_hold_s)
        t += 1
        policy.update(UP, UP, t)                  # headroom back ...
        t += d.degraded_hold_s - 0.5
        assert policy.update(UP, UP, t).hold_down_remaining_s == pytest.approx(0.5)
        t += 0.5
        assert policy.update(UP, UP, t).state is State.NORMAL  # ... for exactly the hold in force
    assert holds == [5, 10, 20, 20, 20]


def test_degraded_hold_resets_after_hold_down_reset_s_in_normal() -> None:
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    t = 0.0
    for hold in (5, 10, 20):                      # three quick episodes: the next would be 40 s
        t += 1
        assert policy.update(TIGHT, UP, t).degraded_hold_s == hold
        t += 1
        policy.update(UP, UP, t)
        t += hold
        assert policy.update(UP, UP, t).state is State.NORMAL
    assert policy.update(UP, UP, t + 299).degraded_hold_s == 20   # not yet: still grown
    d = policy.update(TIGHT, UP, t + 299.5)
    assert d.degraded_hold_s == 40 and "next degraded hold 40 s" in d.transitions[0].reason
    policy.update(UP, UP, t + 300)
    assert policy.update(UP, UP, t + 340).state is State.NORMAL
    assert policy.update(UP, UP, t + 340 + 300).degraded_hold_s == 5  # 300 s in NORMAL: back to the first
    d = policy.update(TIGHT, UP, t + 340 + 301)
    assert d.degraded_hold_s == 5 and "next degraded hold 5 s" in d.transitions[0].reason


def test_a_late_return_to_degraded_without_a_reset_keeps_the_hold() -> None:
    """Back in DEGRADED more than hold_down_reset_s after the last episode, but not that long in NORMAL
    (the standby was down meanwhile): not a quick return, not a reset either."""
    policy = Policy(CFG)
    policy.update(UP, UP, 0)
    policy.update(TIGHT, UP, 1)
    policy.update(UP, UP, 2)
    policy.update(UP, UP, 7)                       # NORMAL
    policy.update(TIGHT, UP, 8)                    # hold 10
    policy.update(UP, DOWN, 9)                     # STANDBY_DOWN ends the episode
    policy.update(UP, UP, 400)                     # NORMAL, 391 s after the episode
    assert policy.update(TIGHT, UP, 401).degraded_hold_s == 10


def test_router_config_validates_and_passes_degraded_recover_max_s() -> None:
    from eagleeye.common.cli import ConfigError
    from eagleeye.router.config import RouterConfig

    def cfg(max_s: float = 120.0) -> RouterConfig:
        return RouterConfig(primary="127.0.0.1:1", standby="127.0.0.1:2", degraded_recover_max_s=max_s)

    assert RouterConfig(primary="127.0.0.1:1", standby="127.0.0.1:2").policy().degraded_recover_max_s == 120.0
    assert cfg(30.0).policy().degraded_recover_max_s == 30.0
    assert cfg(5.0).policy().degraded_recover_max_s == 5.0    # equal to degraded_recover_s is allowed
    with pytest.raises(ConfigError) as err:
        cfg(4.0)
    assert "degraded_recover_max_s=4.0: must be >= degraded_recover_s=5.0" in str(err.value)
