"""A stream's window (pure: no I/O, no clock of its own): frames sent and not yet given back, in order.

Every frame gets a wire id, its position in the stream (1, 2, ...), whatever id the caller gave it:
answers are matched by it, so a frame answered twice (sent again on a new stream after the old one
broke) is given back once, and answers are given back in the order the frames came, each once. The
caller's own id (or the position) goes into the Result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.types import Result

# A frame a worker could not take (its queue full: retry elsewhere) is sent again this many times at most.
MAX_FRAME_RETRIES = 3


# An unanswered frame: (the caller's id or its position, the request, when it was last sent, retries).
# A tuple, replaced on the rare resend: one is made per frame.
_Pending = tuple[Any, pb.DetectRequest, float, int]
_NOTHING_DUE: tuple[Result, ...] = ()


class Window:
    """At most `size` frames between sent and given back."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        #: Frames sent and not yet given back (kept as a count: read once or twice per frame).
        self.held = 0
        self._next_id = 1
        self._next_out = 1
        self._pending: dict[int, _Pending] = {}   # wire id -> frame, unanswered, in order of id
        self._ready: dict[int, Result] = {}       # answered, waiting for an earlier frame's answer
        self.duplicates = 0                       # answers dropped: their frame was answered already

    @property
    def full(self) -> bool:
        return self.held >= self.size

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def add(self, user_id: Any, req: pb.DetectRequest, now: float) -> pb.DetectRequest:
        """Take a frame (`user_id` None: its position); returns it with its wire id set, to send."""
        wire = self._next_id
        self._next_id = wire + 1
        req.frame_id = wire
        self._pending[wire] = (wire if user_id is None else user_id, req, now, 0)
        self.held += 1
        return req

    def replay(self, now: float) -> list[pb.DetectRequest]:
        """Every unanswered frame, in order, to send again on a new stream."""
        pending = self._pending
        for wire, (user_id, req, _, retries) in pending.items():
            pending[wire] = (user_id, req, now, retries)  # the same keys: the order stays
        return [p[1] for p in pending.values()]

    def answer(self, resp: pb.DetectResponse, now: float,
               ) -> tuple[Sequence[Result], float | None, pb.DetectRequest | None]:
        """An answer from the service: the results now due, in order; how long the frame waited (None for
        a duplicate); and the frame to send again when a busy worker refused it (retry elsewhere)."""
        wire = resp.frame_id
        p = self._pending.get(wire)
        if p is None:
            self.duplicates += 1
            return _NOTHING_DUE, None, None
        user_id, req, sent_at, retries = p
        waited = now - sent_at
        if retries < MAX_FRAME_RETRIES and resp.HasField("error") and resp.error.retry_elsewhere:
            self._pending[wire] = (user_id, req, now, retries + 1)
            return _NOTHING_DUE, waited, req
        del self._pending[wire]
        result = Result.of(user_id, resp)
        if wire != self._next_out:  # an earlier frame is still unanswered
            self._ready[wire] = result
            return _NOTHING_DUE, waited, None
        due = [result]
        wire += 1
        ready = self._ready
        while wire in ready:
            due.append(ready.pop(wire))
            wire += 1
        self._next_out = wire
        self.held -= len(due)
        return due, waited, None

    def oldest_sent_at(self) -> float | None:
        """When the oldest unanswered frame was (last) sent."""
        return min((p[2] for p in self._pending.values()), default=None)
