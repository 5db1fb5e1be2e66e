"""Decisions for one unary call: where to send it, when to hedge, retry or give up (pure; time passed in).

The shell (router.proxy) starts and cancels the backend calls this asks for, feeds back how each
ended and wakes it at `next_timer()`. Timers are the router's own: a call stuck behind a dead
connection may never see gRPC's deadline fire (FACTS.md), so a per-try timeout and the caller's
deadline are enforced here, not left to the transport.

    first attempt     on the backend the weights pick
    hedge             not answered after the backend's hedge delay: the same request to the other
                      backend too; the first answer wins, the other attempt is cancelled
    retry             a failure that says "this backend, now" (connection lost, UNAVAILABLE, a full
                      worker queue) or the per-try timeout: once, on the other backend
    never retried     the request's own errors (INVALID_ARGUMENT, ...): returned as they are

At most one extra attempt per call (a hedge or a retry), only to a usable backend, and only when the
retry budget allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from eagleeye.common.loopbehind import BEHIND_S
from eagleeye.router.budget import RetryBudget
from eagleeye.router.fleet import Backend, Fleet, RequestCost


class Outcome(Enum):
    """How a backend attempt ended, as the decision needs it."""

    OK = "ok"
    FAILED = "failed"            # this backend, now: connection lost, UNAVAILABLE, cancelled by the backend
    OVERLOADED = "overloaded"    # the worker's queue is full: another may take it; not a fault of the backend
    FINAL = "final"              # the request's own answer (INVALID_ARGUMENT, ...): never tried elsewhere


@dataclass(frozen=True)
class UnaryConfig:
    """Per-try timeout and the hedge delay's bounds."""

    per_try_timeout_s: float = 1.0
    # The hedge delay is the backend's recent p95 (The Tail at Scale), within these bounds. The floor
    # keeps scheduler noise on a busy host from doubling work; the ceiling bounds the tail a hang adds.
    hedge_quantile: float = 0.95
    hedge_delay_min_s: float = 0.05
    hedge_delay_max_s: float = 0.3
    # Added to the per-try timeout and the hedge delay, by the request's size.
    cost: RequestCost = field(default_factory=RequestCost)


# What the shell is asked to do.
@dataclass(frozen=True)
class Send:
    """Start attempt `attempt` on `backend`; `why` is first, hedge or retry (of an attempt on `frm`)."""

    attempt: int
    backend: Backend
    why: str
    frm: Backend | None = None


@dataclass(frozen=True)
class Cancel:
    """Cancel a running attempt: its answer is no longer wanted."""

    attempt: int


@dataclass(frozen=True)
class Reply:
    """Answer the caller with how this attempt ended (its response, or its error)."""

    attempt: int


@dataclass(frozen=True)
class Expire:
    """The caller's deadline has passed: answer DEADLINE_EXCEEDED."""


@dataclass(frozen=True)
class Observe:
    """A real call's outcome for the backend's passive health and latency estimate.

    `ok=False` for a failure (connection lost, UNAVAILABLE), and for a per-try timeout or an attempt a
    hedge overtook only when the backend answered nothing else since the attempt began: a backend
    beaten by its hedge with no answer to anything in between is as good as hung, while one that is
    answering other calls meanwhile is busy with this one (its size, a queue), not failing.
    """

    backend: Backend
    ok: bool
    latency_s: float | None = None
    why: str = field(default="", compare=False)  # a failure's cause, for the ejection's log line


@dataclass(frozen=True)
class Refused:
    """The budget refused an extra attempt (`why`: hedge or retry)."""

    why: str


Action = Send | Cancel | Reply | Expire | Observe | Refused


@dataclass
class _Attempt:
    backend: Backend
    started: float
    running: bool = True
    per_try_checked: bool = False


@dataclass
class UnaryCall:
    """One client call's attempts. `start`, then `on_result`/`on_timer` until `done`."""

    cfg: UnaryConfig
    fleet: Fleet
    budget: RetryBudget
    deadline: float
    size: int = 0                 # the request's bytes: its expected cost
    attempts: list[_Attempt] = field(default_factory=list)
    done: bool = False
    _extra_used: bool = False
    _hedge_at: float | None = None

    def start(self, backend: Backend, now: float) -> list[Action]:
        self.budget.note_call(now)
        self._hedge_at = now + self.fleet.hedge_delay_s(backend) + self._cost_s
        return [self._send(backend, now, "first")]

    @property
    def _cost_s(self) -> float:
        return self.cfg.cost.seconds(self.size)

    @property
    def _per_try_s(self) -> float:
        return self.cfg.per_try_timeout_s + self._cost_s

    def _stuck(self, a: _Attempt) -> Observe | None:
        """The slow attempt `a` as evidence against its backend: only if the backend answered nothing since."""
        if self.fleet.progress_at(a.backend) > a.started:
            return None
        if self.fleet.heard_since(a.started) - a.started >= BEHIND_S:
            return None  # the router's own loop ran behind meanwhile: the answer may be waiting unread
        if self.fleet.loaded(a.backend):
            return None  # it said it is at capacity: a queue, not a fault
        return Observe(a.backend, False, why=f"unary try unanswered for {self._per_try_s:.2f} s, nothing else "
                                            "answered meanwhile")

    def next_timer(self) -> float | None:
        """When to call `on_timer` next (None: only when an attempt ends)."""
        if self.done:
            return None
        at = self.deadline
        if self._hedge_at is not None:
            at = min(at, self._hedge_at)
        for a in self.attempts:
            if a.running and not a.per_try_checked:
                at = min(at, a.started + self._per_try_s)
        return at

    def on_timer(self, now: float) -> list[Action]:
        if self.done:
            return []
        if now >= self.deadline:
            return self._finish([Expire()])
        out: list[Action] = []
        for a in self.attempts:
            if a.running and not a.per_try_checked and now >= a.started + self._per_try_s:
                a.per_try_checked = True
                self._per_try_expired(a, now, out)
        if self._hedge_at is not None and now >= self._hedge_at:
            self._hedge_at = None
            running = [a for a in self.attempts if a.running]
            if len(running) == 1:
                self._extra(running[0].backend, now, "hedge", out)
        return out

    def on_result(self, attempt: int, outcome: Outcome, now: float) -> list[Action]:
        a = self.attempts[attempt]
        if self.done or not a.running:
            return []
        a.running = False
        out: list[Action] = []
        if outcome is Outcome.OK:
            out.append(Observe(a.backend, True, now - a.started))
            for b in self.attempts:
                if b.running and b.started < a.started and (stuck := self._stuck(b)) is not None:
                    out.append(stuck)  # overtaken by its hedge, with nothing else answered meanwhile
            return self._finish([*out, Reply(attempt)])
        if outcome is Outcome.FINAL:
            out.append(Observe(a.backend, True))  # the backend works; the request does not
            return self._finish([*out, Reply(attempt)])
        if outcome is Outcome.OVERLOADED:
            out.append(Observe(a.backend, True))  # busy, and saying so at once: answering, not failing
        if now >= self.deadline:
            return self._finish([Expire()])  # out of time: the caller's deadline, not the backend's fault
        if outcome is Outcome.FAILED:
            out.append(Observe(a.backend, False, why="unary call failed (connection, UNAVAILABLE)"))
        if any(b.running for b in self.attempts):
            return out  # the other attempt may still answer
        self._hedge_at = None
        if not self._extra(a.backend, now, "retry", out):
            return self._finish([*out, Reply(attempt)])
        return out

    def _per_try_expired(self, a: _Attempt, now: float, out: list[Action]) -> None:
        """Abandon a try on a backend that does not answer, if there is somewhere else for the call."""
        hedge_running = any(b.running and b is not a for b in self.attempts)
        if hedge_running or self._extra(a.backend, now, "retry", out):
            a.running = False
            out.insert(0, Cancel(self.attempts.index(a)))
            if (stuck := self._stuck(a)) is not None:
                out.insert(1, stuck)
            self._hedge_at = None
        # else: nowhere to go; it may still answer before the caller's deadline

    def _extra(self, frm: Backend, now: float, why: str, out: list[Action]) -> bool:
        """One extra attempt for what `frm` has not answered, on another usable worker, if the budget allows."""
        if self._extra_used:
            return False
        backend = self.fleet.alternative(frm)
        if backend is None:
            return False
        if not self.budget.try_spend(now):
            out.append(Refused(why))
            return False
        self._extra_used = True
        out.append(self._send(backend, now, why, frm))
        return True

    def _send(self, backend: Backend, now: float, why: str, frm: Backend | None = None) -> Send:
        self.attempts.append(_Attempt(backend, now))
        return Send(len(self.attempts) - 1, backend, why, frm)

    def _finish(self, out: list[Action]) -> list[Action]:
        self.done = True
        cancels: list[Action] = []
        for i, a in enumerate(self.attempts):
            if a.running:
                a.running = False
                cancels.append(Cancel(i))
        return cancels + out
