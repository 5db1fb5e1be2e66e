"""The terminal progress line: count, rate, time left."""

from __future__ import annotations

import io

from eagleeye.client.progress import Progress


def test_counts_rate_and_eta_with_a_known_total() -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress("frames", 100, out, clock=lambda: now[0])
    now[0] = 2.0
    p.step(50)
    assert p.line() == "50/100 frames  25.0/s  ETA 2 s"
    assert out.getvalue().endswith("\r\x1b[K50/100 frames  25.0/s  ETA 2 s")
    now[0] = 4.0
    p.step(50)
    p.done()
    assert out.getvalue().endswith("100/100 frames  25.0/s\n")


def test_without_a_total_no_eta_and_redraws_at_most_ten_times_a_second() -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress("frames", None, out, clock=lambda: now[0])
    for _ in range(64):
        now[0] += 1 / 64  # exact in binary: the draws fall on steps 1, 8, 15, ... 64
        p.step()
    assert out.getvalue().count("\r") == 10 and "ETA" not in out.getvalue()
    assert p.line() == "64 frames  64.0/s"
