"""PassGate: a burst is let through a few callers per event-loop pass, in order, and the loop's other
callbacks run between the passes."""

from __future__ import annotations

import asyncio

import pytest

from eagleeye.common.aio import PassGate


async def test_a_burst_goes_through_per_pass_at_a_time_in_order_with_other_callbacks_between() -> None:
    gate = PassGate(3)
    log: list[str] = []
    passes = 0

    def tick() -> None:  # another callback on the loop, like a health answer: it runs every pass
        nonlocal passes
        passes += 1
        log.append(f"tick{passes}")
        if passes < 10:
            asyncio.get_running_loop().call_soon(tick)

    async def caller(i: int) -> None:
        await gate.turn()
        log.append(f"c{i}")

    asyncio.get_running_loop().call_soon(tick)
    await asyncio.gather(*(caller(i) for i in range(8)))
    callers = [e for e in log if e.startswith("c")]
    assert callers == [f"c{i}" for i in range(8)]           # first come, first served
    between: list[list[str]] = [[]]
    for e in log:
        if e.startswith("tick"):
            between.append([])
        else:
            between[-1].append(e)
    assert max(len(b) for b in between) <= 3                # never more than 3 between two ticks
    assert gate.waiting == 0


async def test_a_caller_cancelled_while_waiting_gives_its_place_to_the_next() -> None:
    gate = PassGate(1)
    await gate.turn()                                        # this pass's turn is taken
    first, second, third = (asyncio.ensure_future(gate.turn()) for _ in range(3))
    await asyncio.sleep(0)                                   # a new pass: `first` goes, the others wait
    assert first.done() and gate.waiting == 2
    second.cancel()
    await asyncio.wait_for(third, 1)                         # not stuck behind the cancelled one
    assert second.cancelled() and gate.waiting == 0


def test_at_least_one_per_pass() -> None:
    with pytest.raises(ValueError):
        PassGate(0)
