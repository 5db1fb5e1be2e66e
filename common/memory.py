"""Large buffers handed back to the operating system when freed (glibc's malloc, Linux).

glibc serves an allocation over its mmap threshold with a mapping of its own, unmapped when freed; but
the threshold grows by itself (up to 32 MiB) each time such a block is freed, after which frames of a
few MB come from the heap, whose freed space stays resident: a process that once held a burst of large
frames keeps that memory (FACTS.md: 1.1 GB after the clients left). Fixing the threshold stops that
growth, so what a memory bound counts is what the process holds, at the peak and after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("eagleeye.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Frames and images are tens of KB to tens of MB: from 1 MiB up, each gets its own mapping.
MMAP_THRESHOLD = 1024 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds; False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


# A full collection after this many bytes of large requests have been let go of (see LargeMessageReclaimer).
RECLAIM_AFTER_BYTES = 64 * 1024 * 1024


class LargeMessageReclaimer:
    """Runs Python's full cyclic collection once `after_bytes` of large requests (each at least
    `large_bytes`) have been let go of since the last one.

    grpcio's aio server leaves a little of each finished call in a reference cycle (the closure it finds
    the call's handler with), and what the call held in gRPC's core stays with it until Python's cyclic
    collector runs, which for the old generation where a call of a second or more ends up is rare.
    Measured with a router answering 12.7 MB requests one at a time: +13 MB resident per call, 48 ->
    250 MiB, until a full collection dropped it to 56 MiB; six at a time, 600-680 MiB peaks. Collecting
    after every 64 MiB of large requests keeps that garbage to about 64 MiB, at 10-35 ms of the event loop
    per collection (2 cores, under that load), and never for small requests.
    """

    def __init__(self, after_bytes: int = RECLAIM_AFTER_BYTES, large_bytes: int = MMAP_THRESHOLD,
                 collect: Callable[[], object] = gc.collect) -> None:
        self.after_bytes = after_bytes
        self.large_bytes = large_bytes
        self._collect = collect
        self.pending = 0      # bytes of large requests let go of since the last collection
        self.collections = 0

    def released(self, size: int) -> bool:
        """A request of `size` bytes is no longer needed; True if that started a collection."""
        if size < self.large_bytes:
            return False
        self.pending += size
        if self.pending < self.after_bytes:
            return False
        self.pending = 0
        self.collections += 1
        self._collect()
        return True
