"""What a process holds of the machine: LargeMessageReclaimer (a full collection after enough large
requests, never for small ones) and the open-file limit its connection caps need."""

from __future__ import annotations

import logging
import resource

import pytest

from eagleeye.common.memory import LargeMessageReclaimer
from eagleeye.common.serving import raise_open_file_limit

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


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_one_below_the_caps_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip(f"a hard open-file limit of {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # a host's default soft limit, say
    try:
        with caplog.at_level(logging.WARNING, "eagleeye.serving"):
            assert raise_open_file_limit(hard) == hard
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
            assert "open-file limit below the connection caps" not in caplog.text
            assert raise_open_file_limit(hard + 1) == hard  # the caps allow more connections than files
            assert "open-file limit below the connection caps" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
