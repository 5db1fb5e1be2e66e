"""Which workers a router has: configured addresses, DNS names expanded, lookups failing and shrinking."""

from __future__ import annotations

import asyncio

import pytest

from eagleeye.router.fleet import Backend, Role
from eagleeye.router.membership import Entry, Membership, entries, plan

P, S = Role.PRIMARY, Role.STANDBY


def named(members: dict[Backend, str]) -> dict[str, str]:
    return {b.name: a for b, a in members.items()}


@pytest.mark.parametrize(("primary", "standby", "resolved", "want"), [
    ("10.0.0.1:1", "10.0.0.2:1", {}, {"primary": "10.0.0.1:1", "standby": "10.0.0.2:1"}),
    # A pair of names, one address each: dialled by name, as always (gRPC resolves them).
    ("gpu-a:1", "gpu-b:1", {"gpu-a:1": ("10.0.0.1:1",), "gpu-b:1": ("10.0.0.2:1",)},
     {"primary": "gpu-a:1", "standby": "gpu-b:1"}),
    # A headless Service with three pods: three primaries, by address.
    ("detector:1", "10.0.0.9:1", {"detector:1": ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")},
     {"primary/10.0.0.1:1": "10.0.0.1:1", "primary/10.0.0.2:1": "10.0.0.2:1", "primary/10.0.0.3:1": "10.0.0.3:1",
      "standby/10.0.0.9:1": "10.0.0.9:1"}),
    # Listed addresses: a pool.
    ("10.0.0.1:1,10.0.0.2:1", "10.0.0.9:1", {},
     {"primary/10.0.0.1:1": "10.0.0.1:1", "primary/10.0.0.2:1": "10.0.0.2:1", "standby/10.0.0.9:1": "10.0.0.9:1"}),
    # A name not resolved yet in a pool: dialled by name until it resolves.
    ("10.0.0.1:1,10.0.0.2:1", "standby:1", {},
     {"primary/10.0.0.1:1": "10.0.0.1:1", "primary/10.0.0.2:1": "10.0.0.2:1", "standby/standby:1": "standby:1"}),
    # A name that resolves to nothing (scaled to zero) adds no worker.
    ("10.0.0.1:1,extra:1", "10.0.0.9:1", {"extra:1": ()},
     {"primary/10.0.0.1:1": "10.0.0.1:1", "standby/10.0.0.9:1": "10.0.0.9:1"}),
    # One address under two entries is one worker, in its first role.
    ("detector:1", "10.0.0.2:1", {"detector:1": ("10.0.0.1:1", "10.0.0.2:1")},
     {"primary/10.0.0.1:1": "10.0.0.1:1", "primary/10.0.0.2:1": "10.0.0.2:1"}),
])
def test_plan(primary: str, standby: str, resolved: dict[str, tuple[str, ...]], want: dict[str, str]) -> None:
    configured = entries(primary, standby)
    got = plan(configured, {e: resolved[e.target] for e in configured if e.target in resolved})
    assert named(got) == want
    assert all(b.role is (P if b.name.startswith("primary") else S) for b in got)


def test_ip_literals_are_never_looked_up() -> None:
    assert [e.literal for e in entries("10.0.0.1:1,[::1]:2,host:3", "standby:1")] == [True, True, False, False]


async def test_lookups_grow_shrink_and_survive_failures() -> None:
    answers: dict[str, list[tuple[str, int]] | OSError] = {"detector": [("10.0.0.1", 1), ("10.0.0.2", 1)]}

    async def lookup(host: str, port: int) -> list[tuple[str, int]]:
        a = answers[host]
        if isinstance(a, OSError):
            raise a
        return a

    changes: list[dict[str, str]] = []
    m = Membership(entries("detector:1", "10.0.0.9:1"), lambda members: changes.append(named(members)), lookup)
    assert named(m.members) == {"primary": "detector:1", "standby": "10.0.0.9:1"}  # before the first lookup
    await m.resolve()
    assert changes[-1] == {"primary/10.0.0.1:1": "10.0.0.1:1", "primary/10.0.0.2:1": "10.0.0.2:1",
                           "standby/10.0.0.9:1": "10.0.0.9:1"}
    answers["detector"] = [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]   # scaled out
    await m.resolve()
    assert "primary/10.0.0.3:1" in changes[-1] and len(changes) == 2
    answers["detector"] = OSError("Temporary failure in name resolution")       # DNS trouble: keep the pool
    await m.resolve()
    assert len(changes) == 2
    answers["detector"] = [("10.0.0.2", 1), ("10.0.0.3", 1)]                    # scaled in
    await m.resolve()
    assert set(changes[-1]) == {"primary/10.0.0.2:1", "primary/10.0.0.3:1", "standby/10.0.0.9:1"}


async def test_a_poke_looks_up_again_without_waiting_for_the_interval() -> None:
    calls = 0
    looked = asyncio.Event()

    async def lookup(host: str, port: int) -> list[tuple[str, int]]:
        nonlocal calls
        calls += 1
        looked.set()
        return [("10.0.0.1", 1)]

    m = Membership([Entry(P, "detector:1"), Entry(S, "10.0.0.9:1")], lambda _: None, lookup)
    task = asyncio.create_task(m.run())
    try:
        await asyncio.wait_for(looked.wait(), 5)
        looked.clear()
        m.poke()
        await asyncio.wait_for(looked.wait(), 3)   # well before RESOLVE_INTERVAL_S (5 s)
        assert calls == 2
    finally:
        task.cancel()
