"""The switching policy for N primaries and M standbys: pure, like router/policy.py, which it is built on.

Each primary has its own *slot*: the pair policy run over that primary and the standby pool as one
backend (ready while any standby is). A slot's decision splits the primary's share of the traffic
(100/N %) between the primary and the standbys, with the hold-down, ramp, flap damping and degraded
hold of the pair policy, per primary. One primary failing moves its share, and only its share, to the
standbys; the other slots are not touched. With N=1 and M=1 the fleet policy is the pair policy.

A standby carries at most one primary's share. When the failed primaries' shares (counted as the
standby traffic beyond its normal warm share, in primary shares) exceed what the ready standbys can
carry, the standbys are filled to their capacity, the rest is shared by the surviving primaries, and
the fleet's state is STANDBYS_SHORT: the service runs, on less capacity than it needs.

    fleet state      when
    BOTH_DOWN        no worker can take traffic
    STANDBYS_SHORT   failed primaries outnumber the ready standbys (survivors share the load)
    FAILOVER         some primary is failed over, the standbys carry its share
    RECOVERING       some primary is in hold-down or ramping back
    DEGRADED         some primary lacks headroom (its slot runs the degraded split)
    STANDBY_DOWN     no standby ready (redundancy lost), all primaries serving
    NORMAL           every slot NORMAL
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from eagleeye.router.policy import BackendView, Decision, Policy, PolicyConfig, State, Transition

# The fleet's state, worst first: the slot states and STANDBYS_SHORT ranked by what they mean to users.
SEVERITY: tuple[State, ...] = (State.BOTH_DOWN, State.STANDBYS_SHORT, State.FAILOVER, State.RECOVERING,
                               State.DEGRADED, State.STANDBY_DOWN, State.NORMAL)


class Side(Enum):
    """Where a stream homed on a primary belongs now."""

    STAY = "stay"            # wherever it is (its slot is DEGRADED: running streams do not move)
    HOME = "home"            # on its home primary
    STANDBYS = "standbys"    # on a standby (whichever it is on, if that one is ready)
    PRIMARIES = "primaries"  # on another primary (standbys short): whichever it is on, if ready
    NOWHERE = "nowhere"      # nothing can take it


@dataclass(frozen=True)
class FleetTransition:
    """A transition of one primary's slot (`worker` names the primary) or of the fleet (`worker` "")."""

    worker: str
    transition: Transition


@dataclass(frozen=True)
class FleetDecision:
    """What to do now: the fleet's state and every worker's weight (percent of new traffic)."""

    state: State
    weights: Mapping[str, float]
    slots: Mapping[str, Decision]          # per primary: its slot's pair decision
    primary_share: Mapping[str, float] = field(default_factory=dict)   # per primary: fraction kept at home
    to_standbys: float = 1.0               # of traffic leaving its home: fraction the standbys take (rest:
    #                                        the other primaries, when the standbys are short)
    transitions: tuple[FleetTransition, ...] = ()
    short_by: float = 0.0                  # primary shares the ready standbys cannot carry

    def side(self, home: str, affinity: float) -> Side:
        """Where a stream placed on primary `home`, with `affinity` in [0, 100), belongs.

        A stream keeps its home while `affinity` is below the home primary's share in its slot, so as
        a ramp raises that share, each stream goes home exactly once. A stream whose home is gone (the
        primary left the pool) has none: the caller gives it a new one.
        """
        total = sum(self.weights.values())
        if total <= 0:
            return Side.NOWHERE
        slot = self.slots.get(home)
        if slot is None:
            return Side.PRIMARIES
        if slot.state is State.DEGRADED:
            return Side.STAY
        keep = self.primary_share.get(home, 0.0)
        if affinity < keep * 100:
            return Side.HOME
        # Leaving home: to a standby or, for the part the standbys cannot carry, another primary.
        rest = (affinity - keep * 100) / max(1e-9, 100 - keep * 100)
        standbys_up = any(w > 0 for n, w in self.weights.items() if n not in self.slots)
        others_up = any(w > 0 for n, w in self.weights.items() if n in self.slots and n != home)
        if standbys_up and (rest < self.to_standbys or not others_up):
            return Side.STANDBYS
        return Side.PRIMARIES if others_up else Side.HOME if keep > 0 else Side.NOWHERE


@dataclass
class FleetPolicy:
    """Slots per primary, and the standby pool's capacity. `update` is the only way time or signals enter."""

    cfg: PolicyConfig = field(default_factory=PolicyConfig)
    state: State = State.BOTH_DOWN
    _slots: dict[str, Policy] = field(default_factory=dict)

    def skip_hold_down(self, now: float, worker: str | None = None) -> None:
        """An operator vouches for a primary (or, with no name, every primary): see Policy.skip_hold_down."""
        for name, slot in self._slots.items():
            if worker is None or name == worker:
                slot.skip_hold_down(now)

    def update(self, primaries: Mapping[str, BackendView], standbys: Mapping[str, BackendView],
               now: float) -> FleetDecision:
        """Apply the views at `now`. Primaries new to the pool get a slot; those gone lose theirs."""
        for gone in set(self._slots) - set(primaries):
            del self._slots[gone]
        pool = _pool_view(standbys)
        out: list[FleetTransition] = []
        slots: dict[str, Decision] = {}
        for name, view in primaries.items():
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = Policy(self.cfg)
            d = slot.update(view, pool, now)
            slots[name] = d
            out += (FleetTransition(name, t) for t in d.transitions)
        weights, keep, to_standbys, short_by = self._weights(primaries, standbys, slots)
        state = _fleet_state(slots, weights, short_by)
        # The slot transitions name their primary; in a fleet (not a pair) its own changes are events too.
        if (len(primaries) > 1 or len(standbys) > 1) and state is not self.state:
            out.append(FleetTransition("", Transition(now, self.state, state, _fleet_reason(state, slots, short_by),
                                                      _fleet_cause(state))))
        self.state = state
        return FleetDecision(state, weights, slots, keep, to_standbys, tuple(out), short_by)

    def _weights(self, primaries: Mapping[str, BackendView], standbys: Mapping[str, BackendView],
                 slots: Mapping[str, Decision]) -> tuple[dict[str, float], dict[str, float], float, float]:
        share = 100.0 / len(primaries) if primaries else 0.0
        warm = self.cfg.normal_weights[1] / sum(self.cfg.normal_weights) if sum(self.cfg.normal_weights) else 0.0
        weights: dict[str, float] = {}
        keep: dict[str, float] = {}
        demand = 0.0       # percent of traffic the slots send to the standbys
        covering = 0.0     # ... beyond the warm share, in primary shares
        for name, d in slots.items():
            split = d.primary_weight + d.standby_weight
            kept = d.primary_weight / split if split > 0 else 0.0
            keep[name] = kept
            weights[name] = share * kept
            if split > 0:
                demand += share * (1 - kept)
                covering += max(0.0, (1 - kept) - warm)
            else:
                covering += 1.0  # primary down and no standby: a whole share with nowhere to go yet
                demand += share
        ready = [n for n, v in standbys.items() if v.ready]
        to_standbys, short_by = 1.0, 0.0
        if not primaries:
            demand = 100.0 if ready else 0.0
        elif covering > len(ready) + 1e-9:
            short_by = covering - len(ready)
            capacity = len(ready) * share
            carried = min(demand, capacity)
            excess = demand - carried
            others = sum(weights.values())
            if others > 0:
                for name in weights:
                    weights[name] += excess * weights[name] / others
                to_standbys = carried / demand if demand > 0 else 0.0
                demand = carried
            elif not ready:
                demand = 0.0
        for name in standbys:
            weights[name] = demand / len(ready) if name in ready else 0.0
        return weights, keep, to_standbys, short_by


def _pool_view(standbys: Mapping[str, BackendView]) -> BackendView:
    """The standbys as one backend for the slots: ready while any is."""
    if len(standbys) == 1:
        return next(iter(standbys.values()))
    ready = [v for v in standbys.values() if v.ready]
    if ready:
        return replace(max(ready, key=lambda v: v.healthy_checks), reason="")
    seen = [v.last_ok_at for v in standbys.values() if v.last_ok_at is not None]
    reasons = "; ".join(sorted({v.reason for v in standbys.values() if v.reason})) or (
        "no standby configured" if not standbys else "no standby ready")
    return BackendView(ready=False, headroom=False, last_ok_at=max(seen) if seen else None, reason=reasons,
                       been_ready=any(v.been_ready for v in standbys.values()))


def _fleet_state(slots: Mapping[str, Decision], weights: Mapping[str, float], short_by: float) -> State:
    if sum(weights.values()) <= 0:
        return State.BOTH_DOWN
    if short_by > 0:
        return State.STANDBYS_SHORT
    states = {d.state for d in slots.values()}
    if State.BOTH_DOWN in states:  # a primary down with no standby ready, others serving: they are short
        return State.STANDBYS_SHORT
    return next((s for s in SEVERITY if s in states), State.NORMAL)


def _fleet_reason(state: State, slots: Mapping[str, Decision], short_by: float) -> str:
    counts: dict[State, list[str]] = {}
    for name, d in slots.items():
        counts.setdefault(d.state, []).append(name)
    parts = [f"{s.value}: {', '.join(sorted(names))}" for s, names in sorted(
        counts.items(), key=lambda kv: SEVERITY.index(kv[0]))]
    head = {State.STANDBYS_SHORT: f"failed primaries outnumber the ready standbys by {short_by:.2g} shares; "
                                  "the surviving primaries share the load",
            State.BOTH_DOWN: "no worker can take traffic"}.get(state, f"fleet {state.value}")
    return f"{head} ({'; '.join(parts)})"


def _fleet_cause(state: State) -> str:
    return {State.STANDBYS_SHORT: "standbys_short", State.BOTH_DOWN: "all_failed"}.get(state, "fleet_changed")
