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
import logging

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
