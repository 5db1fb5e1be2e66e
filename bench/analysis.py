"""What a fault run means to its clients: pure functions from per-frame records to the figures.

Every frame the load sends becomes a Record (when it was sent, when and by which worker it was
answered, or how it failed). A run also carries its marks: when the fault began, when the primary
was back (SIGCONT, restart, hang cleared) and when it was ready again. Nothing here reads a clock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from eagleeye.common.latency import percentile

PRIMARY = "primary"
STANDBY = "standby"
DURING_S = 2.0       # "during" a fault: frames sent in the first DURING_S seconds after it
BIN_S = 0.25         # timeline resolution, and the unit in which traffic moves are counted
SLOW_MS = 250.0      # answers slower than this (ten times the load's normal latency) were caught in the fault


@dataclass
class Record:
    """One frame: sent at `sent` (s since the run began); answered at `done` by `backend`, or failed."""

    sent: float
    done: float | None = None
    backend: str | None = None
    error: str | None = None     # gRPC code name, when the frame failed (call error, stream break, stall)
    answers: int = 0             # how many answers arrived for it (a stream may deliver one twice)
    out_of_order: bool = False   # a stream answered it after a later frame

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None

    @property
    def latency_ms(self) -> float | None:
        return None if self.done is None or self.error is not None else (self.done - self.sent) * 1000


@dataclass
class Run:
    """A load run with its fault: records, stream breaks (time, code), and the marks."""

    records: list[Record]
    fault_at: float
    back_at: float | None = None        # the primary resumed, was restarted, or the fault was cleared
    ready_at: float | None = None       # the primary reported ready again (after a restart)
    end_at: float = 0.0
    breaks: list[tuple[float, str]] = field(default_factory=list)
    streams: bool = False


@dataclass
class Figures:
    """The figures of one window of a run, as the results table and JSON show them."""

    frames: int
    client_errors: int
    lost: int
    duplicated: int | None
    to_switch_ms: float | None      # fault (or primary ready) to the first answer from the other worker
    back_ms: float | None           # primary ready again to its first answer (None: not ready, or no answer)
    p50_ms: float | None
    p99_ms: float | None
    before: tuple[float | None, float | None]
    during: tuple[float | None, float | None]
    after: tuple[float | None, float | None]
    traffic_moves: int
    error_codes: dict[str, int]


def _p(records: list[Record]) -> tuple[float | None, float | None]:
    lat = [r.latency_ms for r in records if r.latency_ms is not None]
    return percentile(lat, 50), percentile(lat, 99)


def first_answer_from(records: list[Record], backend: str, since: float) -> float | None:
    """When the first answer from `backend` arrived, counting frames sent at or after `since`."""
    times = [r.done for r in records if r.ok and r.backend == backend and r.sent >= since and r.done is not None]
    return min(times) if times else None


def majority_bins(records: list[Record], start: float, end: float, bin_s: float = BIN_S) -> list[str | None]:
    """Per bin of send time, the worker that answered most of its frames (None: none answered).
    Frames slower than SLOW_MS are left out: they were caught in the fault (answered late by a
    resumed primary, or after a retry) and say nothing of where the proxy sends traffic now."""
    n = max(0, int((end - start) / bin_s + 0.999999))
    counts: list[Counter[str]] = [Counter() for _ in range(n)]
    for r in records:
        lat = r.latency_ms
        if r.backend and lat is not None and lat <= SLOW_MS and start <= r.sent < end:
            counts[min(n - 1, int((r.sent - start) / bin_s))][r.backend] += 1
    return [c.most_common(1)[0][0] if c else None for c in counts]


def traffic_moves(records: list[Record], start: float, end: float) -> int:
    """How many times the worker answering most of the traffic changed (empty bins skipped)."""
    seen = [b for b in majority_bins(records, start, end) if b is not None]
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)


def window_figures(run: Run, start: float, end: float, mark: float, switch_to: str) -> Figures:
    """Figures for frames sent in [start, end): `mark` is the event (fault, or primary ready) that
    phases before/during/after are taken around, `switch_to` the worker traffic should move to."""
    inside = [r for r in run.records if start <= r.sent < end]
    failed = [r for r in inside if r.error is not None]
    unanswered = [r for r in inside if r.error is None and r.done is None]
    breaks = [code for t, code in run.breaks if start <= t < end]
    codes = Counter(r.error for r in failed if r.error)
    if run.streams:
        # A broken stream is one error to the client, however many frames it took with it.
        codes = Counter(breaks) + Counter(r.error for r in failed if r.error and r.error.startswith("FRAME_"))
    overall = _p(inside)
    hit = first_answer_from(run.records, switch_to, mark)
    back = None if run.ready_at is None else first_answer_from(run.records, PRIMARY, run.ready_at)
    return Figures(
        frames=len(inside),
        client_errors=sum(codes.values()),
        lost=len(failed) + len(unanswered),
        duplicated=sum(max(0, r.answers - 1) for r in inside) if run.streams else None,
        to_switch_ms=None if hit is None else (hit - mark) * 1000,
        back_ms=None if back is None or run.ready_at is None else (back - run.ready_at) * 1000,
        p50_ms=overall[0], p99_ms=overall[1],
        before=_p([r for r in inside if r.sent < mark]),
        during=_p([r for r in inside if mark <= r.sent < mark + DURING_S]),
        after=_p([r for r in inside if r.sent >= mark + DURING_S]),
        traffic_moves=traffic_moves(run.records, start, end),
        error_codes=dict(codes),
    )


def fault_figures(run: Run) -> Figures:
    """The fault itself: from the start until the primary is back; traffic should move to the standby."""
    end = run.back_at if run.back_at is not None else run.end_at
    return window_figures(run, 0.0, end, run.fault_at, STANDBY)


def switch_back_figures(run: Run) -> Figures | None:
    """The primary's return: from its restart to the end; traffic should move back to it once ready."""
    if run.back_at is None or run.ready_at is None:
        return None
    return window_figures(run, run.back_at, run.end_at, run.ready_at, PRIMARY)
