"""Learned timers: the hedge delay and stall time follow recent answers, within their bounds."""

from __future__ import annotations

import math
import random

import pytest

from eagleeye.common.latency import BackendTimers, RecentQuantile, clamped


def test_quantile_needs_enough_samples_and_forgets_old_ones() -> None:
    q = RecentQuantile(0.95, size=100, min_samples=20)
    assert q.value() is None and q.estimate() is None
    q.add(0.03)
    for _ in range(18):
        q.add(0.01)
    assert q.value() is None and q.estimate() == 0.03   # too few for the quantile: the largest so far
    q.add(0.01)
    assert q.value() == q.estimate() == 0.01            # 20 samples: the quantile (0.03 is above the p95)
    for _ in range(100):
        q.add(0.2)                      # the old samples leave the window
    assert q.value() == 0.2


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99, 1.0])
def test_quantile_is_the_sorted_window_at_every_sample(q: float) -> None:
    rng = random.Random(7)
    quantile = RecentQuantile(q, size=64, min_samples=1)
    seen: list[float] = []
    for _ in range(500):
        x = rng.choice([rng.random(), 0.5, 0.25])  # repeated values too: one copy leaves at a time
        quantile.add(x)
        seen.append(x)
        window = sorted(seen[-64:])
        assert quantile.value() == window[min(len(window) - 1, math.ceil(q * len(window)) - 1)]


def test_clamped_uses_the_ceiling_until_something_is_known() -> None:
    assert clamped(None, 0.05, 0.3) == 0.3
    assert clamped(0.01, 0.05, 0.3) == 0.05
    assert clamped(0.1, 0.05, 0.3, scale=4) == 0.3
    assert clamped(0.05, 0.2, 1.0, scale=4) == 0.2


def test_backend_timers_learn_from_answers() -> None:
    t = BackendTimers(0.95, (0.05, 0.3), 4.0, (0.2, 1.0))
    assert (t.hedge_delay_s(), t.stall_s()) == (0.3, 1.0)     # nothing known: the ceilings
    for _ in range(40):
        t.unary_answered(0.08)
        t.stream_progress(0.1)
    assert t.hedge_delay_s() == 0.08
    assert t.stall_s() == 0.4                                  # 4 x the p99 wait
