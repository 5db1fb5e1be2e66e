"""The controller's notifications and its bookkeeping for workers that leave (no processes: watchers
are fed their signals directly)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import _async as health_aio

from eagleeye.common.latency import BackendTimers
from eagleeye.router.config import RouterConfig
from eagleeye.router.controller import AT_CAPACITY_HOLD_S, Controller
from eagleeye.router.fleet import Backend
from eagleeye.router.watcher import SERVING, BackendWatcher

P, S = Backend.PRIMARY, Backend.STANDBY


def timers() -> BackendTimers:
    return BackendTimers(0.95, (0.05, 1.0), 4.0, (0.2, 10.0))


async def controller() -> tuple[Controller, dict[Backend, BackendWatcher], list[int]]:
    cfg = RouterConfig(primary="127.0.0.1:9", standby="127.0.0.1:10")
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never connected: the watchers are not started
    watchers = {b: BackendWatcher(b.value, "127.0.0.1:9", channel, cfg) for b in (P, S)}
    ctl = Controller(cfg.policy(), watchers, health_aio.HealthServicer(), {b: timers() for b in (P, S)})
    calls: list[int] = []
    ctl.on_placement_change(lambda: calls.append(1))
    return ctl, watchers, calls


def ready(w: BackendWatcher, ok: bool = True) -> None:
    w.status.watch_connected, w.status.ready_status = True, SERVING if ok else 0


async def test_streams_are_told_when_a_worker_becomes_usable_or_not_and_not_on_every_evaluation() -> None:
    ctl, w, calls = await controller()
    ready(w[P])
    ready(w[S])
    ctl.changed()
    assert len(calls) == 1                     # both usable now
    ctl.reevaluate()                           # time passes (a ramp's tick): nothing to tell
    assert len(calls) == 1
    ctl.set_drain(P, True)                     # an operator's drain: the primary is not usable
    assert len(calls) == 2
    ready(w[S], False)
    ctl.changed()
    assert len(calls) == 3
    ctl.changed()
    assert len(calls) == 3


async def test_a_call_or_leg_that_outlives_its_workers_removal_still_ends_cleanly() -> None:
    ctl, w, _ = await controller()
    ready(w[P])
    ready(w[S])
    ctl.changed()
    ctl.load(S, +1)                            # a stream leg still open on the standby ...
    stall = ctl.stall_s(S)
    ctl.retire(S)
    ctl.leave_grace_s = 0.0                    # ... when its grace is over: removed with the leg open
    ctl._reap()
    assert S not in ctl.watchers
    ctl.record(S, False)                       # the leg breaks: nothing to record, and no KeyError
    ctl.stream_answered(S, 0.01, 0.01)
    assert ctl.stall_s(S) == stall             # its stall time is still known, to give up on it
    assert ctl.hedge_delay_s(S) > 0


async def test_time_the_router_ran_behind_moves_a_silence_later_and_only_by_that_much() -> None:
    """While the router's own loop runs behind (a burst of new calls to set up), answers wait unread:
    a silence measured from a time counts only the time since that the router could have heard one."""
    ctl, _, _ = await controller()
    assert ctl.heard_since(100.0) == 100.0
    ctl.woke(due=100.48, now=100.5)        # on time, give or take a busy host's jitter
    assert ctl.heard_since(100.0) == 100.0
    ctl.woke(due=100.6, now=101.4)         # 0.8 s late: behind from 100.6 to 101.4
    assert ctl.heard_since(100.0) == pytest.approx(100.8)
    assert ctl.heard_since(101.0) == pytest.approx(101.4)
    assert ctl.heard_since(101.5) == 101.5
    assert ctl.progress_at(P) == float("-inf")  # no backend's own progress is invented


async def test_a_worker_that_said_it_lacked_headroom_counts_as_loaded_while_its_backlog_drains() -> None:
    """A worker's headroom comes back once its backlog is under the threshold; the frames still queued
    there wait their turn. A wait on it meanwhile is load (no blame), for AT_CAPACITY_HOLD_S."""
    now = [100.0]
    cfg = RouterConfig(primary="127.0.0.1:9", standby="127.0.0.1:10")
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    w = {b: BackendWatcher(b.value, "127.0.0.1:9", channel, cfg) for b in (P, S)}
    ctl = Controller(cfg.policy(), w, health_aio.HealthServicer(), {b: timers() for b in (P, S)},
                     clock=lambda: now[0])
    ready(w[P])
    ready(w[S])
    ctl.changed()
    assert not ctl.loaded(P) and not ctl.loaded(S)
    w[P].status.headroom_status = 2            # NOT_SERVING: a backlog past its threshold
    ctl.changed()
    assert ctl.loaded(P) and not ctl.loaded(S)
    now[0] = 101.0
    w[P].status.headroom_status = SERVING      # under the threshold again, frames still queued
    ctl.changed()
    assert ctl.loaded(P)
    now[0] = 100.0 + AT_CAPACITY_HOLD_S + 0.01
    assert not ctl.loaded(P)
