"""asyncio waits that never lose a cancellation.

Python 3.11's `asyncio.wait_for` returns the awaited result, and drops the cancellation, when a task is
cancelled in the loop turn its inner call completes in: a loop written around it then never ends, and
whoever stops it waits forever (a router on SIGTERM did). `asyncio.timeout` does not have that flaw;
these helpers use it.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
