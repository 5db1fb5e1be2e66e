"""Decisions for one client DetectStream: every frame answered exactly once, in order, across backend
changes, within a bounded window (pure; time passed in).

The shell (router.proxy) carries out what these methods return: it opens and closes backend streams
("legs"), writes frames, hands answers to the client, and wakes `on_timer` at `next_timer()`.

Frames, from the client's read to the client's receipt of the answer, are held in a window bounded
in frames and bytes per stream and in bytes for the whole router (`BytePool`); room is judged before
a frame is read, for a frame as large as the stream's recent ones, and while there is none the shell
stops reading from the client, so HTTP/2 flow control pushes back instead of the router buffering.
The bytes counted are every copy the router keeps: a frame written to a worker counts twice. The
bytes are one client's share (`BytePool` with the router's as parent) as well as the router's. At most
`backend_window` frames are outstanding on a leg; the rest wait their turn, which also paces a replay
to the new worker, and while any waits the client is not read either.

A leg is *stalled* when it has frames outstanding and its backend has answered nothing, on this leg
or anything else, for the stall time (a multiple of the backend's recent wait for progress, within a
floor and a ceiling, plus the oldest frame's expected cost by size): a backlog that is being answered
is load, not a fault, and a burst of new streams or a heavy frame does not eject a worker. A leg that
answers none of its own frames for `leg_stall_s` while its backend answers others is moved too, but
without blaming the backend. A stalled leg, a leg that fails, or a backend health calls
unusable: a new leg on the other backend, and the unanswered frames replayed there. A frame the
worker refused because its queue was full is tried once on the other worker (a unary Detect), its
answer slotted back in order. When the weights want a running stream elsewhere (the ramp back to the
primary), it moves at a frame boundary: nothing new is written to the old leg, and once that has
answered everything it holds, the stream continues on the new one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from eagleeye.router.budget import RetryBudget
from eagleeye.router.fleet import Backend, Fleet, RequestCost, StreamPlace


@dataclass(frozen=True)
class StreamConfig:
    """Window bounds, pacing and the stall rule."""

    max_frames: int = 64                   # per stream, answered-but-not-received ones included
    max_bytes: int = 64 * 1024 * 1024      # per stream (a frame may be as large as a message)
    # Room a stream needs before its first frame is read (then: its largest recent frame). A first
    # frame larger than this may pass the bounds by the difference, once per stream.
    min_frame_reserve: int = 256 * 1024
    backend_window: int = 16               # outstanding on a leg: the worker's own default per stream
    # Stall time: `stall_multiplier` x the backend's recent p99 wait for an answer, within bounds.
    # The floor keeps a scheduling hiccup on a busy host from moving streams; the ceiling bounds what
    # a hang costs before health has caught up.
    stall_multiplier: float = 4.0
    stall_min_s: float = 0.2
    stall_max_s: float = 1.0
    # A frame whose leg failed this many times in a row is not replayed again: it may be what kills
    # backends, and a replay storm must not take both down.
    max_frame_attempts: int = 3
    placement_check_s: float = 0.1         # how often health and weights are looked at
    cost: RequestCost = field(default_factory=RequestCost)      # a frame's size adds to the stall time
    # A leg whose own frames go unanswered this long while its backend answers others is moved (not
    # blamed): a stream lost inside a worker that is otherwise fine still gets its answers.
    leg_stall_s: float = 10.0


# How many of a stream's last frames size the room it needs for the next one.
RECENT_FRAMES = 8
# A frame written to a worker is held twice until answered: in the window (for a replay) and in
# gRPC's send buffer until the worker's transport has taken it. Both count against the bounds.
COPIES_WHILE_SENT = 2

# A leg carries the client's deadline, so it ends by itself at about that instant (gRPC's timer and the
# router's clock may disagree by a millisecond or so): a leg ending this close to the deadline ended
# because of it, not because of its backend.
DEADLINE_SLACK_S = 0.01


class BytePool:
    """Bytes that may be held at once: the router's, or one client's share of it (`parent`).

    What a share holds within its capacity is held in the parent too. What it holds past its capacity
    (a frame larger than its stream's reserve: gRPC does not tell a message's size before it is read, so
    one frame per stream can land past the bound) is that client's debt: the client reads nothing more
    until it is paid back, but it is not counted in the parent, so other clients' room is not taken by it.
    `on_freed` is called whenever bytes come back (a stream waits for room for a frame of its own size,
    not only for the pool to be below full)."""

    def __init__(self, capacity: int, parent: BytePool | None = None) -> None:
        self.capacity = capacity
        self.parent = parent
        self.used = 0
        self.on_freed: Callable[[], None] = lambda: None

    def room_for(self, n: int) -> bool:
        """Whether `n` more bytes fit here and in the parent (an empty pool takes anything: a frame
        larger than the pool would otherwise wait for ever)."""
        fits = self.used + n <= self.capacity or self.used == 0
        return fits and (self.parent is None or self.parent.room_for(min(n, self.capacity)))

    def _within(self, used: int) -> int:
        return min(used, self.capacity)

    def take(self, n: int) -> None:
        before, self.used = self.used, self.used + n
        if self.parent is not None:
            self.parent.take(self._within(self.used) - self._within(before))

    def give(self, n: int) -> None:
        before, self.used = self.used, self.used - n
        if self.parent is not None:
            self.parent.give(self._within(before) - self._within(self.used))
        self.on_freed()


class _State(Enum):
    QUEUED = 1      # waiting to be written to the current leg
    SENT = 2        # outstanding on the current leg
    ASIDE = 3       # refused for a full queue, being tried on the other worker
    ANSWERED = 4    # answer ready, waiting for the frames before it


@dataclass(eq=False, slots=True)
class _Frame:
    fid: int
    request: bytes
    received_at: float
    charged: int
    state: _State = _State.QUEUED
    answer: bytes = b""
    sent_at: float = 0.0
    failed_legs: int = 0
    aside_tried: bool = False


# What the shell is asked to do.
@dataclass(frozen=True)
class Open:
    """Open a backend stream (leg) `gen` on `backend`."""

    gen: int
    backend: Backend


@dataclass(frozen=True)
class Write:
    """Write a frame's bytes to leg `gen`."""

    gen: int
    data: bytes


@dataclass(frozen=True)
class EndWrites:
    """No more frames for leg `gen` (half-close)."""

    gen: int


@dataclass(frozen=True)
class Close:
    """Cancel leg `gen`: nothing more is wanted from it."""

    gen: int


@dataclass(frozen=True)
class Deliver:
    """Send an answer to the client; call `on_client_took(size)` once it has gone."""

    data: bytes
    size: int
    latency_s: float      # since the router read the frame


@dataclass(frozen=True)
class SideTry:
    """Try a frame a full worker queue refused on `backend` (unary Detect); then `on_side_result`."""

    fid: int
    backend: Backend
    data: bytes
    frm: Backend


@dataclass(frozen=True)
class Answered:
    """A backend answered a frame: its latency, and how long the leg waited for this progress."""

    backend: Backend
    latency_s: float
    waited_s: float


@dataclass(frozen=True)
class Failed:
    """A backend failed a stream (its leg broke or stalled) with `frames` unanswered: a passive health
    signal worth that many failed calls (a stall with several frames outstanding ejects the backend,
    so the stream is not moved back to it before health has vouched for it again)."""

    backend: Backend
    frames: int = 1
    why: str = field(default="", compare=False)  # for the ejection's log line


@dataclass(frozen=True)
class Moved:
    """The stream moved to another leg (`failure`: replaying `replayed` frames; else a graceful move)."""

    frm: Backend
    to: Backend
    reason: str
    replayed: int
    failure: bool


@dataclass(frozen=True)
class Refused:
    """The retry budget refused a side try."""


@dataclass(frozen=True)
class Abort:
    """End the client's stream with `code` (a grpc.StatusCode name); message "" means: say why no backend can serve."""

    code: str
    message: str = ""


@dataclass(frozen=True)
class Finish:
    """Every frame is answered and the client is done: end the stream OK."""


Action = Open | Write | EndWrites | Close | Deliver | SideTry | Answered | Failed | Moved | Refused | Abort | Finish


class StreamCore:
    """One client stream's frames and legs."""

    def __init__(self, cfg: StreamConfig, fleet: Fleet, budget: RetryBudget, pool: BytePool,
                 affinity: float, deadline: float | None = None) -> None:
        self._cfg = cfg
        self._deadline = deadline     # the client's, if it set one
        self._fleet = fleet
        self._budget = budget
        self._pool = pool
        self.place = StreamPlace(affinity)
        self._frames: collections.deque[_Frame] = collections.deque()     # read, not yet delivered
        self._queued: collections.deque[_Frame] = collections.deque()     # not yet written to the leg
        self._inflight: collections.deque[_Frame] = collections.deque()   # written, unanswered
        self._handed = 0              # delivered to the shell, not yet taken by the client
        self._bytes = 0               # charged by this stream (also in the pool)
        self._recent_sizes: collections.deque[int] = collections.deque(maxlen=RECENT_FRAMES)
        self.backend: Backend | None = None
        self._gen = 0
        self._ended_gen = 0           # the leg EndWrites went to
        self._moving_to: Backend | None = None
        self._progress_at = 0.0
        self._next_check = 0.0
        self._client_done = False
        self._drain_message = ""      # set by on_drain: how the stream ends once its frames are answered
        self.finished = False

    # -- events ------------------------------------------------------------------------------------

    def begin(self, backend: Backend | None, now: float) -> list[Action]:
        """The client's stream opened: a leg to `backend` now, or (None) to where placement says once the
        first frame comes (a client stream that sends nothing costs no worker a stream)."""
        self._next_check = now + self._cfg.placement_check_s
        return self._open(backend) if backend is not None else []

    def has_room(self) -> bool:
        """Whether the shell may read another frame from the client.

        Not while a frame already waits for room on the worker: a stream faster than its worker is
        then held back by flow control as it would be calling the worker directly, instead of
        queueing in the router and adding that queue to every frame's latency.
        """
        return not self._queued and self._own_room() and self._pool_room()

    def blocked_by_pool(self) -> bool:
        """Whether only the router-wide pool keeps the next frame from being read."""
        return not self._queued and self._own_room() and not self._pool_room()

    def _expected_frame(self) -> int:
        """Room is judged for the frame about to be read, before it is: as large as the largest of this
        stream's recent frames (a camera's frames are alike), so the bounds hold with it, not after."""
        return COPIES_WHILE_SENT * max(self._recent_sizes, default=self._cfg.min_frame_reserve)

    def _own_room(self) -> bool:
        count = len(self._frames) + self._handed
        return count == 0 or (count < self._cfg.max_frames
                              and self._bytes + self._expected_frame() <= self._cfg.max_bytes)

    def _pool_room(self) -> bool:
        return self._pool.room_for(self._expected_frame())

    def waiting_on_client(self) -> bool:
        """Whether the window is full only because the client has not taken answers it was handed."""
        return self._handed > 0 and not self._queued and not self._inflight

    def held(self) -> int:
        """Frames the stream holds: read and not yet taken by the client."""
        return len(self._frames) + self._handed

    def on_frame(self, fid: int, data: bytes, now: float) -> list[Action]:
        if self.finished:
            return []
        f = _Frame(fid, data, now, 0)
        self._recent_sizes.append(len(data))
        self._charge(f, len(data))
        self._frames.append(f)
        self._queued.append(f)
        if self.backend is not None and now >= self._next_check:
            # Idle, the stream had no timer: look at health and weights now, before the frame goes out.
            return self._check(now) + self._pump(now)
        return self._pump(now)

    def on_answer(self, gen: int, fid: int, data: bytes, queue_full: bool, now: float) -> list[Action]:
        if self.finished or gen != self._gen or not self._inflight or self._inflight[0].fid != fid:
            return []  # an older leg's, or a replay overlap: never deliver twice
        f = self._inflight.popleft()
        assert self.backend is not None
        out: list[Action] = [Answered(self.backend, now - f.sent_at, now - self._progress_at)]
        self._progress_at = now
        other = self._fleet.alternative(self.backend) if queue_full and not f.aside_tried else None
        if other is not None:
            f.aside_tried = True
            if self._budget.try_spend(now):
                f.state, f.answer = _State.ASIDE, data   # the refusal stays the answer if the try fails
                self._charge(f, len(f.request) + len(data))
                out.append(SideTry(fid, other, f.request, self.backend))
            else:
                out.append(Refused())
        if f.state is not _State.ASIDE:
            self._answered(f, data)
        out += self._deliver(now)
        if self._moving_to is not None and not self._inflight:
            out += self._finish_move(now)
        return out + self._pump(now) + self._maybe_finish()

    def on_side_result(self, fid: int, data: bytes | None, now: float) -> list[Action]:
        f = next((f for f in self._frames if f.fid == fid and f.state is _State.ASIDE), None)
        if f is None or self.finished:
            return []
        self._answered(f, data if data is not None else f.answer)
        return self._deliver(now) + self._maybe_finish()

    def on_leg_end(self, gen: int, failure: bool, code: str, message: str, now: float) -> list[Action]:
        """Leg `gen` ended: cleanly (code OK), with a failure of the backend, or with its verdict on the stream."""
        if gen != self._gen or self.finished:
            return []
        if code != "OK" and self._deadline is not None and now >= self._deadline - DEADLINE_SLACK_S:
            # The client's own deadline: not the backend's failure, and no time left for another leg.
            return self._end(Abort("DEADLINE_EXCEEDED", "deadline exceeded"))
        if code != "OK" and not failure:
            return self._end(Abort(code, message))  # the backend's answer about the stream itself
        if code == "OK" and not self._inflight and not self._queued:
            self.backend = None  # done with it; the client is done too, or a new leg opens for new frames
            return self._maybe_finish()
        assert self.backend is not None
        return self._fail_over(f"{self.backend.value} stream ended: {code}", True, now)

    def on_client_end(self, now: float) -> list[Action]:
        if self.finished:
            return []
        self._client_done = True
        return self._pump(now) + self._maybe_finish()

    def on_drain(self, message: str, now: float) -> list[Action]:
        """The router is shutting down: no more frames are read; answer those read, then end the stream
        with UNAVAILABLE and `message` (the client reconnects, to another replica)."""
        if self.finished:
            return []
        if not self._client_done:  # a client that already sent its last frame gets its OK end
            self._client_done = True
            self._drain_message = message
        return self._pump(now) + self._maybe_finish()

    def on_client_took(self, size: int) -> None:
        """An answer has gone to the client: its bytes and slot are free."""
        self._handed -= 1
        self._bytes -= size
        self._pool.give(size)

    def next_timer(self) -> float | None:
        if self.finished or self.backend is None:
            return None
        at = self._deadline
        # An idle stream (nothing queued or unanswered) has no timer but its deadline: a router holding
        # thousands of open, quiet streams does not wake for each of them ten times a second. Its next
        # frame looks at health and weights first (on_frame); a leg that breaks meanwhile ends by itself.
        if self._inflight or self._queued:
            check = self._next_check
            if self._inflight:
                check = min(check, self._backend_quiet_since() + self._stall_s(),
                            self._progress_at + self._cfg.leg_stall_s)
            at = check if at is None else min(at, check)
        return at

    def on_fleet_change(self, now: float) -> list[Action]:
        """Health, the pool or the streams' homes changed: look now, idle or not (an idle stream on a
        worker that is not ready or is leaving moves at once, gracefully, instead of holding its leg)."""
        if self.finished or self.backend is None:
            return []
        return self._check(now)

    def on_timer(self, now: float) -> list[Action]:
        if self.finished or self.backend is None:
            return []
        if self._deadline is not None and now >= self._deadline:
            return self._end(Abort("DEADLINE_EXCEEDED", "deadline exceeded"))
        return self._check(now)

    def _check(self, now: float) -> list[Action]:
        """Follow health, weights and stalls: fail over or move the stream when they say so."""
        if now >= self._next_check:
            self._next_check = now + self._cfg.placement_check_s
        b = self.backend
        assert b is not None
        if not self._fleet.usable(b):
            return self._fail_over(f"{b.value} not ready", False, now)
        if self._inflight:
            stall, quiet = self._stall_s(), now - self._backend_quiet_since()
            if quiet >= stall:
                loaded = self._fleet.loaded(b)  # at capacity by its own word: moved, not blamed
                return self._fail_over(f"{b.value} answered nothing for {quiet:.2f} s with {len(self._inflight)} "
                                       f"frames of this stream outstanding (stall time {stall:.2f} s"
                                       f"{', at capacity' if loaded else ''})", not loaded, now)
            if now - self._progress_at >= self._cfg.leg_stall_s:
                return self._fail_over(f"{b.value} answered none of this stream's {len(self._inflight)} frames "
                                       f"for {now - self._progress_at:.2f} s while answering others", False, now)
        wanted = self._fleet.placement(self.place, b)
        if self._moving_to is None and wanted is not None and wanted != b and self._fleet.usable(wanted):
            self._moving_to = wanted
            if not self._inflight:
                return self._finish_move(now) + self._pump(now)
        return []

    def release(self) -> None:
        """The stream is over: give back everything it still holds."""
        if self._bytes:
            self._pool.give(self._bytes)
        self._bytes = 0
        self._frames.clear()
        self._queued.clear()
        self._inflight.clear()

    # -- internals ---------------------------------------------------------------------------------

    def _backend_quiet_since(self) -> float:
        """Since when neither this leg nor anything else on its backend has been answered, moved later by
        the time the router itself ran behind meanwhile."""
        assert self.backend is not None
        return self._fleet.heard_since(max(self._progress_at, self._fleet.progress_at(self.backend)))

    def _stall_s(self) -> float:
        assert self.backend is not None
        oldest = len(self._inflight[0].request) if self._inflight else 0
        return self._fleet.stall_s(self.backend) + self._cfg.cost.seconds(oldest)

    def _charge(self, f: _Frame, size: int) -> None:
        delta = size - f.charged
        f.charged = size
        self._bytes += delta
        if delta > 0:
            self._pool.take(delta)
        elif delta < 0:
            self._pool.give(-delta)

    def _answered(self, f: _Frame, data: bytes) -> None:
        f.state, f.answer, f.request = _State.ANSWERED, data, b""
        self._charge(f, len(data))

    def _deliver(self, now: float) -> list[Action]:
        out: list[Action] = []
        frames = self._frames
        while frames and frames[0].state is _State.ANSWERED:
            f = frames.popleft()
            self._handed += 1
            out.append(Deliver(f.answer, f.charged, now - f.received_at))
        return out

    def _open(self, backend: Backend) -> list[Action]:
        self._gen += 1
        self.backend = backend
        return [Open(self._gen, backend)]

    def _pump(self, now: float) -> list[Action]:
        """Write queued frames while the leg has room; half-close it once the client is done."""
        out: list[Action] = []
        if self.finished or self._moving_to is not None:
            return out
        if self.backend is None:
            if not self._queued:
                return out
            target = self._fleet.placement(self.place, None)
            if target is None or not self._fleet.usable(target):
                target = self._fleet.alternative(None)
            if target is None:
                return self._end(Abort("UNAVAILABLE"))
            out += self._open(target)
        window = self._cfg.backend_window
        while self._queued and len(self._inflight) < window:
            f = self._queued.popleft()
            f.state, f.sent_at = _State.SENT, now
            self._charge(f, COPIES_WHILE_SENT * len(f.request))
            if not self._inflight:
                self._progress_at = now
            self._inflight.append(f)
            out.append(Write(self._gen, f.request))
        if self._client_done and not self._queued:
            out += self._end_writes()
        return out

    def _end_writes(self) -> list[Action]:
        """Half-close the current leg, once."""
        if self._ended_gen == self._gen:
            return []
        self._ended_gen = self._gen
        return [EndWrites(self._gen)]

    def _fail_over(self, why: str, blame: bool, now: float) -> list[Action]:
        old = self.backend
        assert old is not None
        out: list[Action] = [Close(self._gen)]
        self.backend = None           # that leg is gone; _open sets the next one
        if blame:
            out.append(Failed(old, max(1, len(self._inflight)), why=f"stream leg: {why}"))
            for f in self._inflight:
                f.failed_legs += 1
            if self._inflight and self._inflight[0].failed_legs >= self._cfg.max_frame_attempts:
                return self._end(Abort("UNAVAILABLE", (
                    f"frame {self._inflight[0].fid} failed on {self._cfg.max_frame_attempts} backend streams "
                    "in a row; not replaying it again")), out)
        # Where the stream belongs now if that is somewhere else; else the least loaded other worker;
        # else the same one again (a broken connection to a worker still ready).
        target = self._fleet.placement(self.place, None)
        if target is None or target == old or not self._fleet.usable(target):
            target = self._fleet.alternative(old) or (old if self._fleet.usable(old) else None)
        if target is None:
            return self._end(Abort("UNAVAILABLE"), out)
        replay = len(self._inflight)
        for f in reversed(self._inflight):
            f.state = _State.QUEUED
            self._charge(f, len(f.request))  # the old leg's copy is gone with it
            self._queued.appendleft(f)
        self._inflight.clear()
        self._moving_to = None
        out += self._open(target)
        out.append(Moved(old, target, why, replay, True))
        return out + self._pump(now)

    def _finish_move(self, now: float) -> list[Action]:
        old, target = self.backend, self._moving_to
        assert old is not None and target is not None
        self._moving_to = None
        out = self._end_writes() + self._open(target)
        out.append(Moved(old, target, "weights", 0, False))
        return out

    def _maybe_finish(self) -> list[Action]:
        if self._client_done and not self._frames and not self.finished:
            return self._end(Abort("UNAVAILABLE", self._drain_message) if self._drain_message else Finish())
        return []

    def _end(self, last: Action, before: list[Action] | None = None) -> list[Action]:
        self.finished = True
        out = list(before or [])
        if self.backend is not None:
            out.append(Close(self._gen))
        return [*out, last]
