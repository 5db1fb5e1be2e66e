"""asyncio waits that never lose a cancellation, and a gate that spreads a burst over loop passes.

Python 3.11's `asyncio.wait_for` returns the awaited result, and drops the cancellation, when a task is
cancelled in the loop turn its inner call completes in: a loop written around it then never ends, and
whoever stops it waits forever (a router on SIGTERM did). `asyncio.timeout` does not have that flaw;
these helpers use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class PassGate:
    """At most `per_pass` callers through per event-loop pass; the others wait their turn, first come
    first served.

    asyncio runs every callback that is ready in one pass: a burst of a thousand new streams, each
    taking half a millisecond to set up, would hold the loop (health answers, timers) for half a second.
    Through the gate the same burst takes as long, spread over passes the loop's other work runs between.
    """

    def __init__(self, per_pass: int) -> None:
        if per_pass < 1:
            raise ValueError("per_pass must be at least 1")
        self.per_pass = per_pass
        self._used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._reset_pending = False

    @property
    def waiting(self) -> int:
        """Callers waiting for their turn."""
        return len(self._waiters)

    async def turn(self) -> None:
        """Return once it is this caller's turn (at once while the pass has room and nobody waits)."""
        if self._used < self.per_pass and not self._waiters:
            self._used += 1
            self._next_pass()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._next_pass()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():   # given a turn in the same pass it was cancelled: pass it on
                self._used -= 1
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    def _next_pass(self) -> None:
        if not self._reset_pending:
            self._reset_pending = True
            asyncio.get_running_loop().call_soon(self._reset)

    def _reset(self) -> None:
        """A new pass: the next callers in line get its turns."""
        self._reset_pending = False
        self._used = 0
        while self._waiters and self._used < self.per_pass:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._used += 1
        if self._waiters or self._used:
            self._next_pass()
