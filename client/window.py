"""A stream's window (pure: no I/O, no clock of its own): frames sent and not yet given back, in order.

Every frame gets a wire id, its position in the stream (1, 2, ...), whatever id the caller gave it:
answers are matched by it, so a frame answered twice (sent again on a new stream after the old one
broke) is given back once, and answers are given back in the order the frames came, each once. The
caller's own id (or the position) goes into the Result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.types import Result

# A frame a worker could not take (its queue full: retry elsewhere) is sent again this many times at most.
MAX_FRAME_RETRIES = 3


@dataclass(slots=True)
class _Pending:
    user_id: Any
    request: pb.DetectRequest
    sent_at: float
    retries: int = 0


class Window:
    """At most `size` frames between sent and given back."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self._next_id = 1
        self._next_out = 1
        self._pending: dict[int, _Pending] = {}   # wire id -> frame, unanswered, in order of id
        self._ready: dict[int, Result] = {}       # answered, waiting for an earlier frame's answer
        self.duplicates = 0                       # answers dropped: their frame was answered already

    @property
    def held(self) -> int:
        """Frames sent and not yet given back."""
        return len(self._pending) + len(self._ready)

    @property
    def full(self) -> bool:
        return self.held >= self.size

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def add(self, user_id: Any, req: pb.DetectRequest, now: float) -> pb.DetectRequest:
        """Take a frame (`user_id` None: its position); returns it with its wire id set, to send."""
        wire = self._next_id
        self._next_id += 1
        req.frame_id = wire
        self._pending[wire] = _Pending(wire if user_id is None else user_id, req, now)
        return req

    def replay(self, now: float) -> list[pb.DetectRequest]:
        """Every unanswered frame, in order, to send again on a new stream."""
        for p in self._pending.values():
            p.sent_at = now
        return [p.request for p in self._pending.values()]

    def answer(self, resp: pb.DetectResponse, now: float) -> tuple[list[Result], float | None, pb.DetectRequest | None]:
        """An answer from the service: the results now due, in order; how long the frame waited (None for
        a duplicate); and the frame to send again when a busy worker refused it (retry elsewhere)."""
        p = self._pending.get(resp.frame_id)
        if p is None:
            self.duplicates += 1
            return [], None, None
        waited = now - p.sent_at
        if resp.HasField("error") and resp.error.retry_elsewhere and p.retries < MAX_FRAME_RETRIES:
            p.retries += 1
            p.sent_at = now
            return [], waited, p.request
        del self._pending[resp.frame_id]
        self._ready[resp.frame_id] = Result.of(p.user_id, resp)
        due = []
        while self._next_out in self._ready:
            due.append(self._ready.pop(self._next_out))
            self._next_out += 1
        return due, waited, None

    def oldest_sent_at(self) -> float | None:
        """When the oldest unanswered frame was (last) sent."""
        return min((p.sent_at for p in self._pending.values()), default=None)
