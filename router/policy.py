"""The router's switching policy: a pure state machine. Backend views and `now` in, a decision out.

No gRPC, no asyncio, no clock: the shell calls `update` whenever a backend's view changes and on a
timer (the ramp advances with time), and publishes what comes back.

    NORMAL        both ready, primary with headroom          95 / 5
    DEGRADED      primary ready but without headroom         50 / 50
    FAILOVER      primary not ready                           0 / 100
    RECOVERING    primary ready again: hold-down, then ramp   0 / 100 -> 95 / 5
    STANDBY_DOWN  standby not ready (redundancy lost)       100 / 0
    BOTH_DOWN     neither ready: fail fast                    0 / 0

A primary must stay ready for the hold-down time *and* pass a number of consecutive checks before the
ramp starts; a failure during hold-down or ramp returns to FAILOVER and multiplies the next hold-down
(capped), so a flapping primary cannot make traffic oscillate.

DEGRADED is damped the same way: leaving it needs the primary's headroom back continuously for the
degraded hold *and* the consecutive checks; entering it again within `hold_down_reset_s` of the last
DEGRADED episode ending multiplies the degraded hold (capped), and `hold_down_reset_s` in NORMAL resets
it, so a primary whose headroom flaps under sustained overload stays at the degraded split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class State(Enum):
    """Where traffic goes, by policy."""

    NORMAL = "NORMAL"
    DEGRADED = "DEGRADED"
    FAILOVER = "FAILOVER"
    RECOVERING = "RECOVERING"
    STANDBY_DOWN = "STANDBY_DOWN"
    BOTH_DOWN = "BOTH_DOWN"
    STANDBYS_SHORT = "STANDBYS_SHORT"  # a fleet's (router/fleetpolicy.py): more failed primaries than ready standbys


# Every (new state, cause) a Transition can carry; metrics start each at zero.
TRANSITION_CAUSES: tuple[tuple[State, str], ...] = (
    (State.FAILOVER, "primary_failed"), (State.FAILOVER, "primary_failed_in_recovery"),
    (State.FAILOVER, "primary_not_ready_yet"), (State.BOTH_DOWN, "both_failed"),
    (State.STANDBY_DOWN, "standby_failed"), (State.RECOVERING, "primary_recovered"),
    (State.RECOVERING, "ramp_started"), (State.DEGRADED, "headroom_lost"), (State.NORMAL, "headroom_back"),
    *((s, c) for s in (State.NORMAL, State.DEGRADED) for c in ("both_ready", "primary_first_ready", "ramp_complete")),
    # A fleet's own changes (router/fleetpolicy.py; only with more than one primary or standby).
    (State.STANDBYS_SHORT, "standbys_short"), (State.BOTH_DOWN, "all_failed"),
    *((s, "fleet_changed") for s in (State.NORMAL, State.DEGRADED, State.FAILOVER, State.RECOVERING,
                                     State.STANDBY_DOWN)),
)


# An operator's Switch(PRIMARY) skips the hold-down of the recovery in progress, or of one that starts
# within this long (the un-drained primary turns ready at the next evaluation), and of no later one.
OPERATOR_SKIP_WINDOW_S = 5.0

@dataclass(frozen=True)
class PolicyConfig:
    """The policy's numbers; defaults from field practice."""

    normal_weights: tuple[float, float] = (95.0, 5.0)   # the standby stays warm and proven by real traffic
    degraded_weights: tuple[float, float] = (50.0, 50.0)
    hold_down_s: float = 10.0
    hold_down_max_s: float = 300.0
    hold_down_multiplier: float = 2.0
    # NORMAL this long without a failure: the next hold-down is back to hold_down_s.
    hold_down_reset_s: float = 300.0
    healthy_checks: int = 5                  # seed practice: 5 healthy probes before switching back
    ramp_s: float = 30.0                     # seed practice: a 30 s ramp
    degraded_recover_s: float = 5.0          # first degraded hold: headroom back this long before leaving DEGRADED
    degraded_recover_max_s: float = 120.0    # cap of the growing degraded hold


@dataclass(frozen=True)
class BackendView:
    """What the watcher knows of one backend, all signals combined."""

    ready: bool
    headroom: bool = True
    healthy_checks: int = 0                  # consecutive successful active checks
    last_ok_at: float | None = None          # when it was last seen healthy
    reason: str = ""                         # why it is not ready or lacks headroom
    been_ready: bool = True                  # it has been ready at least once since the router started


@dataclass(frozen=True)
class Transition:
    """One change of state, for logs, metrics and the admin event stream."""

    at: float
    from_state: State
    to_state: State
    reason: str
    cause: str                               # a fixed word for metrics: primary_failed, ramp_complete, ...
    detection_ms: float | None = None        # last seen healthy -> switch, when a failure caused it


@dataclass(frozen=True)
class Decision:
    """The state and weights (percent of new traffic) to apply now."""

    state: State
    primary_weight: float
    standby_weight: float
    transitions: tuple[Transition, ...] = ()
    hold_down_remaining_s: float = 0.0       # RECOVERING: hold-down left; DEGRADED: degraded hold left
    ramp_progress: float = 0.0
    next_hold_down_s: float = 0.0
    degraded_hold_s: float = 0.0             # headroom must be back this long to leave DEGRADED (now or next)


@dataclass
class _Recovery:
    since: float                 # primary ready again at
    ramp_started: float | None = None


@dataclass
class Policy:
    """The state machine. `update` is the only way time or signals enter."""

    cfg: PolicyConfig = field(default_factory=PolicyConfig)
    state: State = State.BOTH_DOWN          # until the first health arrives, nothing is known to work
    _hold_down: float = -1.0
    _recovery: _Recovery | None = None
    _normal_since: float | None = None
    _headroom_back_since: float | None = None
    _degraded_hold: float = -1.0
    _degraded_ended_at: float | None = None  # when the last DEGRADED episode ended
    _skip_until: float | None = None        # Switch(PRIMARY): recoveries starting by then skip the hold-down
    # FAILOVER only because the primary has not been ready yet since the router started (it is
    # loading, or the router just started): that is not a failure, so when it first becomes ready,
    # traffic comes back without a hold-down. Once seen ready, every failure counts.
    _primary_starting: bool = False

    def __post_init__(self) -> None:
        self._hold_down = self.cfg.hold_down_s
        self._degraded_hold = self.cfg.degraded_recover_s

    def skip_hold_down(self, now: float) -> None:
        """An operator vouches for the primary: the recovery in progress, or one starting within
        OPERATOR_SKIP_WINDOW_S, goes straight to the ramp. Nothing lingers to shorten a later one."""
        self._skip_until = now + OPERATOR_SKIP_WINDOW_S

    def _go(self, to: State, now: float, cause: str, reason: str, out: list[Transition],
            failing: BackendView | None = None) -> None:
        if to is self.state:
            return
        detection = None
        if failing is not None and failing.last_ok_at is not None:
            detection = max(0.0, (now - failing.last_ok_at) * 1000)
        if self.state is State.DEGRADED:
            self._degraded_ended_at = now
        if to is State.DEGRADED:
            # Back in DEGRADED soon after the last episode: the headroom is flapping; hold longer.
            if self._degraded_ended_at is not None and now - self._degraded_ended_at < self.cfg.hold_down_reset_s:
                self._degraded_hold = min(self._degraded_hold * self.cfg.hold_down_multiplier,
                                          max(self.cfg.degraded_recover_max_s, self.cfg.degraded_recover_s))
            reason = f"{reason}; next degraded hold {self._degraded_hold:g} s"
        out.append(Transition(now, self.state, to, reason, cause, detection))
        self.state = to
        self._normal_since = now if to is State.NORMAL else None
        self._headroom_back_since = None
        if to is not State.RECOVERING:
            self._recovery = None

    def _primary_failed(self, primary: BackendView, now: float, out: list[Transition]) -> None:
        if self.state is not State.FAILOVER:
            self._primary_starting = not primary.been_ready
        elif primary.been_ready:
            self._primary_starting = False
        if self.state is State.RECOVERING:
            self._hold_down = min(self._hold_down * self.cfg.hold_down_multiplier, self.cfg.hold_down_max_s)
            cause = "primary_failed_in_recovery"
            reason = (f"primary failed again during recovery ({primary.reason or 'not ready'}); "
                      f"next hold-down {self._hold_down:g} s")
        else:
            cause = "primary_failed" if primary.been_ready else "primary_not_ready_yet"
            reason = f"primary not ready: {primary.reason or 'no reason given'}"
        self._go(State.FAILOVER, now, cause, reason, out, primary)

    def _healthy_target(self, primary: BackendView) -> State:
        return State.NORMAL if primary.headroom else State.DEGRADED

    def _recover(self, primary: BackendView, now: float, out: list[Transition]) -> None:
        rec = self._recovery
        assert rec is not None
        if rec.ramp_started is None:
            held = now - rec.since
            vouched = self._skip_until is not None and rec.since <= self._skip_until
            if vouched or (held >= self._hold_down and primary.healthy_checks >= self.cfg.healthy_checks):
                self._skip_until = None
                rec.ramp_started = now
                reason = (f"primary ready for {held:.1f} s and {primary.healthy_checks} checks: "
                          f"ramping back over {self.cfg.ramp_s:g} s")
                out.append(Transition(now, State.RECOVERING, State.RECOVERING, reason, "ramp_started"))
        if rec.ramp_started is not None and now - rec.ramp_started >= self.cfg.ramp_s:
            self._go(self._healthy_target(primary), now, "ramp_complete", "ramp complete: primary back in service",
                     out)

    def update(self, primary: BackendView, standby: BackendView, now: float) -> Decision:
        """Apply the views at `now` and return what to do."""
        out: list[Transition] = []
        cfg = self.cfg
        if self.state is State.NORMAL and self._normal_since is not None and \
                now - self._normal_since >= cfg.hold_down_reset_s:
            self._hold_down = cfg.hold_down_s
            self._degraded_hold = cfg.degraded_recover_s
            self._degraded_ended_at = None
        if not primary.ready and not standby.ready:
            self._go(State.BOTH_DOWN, now, "both_failed",
                     f"primary not ready ({primary.reason or 'unknown'}) and standby not ready "
                     f"({standby.reason or 'unknown'})", out, primary)
        elif not primary.ready:
            self._primary_failed(primary, now, out)
        elif not standby.ready:
            self._go(State.STANDBY_DOWN, now, "standby_failed",
                     f"standby not ready: {standby.reason or 'no reason given'}; redundancy lost", out, standby)
        elif self.state in (State.BOTH_DOWN, State.STANDBY_DOWN):
            target = self._healthy_target(primary)
            self._go(target, now, "both_ready", "both backends ready" if target is State.NORMAL
                     else f"both backends ready; primary lacks headroom: {primary.reason}", out)
        elif self.state is State.FAILOVER and self._primary_starting:
            self._go(self._healthy_target(primary), now, "primary_first_ready", "primary ready for the first time",
                     out)
        elif self.state is State.FAILOVER:
            self._go(State.RECOVERING, now, "primary_recovered",
                     f"primary ready again: hold-down {self._hold_down:g} s and "
                     f"{cfg.healthy_checks} healthy checks before switching back", out)
            self._recovery = _Recovery(since=now)
            self._recover(primary, now, out)
        elif self.state is State.RECOVERING:
            self._recover(primary, now, out)
        elif self.state is State.NORMAL and not primary.headroom:
            self._go(State.DEGRADED, now, "headroom_lost",
                     f"primary lacks headroom: {primary.reason or 'soft trigger'}", out)
        elif self.state is State.DEGRADED and primary.headroom:
            if self._headroom_back_since is None:
                self._headroom_back_since = now
            held = now - self._headroom_back_since
            if held >= self._degraded_hold and primary.healthy_checks >= cfg.healthy_checks:
                self._go(State.NORMAL, now, "headroom_back",
                         f"primary headroom back for {held:g} s and {primary.healthy_checks} checks "
                         f"(degraded hold {self._degraded_hold:g} s)", out)
        elif self.state is State.DEGRADED:
            self._headroom_back_since = None
        return self._decision(primary, now, tuple(out))

    def _decision(self, primary: BackendView, now: float, transitions: tuple[Transition, ...]) -> Decision:
        cfg = self.cfg
        hold_left, progress = 0.0, 0.0
        if self.state is State.NORMAL:
            weights = cfg.normal_weights
        elif self.state is State.DEGRADED:
            weights = cfg.degraded_weights
            back = self._headroom_back_since
            hold_left = max(0.0, self._degraded_hold - (now - back)) if back is not None else self._degraded_hold
        elif self.state is State.FAILOVER:
            weights = (0.0, 100.0)
        elif self.state is State.STANDBY_DOWN:
            weights = (100.0, 0.0)
        elif self.state is State.BOTH_DOWN:
            weights = (0.0, 0.0)
        else:
            rec = self._recovery
            assert rec is not None
            target = cfg.normal_weights if primary.headroom else cfg.degraded_weights
            if rec.ramp_started is None:
                hold_left = max(0.0, self._hold_down - (now - rec.since))
            else:
                progress = min(1.0, (now - rec.ramp_started) / cfg.ramp_s) if cfg.ramp_s > 0 else 1.0
            share = target[0] * progress
            weights = (share, 100.0 - share)
        return Decision(self.state, weights[0], weights[1], transitions, hold_left, progress, self._hold_down,
                        self._degraded_hold)
