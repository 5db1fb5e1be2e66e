"""The unary decisions, step by step with a fake clock: hedges, retries, per-try timers, the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest

from eagleeye.common.loopbehind import LoopBehind
from eagleeye.router.budget import BudgetConfig, RetryBudget
from eagleeye.router.fleet import Backend, StreamPlace
from eagleeye.router.unary import Action, Cancel, Expire, Observe, Outcome, Refused, Reply, Send, UnaryCall, UnaryConfig

P, S = Backend.PRIMARY, Backend.STANDBY
OK, FAILED, OVERLOADED, FINAL = Outcome.OK, Outcome.FAILED, Outcome.OVERLOADED, Outcome.FINAL


def approx(x: float) -> float:
    return cast(float, pytest.approx(x))


@dataclass
class FakeFleet:
    usable_set: set[Backend] = field(default_factory=lambda: {P, S})
    hedge: float = 0.05
    progress: dict[Backend, float] = field(default_factory=dict)   # the backend's last answer to anything
    behind: LoopBehind = field(default_factory=LoopBehind)          # when the router's own loop ran late
    at_capacity: set[Backend] = field(default_factory=set)          # headroom NOT_SERVING

    def usable(self, backend: Backend) -> bool:
        return backend in self.usable_set

    def alternative(self, backend: Backend | None) -> Backend | None:
        return next((b for b in (P, S) if b != backend and b in self.usable_set), None)

    def placement(self, place: StreamPlace, current: Backend | None) -> Backend | None:
        return None

    def hedge_delay_s(self, backend: Backend) -> float:
        return self.hedge

    def progress_at(self, backend: Backend) -> float:
        return self.progress.get(backend, float("-inf"))

    def heard_since(self, t: float) -> float:
        return t + self.behind.after(t)

    def loaded(self, backend: Backend) -> bool:
        return backend in self.at_capacity

    def stall_s(self, backend: Backend) -> float:
        return 1.0


def behind(due: float, now: float) -> LoopBehind:
    spans = LoopBehind()
    spans.woke(due, now)
    return spans


def call(fleet: FakeFleet | None = None, budget: RetryBudget | None = None, deadline: float = 2.0) -> UnaryCall:
    return UnaryCall(UnaryConfig(per_try_timeout_s=1.0), fleet or FakeFleet(),
                     budget or RetryBudget(BudgetConfig()), deadline)


# Each case: steps of (time, event) after start(P, 0.0) and the actions each step must produce.
# Events: "timer", or (attempt, outcome).
Step = tuple[float, object, list[Action]]
CASES: dict[str, tuple[FakeFleet, list[Step]]] = {
    "answered before the hedge delay: nothing else happens": (FakeFleet(), [
        (0.02, (0, OK), [Observe(P, True, 0.02), Reply(0)]),
    ]),
    "late answer: hedged to the standby, the first answer wins, the hedged try counts against its backend": (
        FakeFleet(), [
            (0.05, "timer", [Send(1, S, "hedge", P)]),
            (0.07, (1, OK), [Cancel(0), Observe(S, True, approx(0.02)), Observe(P, False), Reply(1)]),
        ]),
    "the original answers after the hedge went out: the hedge is cancelled, no blame": (FakeFleet(), [
        (0.05, "timer", [Send(1, S, "hedge", P)]),
        (0.06, (0, OK), [Cancel(1), Observe(P, True, 0.06), Reply(0)]),
    ]),
    "no usable other backend: no hedge, the call waits for the caller's deadline": (FakeFleet({P}), [
        (0.05, "timer", []),
        (1.0, "timer", []),
        (2.0, "timer", [Cancel(0), Expire()]),
    ]),
    "connection failure: retried once on the other backend": (FakeFleet(), [
        (0.01, (0, FAILED), [Observe(P, False), Send(1, S, "retry", P)]),
        (0.03, (1, OK), [Observe(S, True, approx(0.02)), Reply(1)]),
    ]),
    "both fail: the second failure is the answer": (FakeFleet(), [
        (0.01, (0, FAILED), [Observe(P, False), Send(1, S, "retry", P)]),
        (0.02, (1, FAILED), [Observe(S, False), Reply(1)]),
    ]),
    "a client error is never retried": (FakeFleet(), [
        (0.01, (0, FINAL), [Observe(P, True), Reply(0)]),
    ]),
    "a client error while a hedge runs: answered at once, the hedge cancelled": (FakeFleet(), [
        (0.05, "timer", [Send(1, S, "hedge", P)]),
        (0.06, (0, FINAL), [Cancel(1), Observe(P, True), Reply(0)]),
    ]),
    "a full queue is tried on the other worker, without blaming the first (it answered: progress)": (
        FakeFleet(), [
        (0.01, (0, OVERLOADED), [Observe(P, True), Send(1, S, "retry", P)]),
        (0.02, (1, OK), [Observe(S, True, approx(0.01)), Reply(1)]),
    ]),
    "a full queue with no other worker: the caller gets RESOURCE_EXHAUSTED": (FakeFleet({P}), [
        (0.01, (0, OVERLOADED), [Observe(P, True), Reply(0)]),
    ]),
    "a failure while the hedge runs: wait for the hedge": (FakeFleet(), [
        (0.05, "timer", [Send(1, S, "hedge", P)]),
        (0.06, (0, FAILED), [Observe(P, False)]),
        (0.08, (1, OK), [Observe(S, True, approx(0.03)), Reply(1)]),
    ]),
    "hedge also hangs: the original's per-try timer cancels it, the hedge goes on until the deadline": (
        FakeFleet(), [
            (0.05, "timer", [Send(1, S, "hedge", P)]),
            (1.0, "timer", [Cancel(0), Observe(P, False)]),
            (1.05, "timer", []),  # the hedge's per-try: nowhere else to go (one extra attempt per call)
            (2.0, "timer", [Cancel(1), Expire()]),
        ]),
    "the other backend becomes usable only later: per-try timeout then retry": (FakeFleet({P}), [
        (0.05, "timer", []),
    ]),
    "a hedge overtook a backend that answered other calls meanwhile: busy, not failing, no blame": (
        FakeFleet(progress={P: 0.03}), [
            (0.05, "timer", [Send(1, S, "hedge", P)]),
            (0.07, (1, OK), [Cancel(0), Observe(S, True, approx(0.02)), Reply(1)]),
        ]),
    "a per-try timeout on a backend that answered other calls meanwhile: retried elsewhere, no blame": (
        FakeFleet(hedge=5.0, progress={P: 0.5}), [
            (1.0, "timer", [Cancel(0), Send(1, S, "retry", P)]),
        ]),
    "a per-try timeout on a backend silent since the try began: blamed": (
        FakeFleet(hedge=5.0, progress={P: -1.0}), [
            (1.0, "timer", [Cancel(0), Observe(P, False), Send(1, S, "retry", P)]),
        ]),
    "a per-try timeout while the router's own loop ran behind: retried elsewhere, no blame": (
        FakeFleet(hedge=5.0, progress={P: -1.0}, behind=behind(0.3, 0.6)), [
            (1.0, "timer", [Cancel(0), Send(1, S, "retry", P)]),
        ]),
    "a per-try timeout on a backend at capacity (headroom NOT_SERVING): retried elsewhere, no blame": (
        FakeFleet(hedge=5.0, progress={P: -1.0}, at_capacity={P}), [
            (1.0, "timer", [Cancel(0), Send(1, S, "retry", P)]),
        ]),
    "the caller's deadline passes while the backend reports DEADLINE_EXCEEDED: not the backend's fault": (
        FakeFleet(), [
            (0.05, "timer", [Send(1, S, "hedge", P)]),
            (2.0, (0, FAILED), [Cancel(1), Expire()]),
        ]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unary_steps(name: str) -> None:
    fleet, steps = CASES[name]
    c = call(fleet)
    assert c.start(P, 0.0) == [Send(0, P, "first")]
    for at, ev, expected in steps:
        got = c.on_timer(at) if ev == "timer" else c.on_result(ev[0], ev[1], at)  # type: ignore[index]
        assert got == expected, f"at {at}: {ev}"


def test_per_try_timeout_retries_when_the_other_backend_became_usable() -> None:
    fleet = FakeFleet({P})
    c = call(fleet)
    c.start(P, 0.0)
    assert c.on_timer(0.05) == []  # no hedge: the standby is not usable
    fleet.usable_set.add(S)
    assert c.next_timer() == 1.0
    assert c.on_timer(1.0) == [Cancel(0), Observe(P, False), Send(1, S, "retry", P)]
    assert c.on_result(0, OK, 1.01) == []  # a late answer from the cancelled try is ignored
    assert c.on_result(1, OK, 1.02) == [Observe(S, True, approx(0.02)), Reply(1)]
    assert c.done and c.next_timer() is None


def test_timers_follow_the_hedge_the_per_try_timeout_and_the_deadline() -> None:
    c = call(FakeFleet(hedge=0.08), deadline=10.5)
    c.start(P, 10.0)
    assert c.next_timer() == pytest.approx(10.08)
    c.on_timer(10.08)
    assert c.next_timer() == pytest.approx(10.5)  # per-try (11.0) is later than the caller's deadline
    assert c.on_timer(10.5) == [Cancel(0), Cancel(1), Expire()]


def test_an_exhausted_budget_refuses_hedges_and_retries() -> None:
    budget = RetryBudget(BudgetConfig(ratio=0.0, min_per_s=0.1, window_s=10.0))  # one extra per 10 s
    first = call(budget=budget)
    first.start(P, 0.0)
    assert first.on_timer(0.05) == [Send(1, S, "hedge", P)]
    second = call(budget=budget)
    second.start(P, 1.0)
    assert second.on_timer(1.05) == [Refused("hedge")]
    assert second.on_result(0, FAILED, 1.1) == [Observe(P, False), Refused("retry"), Reply(0)]
    assert budget.refused == 2


def test_the_budget_grows_with_traffic_and_forgets_old_spending() -> None:
    budget = RetryBudget(BudgetConfig(ratio=0.1, min_per_s=0.0, window_s=10.0))
    assert not budget.try_spend(0.0)
    for i in range(100):
        budget.note_call(i * 0.05)             # 100 calls in 5 s: 10 extra attempts allowed
    assert sum(budget.try_spend(5.0) for _ in range(20)) == 10
    assert not budget.try_spend(9.9)
    for i in range(100):
        budget.note_call(15.0 + i * 0.01)      # the first 100 calls and their extras left the window
    assert sum(budget.try_spend(16.0) for _ in range(20)) == 10


@pytest.mark.parametrize(("size", "hedge_at", "per_try_at"), [
    (0, 0.05, 1.0),                       # a small frame: the backend's own timers
    (1024 * 1024, 0.05, 1.0),             # up to 1 MiB: the learned timers cover it
    (11 * 1024 * 1024, 1.05, 2.0),        # 10 MiB more at 0.1 s/MiB: one more second for both
])
def test_a_requests_size_adds_its_expected_cost_to_the_hedge_delay_and_per_try_timeout(
        size: int, hedge_at: float, per_try_at: float) -> None:
    c = UnaryCall(UnaryConfig(per_try_timeout_s=1.0), FakeFleet(), RetryBudget(BudgetConfig()), 30.0, size=size)
    c.start(P, 0.0)
    assert c.next_timer() == approx(hedge_at)
    assert c.on_timer(hedge_at - 0.001) == []
    assert c.on_timer(hedge_at) == [Send(1, S, "hedge", P)]
    assert c.next_timer() == approx(per_try_at)
