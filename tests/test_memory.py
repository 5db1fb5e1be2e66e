"""LargeMessageReclaimer: a full collection after enough large requests, never for small ones."""

from __future__ import annotations

import pytest

from eagleeye.common.memory import LargeMessageReclaimer

MiB = 1024 * 1024


@pytest.mark.parametrize(("sizes", "collections", "pending"), [
    ([], 0, 0),
    ([512 * 1024] * 1000, 0, 0),                  # 500 MiB of small requests: never
    ([MiB - 1, MiB], 0, MiB),                     # the first is under the large size, the second counts
    ([13 * MiB] * 4, 0, 52 * MiB),                # under 64 MiB: not yet
    ([13 * MiB] * 5, 1, 0),                       # 65 MiB: one collection, the count starts again
    ([13 * MiB] * 10, 2, 0),
    ([32 * MiB] * 3, 1, 32 * MiB),
    ([200 * MiB], 1, 0),                          # one request past the threshold: collected at once
])
def test_collects_once_per_threshold_of_large_requests(sizes: list[int], collections: int, pending: int) -> None:
    calls: list[int] = []
    reclaimer = LargeMessageReclaimer(64 * MiB, MiB, collect=lambda: calls.append(1))
    started = [reclaimer.released(size) for size in sizes]
    assert len(calls) == reclaimer.collections == sum(started) == collections
    assert reclaimer.pending == pending
