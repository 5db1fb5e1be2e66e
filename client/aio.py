"""AsyncDetector: the Detector API with the router's guarantees, in every mode (asyncio).

    async with AsyncDetector("xds:///eagleeye-detector", xds_server="router:50070") as det:
        result = await det.detect(jpeg_bytes)
        async for r in det.stream(frames()):        # one result per frame, in order, exactly once
            ...

A stream keeps its own window of frames sent and not yet answered (client/window.py). When the stream
breaks, or no answer comes for its stall time while frames wait (learned from recent latency, as the
router learns it), it is opened again and the unanswered frames are sent again; an answer that comes
twice is given back once. In zero-hop mode (`xds:///NAME`) gRPC sends the new stream to a worker by
the router's current assignment, so a worker that died or hung is left within the stall time;
through a router, the router does this itself, and the library rides out a router restart or a
rolling update the same way (its stall time is longer there, since the router is already watching
the workers). Unary calls are retried on another attempt when a worker was busy or gone, and in
zero-hop mode hedged (a second attempt after the recent p95, within a budget of one extra attempt
per ten calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client import types
from eagleeye.client.dial import BOOTSTRAP_ENV, XDS_SCHEME, Tls, channel, default_node_id, xds_bootstrap
from eagleeye.client.errors import RETRIABLE, Unavailable, from_rpc_error
from eagleeye.client.types import Image, Knobs, Result
from eagleeye.client.window import Window
from eagleeye.common.latency import RecentQuantile, clamped
from eagleeye.common.loopbehind import LoopBehind

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_WINDOW = 32
# Stall time: this x the recent p99 wait for an answer, within these bounds (the upper one until enough
# answers are known). Zero-hop: the library is what leaves a hung worker, so as quickly as the router
# would; through a router, the router leaves hung workers, and the library waits for the router.
STALL_MULTIPLIER = 4.0
STALL_BOUNDS_ZERO_HOP = (0.2, 1.0)
STALL_BOUNDS_ROUTER = (2.0, 10.0)
# How often a stream's watchdog looks, per stall time floor (see _StreamRun._watchdog).
WATCHDOG_LOOKS = 4
# Unary hedging (zero-hop): a second attempt after the recent p95 within these bounds; each call earns
# a tenth of an extra attempt, at most 10 saved up.
HEDGE_BOUNDS = (0.02, 1.0)
HEDGE_BUDGET_PER_CALL, HEDGE_BUDGET_MAX = 0.1, 10.0
RETRY_BACKOFF_S = (0.02, 1.0)

_Frames = AsyncIterable[Any] | Iterable[Any]
_EOF = grpc.aio.EOF


def _configure_xds(target: str, xds_server: str | None) -> None:
    if not target.startswith(XDS_SCHEME):
        if xds_server:
            raise ValueError("xds_server is for a target xds:///NAME (zero-hop mode)")
        return
    if xds_server:
        # gRPC reads its xDS bootstrap once per process: the first zero-hop detector's server is the
        # control plane for every later one in this process.
        os.environ.setdefault("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(xds_bootstrap(xds_server, default_node_id())))
    elif not any(os.environ.get(k) for k in BOOTSTRAP_ENV):
        raise ValueError(f"target {target} needs xds_server='HOST:PORT' (the router's --xds-listen address) "
                         "or a bootstrap in GRPC_XDS_BOOTSTRAP")


class AsyncDetector:
    """A client of the Detector API: a router (HOST:PORT), a worker, or `xds:///NAME` (zero-hop).

    `xds_server`: with `xds:///NAME`, the router's control plane (its --xds-listen HOST:PORT); the
    library then writes gRPC's xDS bootstrap itself, else GRPC_XDS_BOOTSTRAP must name one. gRPC reads
    the bootstrap once per process, so every zero-hop client of a process uses the first one's.
    `tls`: the CA to trust and an optional client certificate (None: plaintext). `timeout`: how long a
    unary call may take, retries and hedges included, and how long a stream may go without any answer
    before it gives up (`Unavailable`). `window`: frames of a stream sent and not yet answered, at most.
    `stats` counts what the library did for the caller (streams reopened, frames replayed, duplicate
    answers dropped, unary retries and hedges).
    """

    def __init__(self, target: str, *, xds_server: str | None = None, tls: Tls | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, window: int = DEFAULT_WINDOW) -> None:
        _configure_xds(target, xds_server)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.timeout = timeout
        self.window = window
        self.zero_hop = target.startswith(XDS_SCHEME)
        self._channel = channel(target, tls)
        self._stub = pb_grpc.DetectorStub(self._channel)
        self._waits = RecentQuantile(0.99)      # a stream frame's wait for its answer
        self._unary = RecentQuantile(0.95)      # a unary call's time
        self._stall_bounds = STALL_BOUNDS_ZERO_HOP if self.zero_hop else STALL_BOUNDS_ROUTER
        # When this process's loop ran behind (its streams' watchdogs see it): no stall time for a worker.
        self._behind = LoopBehind()
        self._hedge_tokens = HEDGE_BUDGET_MAX
        #: What the library did for the caller: streams reopened, frames sent again, answers dropped as
        #: duplicates, unary retries and hedges.
        self.stats = {"reopened": 0, "replayed": 0, "duplicates": 0, "retries": 0, "hedges": 0}

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End every call of this client and its connection; a stream still being read raises."""
        await self._channel.close()

    def stall_s(self) -> float:
        """How long a stream waits for an answer before it is opened again (learned from recent waits)."""
        return clamped(self._waits.estimate(), *self._stall_bounds, scale=STALL_MULTIPLIER)

    def _hedge_delay_s(self) -> float:
        return clamped(self._unary.value(), *HEDGE_BOUNDS)

    async def model_info(self) -> pb.GetModelInfoResponse:
        """The model the service runs (name, version, classes, input size)."""
        try:
            info: pb.GetModelInfoResponse = await self._stub.GetModelInfo(pb.GetModelInfoRequest(),
                                                                           timeout=self.timeout)
            return info
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    # -- unary ---------------------------------------------------------------------------------------

    async def detect(self, image: Image, *, score_threshold: float | None = None, iou_threshold: float | None = None,
                     max_detections: int | None = None, classes: Iterable[str] = ()) -> Result:
        """Detections in one image (encoded bytes, an H x W x 3 uint8 RGB array or a PIL image)."""
        req = types.request(image, Knobs(score_threshold, iou_threshold, max_detections, tuple(classes)))
        started = time.monotonic()
        deadline = started + self.timeout
        self._hedge_tokens = min(HEDGE_BUDGET_MAX, self._hedge_tokens + HEDGE_BUDGET_PER_CALL)
        attempts: set[asyncio.Task[pb.DetectResponse]] = set()
        last: grpc.aio.AioRpcError | None = None
        backoff = RETRY_BACKOFF_S[0]
        try:
            while time.monotonic() < deadline:
                if not attempts:
                    attempts.add(self._attempt(req, deadline))
                hedge_at = self._hedge_delay_s() if self.zero_hop and len(attempts) == 1 else None
                done, _ = await asyncio.wait(attempts, timeout=hedge_at, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the hedge delay passed with no answer
                    if self._hedge_tokens >= 1:
                        self._hedge_tokens -= 1
                        self.stats["hedges"] += 1
                        attempts.add(self._attempt(req, deadline))
                    else:
                        await asyncio.wait(attempts, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for task in done:
                    attempts.discard(task)
                    err = task.exception()
                    if err is None:
                        self._unary.add(time.monotonic() - started)
                        return Result.of(0, task.result())
                    if not isinstance(err, grpc.aio.AioRpcError) or err.code() not in RETRIABLE:
                        raise from_rpc_error(err) if isinstance(err, grpc.aio.AioRpcError) else err
                    last = err
                if attempts:
                    continue  # the other attempt may still answer
                self.stats["retries"] += 1
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))  # back-off before retrying
                backoff = min(backoff * 2, RETRY_BACKOFF_S[1])
        finally:
            for task in attempts:
                task.cancel()
        if last is not None:
            raise from_rpc_error(last)
        raise Unavailable(f"no answer within {self.timeout:g} s", grpc.StatusCode.DEADLINE_EXCEEDED)

    def _attempt(self, req: pb.DetectRequest, deadline: float) -> asyncio.Task[pb.DetectResponse]:
        return asyncio.ensure_future(self._stub.Detect(req, timeout=max(0.001, deadline - time.monotonic())))

    # -- streams -------------------------------------------------------------------------------------

    def stream(self, frames: _Frames, *, score_threshold: float | None = None,
               iou_threshold: float | None = None, max_detections: int | None = None,
               classes: Iterable[str] = ()) -> AsyncGenerator[Result, None]:
        """One result per frame, in order, exactly once: `frames` gives images, or (frame_id, image) pairs
        (a result's frame_id is then the caller's; otherwise the frame's position, from 1). An async
        generator: `async for r in det.stream(...)`, and `aclose()` it (or leave the loop) to stop early."""
        run = _StreamRun(self, Knobs(score_threshold, iou_threshold, max_detections, tuple(classes)))
        return run.results(frames)


class _StreamRun:
    """One logical stream: any number of DetectStream calls, one at a time, and the window across them."""

    def __init__(self, det: AsyncDetector, knobs: Knobs) -> None:
        self._det = det
        self._knobs = knobs if knobs else None   # looked at once, not per frame
        self._window = Window(det.window)
        self._waits = det._waits
        self._room = asyncio.Event()
        self._room.set()
        self._gen = 0
        self._call: Any = None
        self._outbox: asyncio.Queue[pb.DetectRequest | None] = asyncio.Queue()
        # One write at a time on a call: the sender task's, or the feeder's own when nothing waits to go
        # before its frame (the common case: no task switch per frame).
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._input_done = False
        self._input_error: Exception | None = None
        self._closing = False
        self._reading = False   # waiting for the call's next answer (the watchdog may interrupt it)
        self._stalled = False   # the watchdog gave up on the call
        self._paused_at: float | None = None  # when the reader last stopped waiting (the caller has a result)
        self._progress_at = time.monotonic()   # the last answer, or when frames started to wait
        self._answered_at = time.monotonic()   # the last answer (for the overall timeout)

    async def results(self, frames: _Frames) -> AsyncGenerator[Result, None]:
        feeder = asyncio.ensure_future(self._feed(frames))
        watchdog = asyncio.ensure_future(self._watchdog())
        self._open(replay=False)
        attempt = 0
        try:
            while True:
                if self._input_error is not None:
                    raise self._input_error  # the caller's frames raised, or a frame is not an image
                if self._input_done and self._window.held == 0:
                    self._end_writing()
                    break
                # The call's next answer, its end (with the error if it failed), or "interrupted": the
                # watchdog or the feeder cancelled it (this task being cancelled raises). Inline: once
                # per frame.
                if self._paused_at is not None:  # the caller had the stream's results: not the worker's silence
                    self._progress_at += time.monotonic() - self._paused_at
                self._reading = True
                payload: Any = None
                try:
                    resp = await self._call.read()
                    kind = "end" if resp is _EOF else "answer"
                except grpc.aio.AioRpcError as e:
                    kind, payload = "end", e
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    kind = "interrupted"
                finally:
                    self._reading = False
                    self._paused_at = time.monotonic()
                if kind == "answer":
                    attempt = 0
                    for result in self._answer(resp):
                        yield result
                elif kind == "interrupted":
                    if self._stalled:
                        self._stalled = False
                        attempt = await self._again(attempt, None, stalled=True)
                    elif self._input_error is None:
                        raise Unavailable("the stream was cancelled: the client is closing", grpc.StatusCode.CANCELLED)
                elif self._window.unanswered or not self._input_done:  # the call ended
                    attempt = await self._again(attempt, payload)
        finally:
            self._close_call()
            for task in (feeder, watchdog, *self._tasks):
                task.cancel()
            await asyncio.gather(feeder, watchdog, *self._tasks, return_exceptions=True)

    def _interrupt(self) -> None:
        """Wake the reader waiting on the call by cancelling it (the call is given up on either way)."""
        if self._reading and self._call is not None:
            self._call.cancel()

    def _end_writing(self) -> None:
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait(None)  # done writing: the call ends once the service agrees

    async def _watchdog(self) -> None:
        """Gives up on the call when frames have waited the stall time with no answer while the reader
        waits for one (one timer per stream, not one per message). A caller slow to take its results is
        not a stall: answers then wait in the call, unread.

        The stall time is learned as answers come (from its ceiling down), so the timer looks again at
        least every lower bound of it: a stream that stalls right after it started is given up on within
        the learned stall time plus that bound, not after the ceiling.

        Time this process's loop ran behind (the caller's own work on the loop, a host short of CPU) does
        not count: an answer that came then waits unread, a few loop turns from being seen. The timer's
        own lateness says when (LoopBehind), to within one look: so it looks WATCHDOG_LOOKS times per
        stall time floor. Only that time is subtracted, so a hang is still left."""
        recheck = self._det._stall_bounds[0] / WATCHDOG_LOOKS
        behind = self._det._behind
        while True:
            stall = self._det.stall_s()
            delay = stall
            if self._window.unanswered:
                heard_since = self._progress_at + behind.after(self._progress_at)
                delay = heard_since + stall - time.monotonic()
                if delay <= 0:
                    if self._reading:
                        self._stalled = True
                        self._interrupt()
                    delay = stall
            due = time.monotonic() + min(delay, recheck)
            await asyncio.sleep(due - time.monotonic())  # the stall timer
            behind.woke(due, time.monotonic())

    def _answer(self, resp: pb.DetectResponse) -> Sequence[Result]:
        now = time.monotonic()
        window = self._window
        due, waited, resend = window.answer(resp, now)
        if waited is None:
            self._det.stats["duplicates"] += 1
            return due
        self._waits.add(waited)
        self._progress_at = self._answered_at = now
        if resend is not None:
            self._outbox.put_nowait(resend)  # a busy worker refused it: another try (maybe elsewhere)
        if window.held < window.size:
            self._room.set()
        return due

    async def _again(self, attempt: int, error: grpc.aio.AioRpcError | None, stalled: bool = False) -> int:
        """The call broke or stalled: give up on it and open another with the unanswered frames. A call
        that ended is followed by a back-off growing with the attempts in a row; a stalled one is not:
        the stall time it waited paces the attempts already."""
        if error is not None and error.code() not in RETRIABLE:
            raise from_rpc_error(error)
        if time.monotonic() - self._answered_at > self._det.timeout:
            if error is not None:
                raise from_rpc_error(error)
            raise Unavailable(f"no answer for {self._det.timeout:g} s", grpc.StatusCode.DEADLINE_EXCEEDED)
        self._close_call()
        self._det.stats["reopened"] += 1
        if attempt and not stalled:
            await asyncio.sleep(min(RETRY_BACKOFF_S[0] * 2 ** attempt, RETRY_BACKOFF_S[1]))  # reconnection back-off
        self._open(replay=True)
        return attempt + 1

    def _open(self, replay: bool) -> None:
        self._gen += 1
        self._call = self._det._stub.DetectStream()
        self._outbox = asyncio.Queue()
        now = time.monotonic()
        if replay:
            frames = self._window.replay(now)
            self._det.stats["replayed"] += len(frames)
            for req in frames:
                self._outbox.put_nowait(req)
            if self._input_done and not frames:
                self._outbox.put_nowait(None)
        self._progress_at = now
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(self._send(self._call, self._outbox)))

    def _close_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._outbox.put_nowait(None)

    async def _send(self, call: Any, outbox: asyncio.Queue[pb.DetectRequest | None]) -> None:
        """Writes what is queued for `call` (frames sent again, frames the feeder could not write at once),
        then ends the writing side."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            while (req := await outbox.get()) is not None:
                async with self._write_lock:
                    await call.write(req)
            async with self._write_lock:
                await call.done_writing()

    async def _feed(self, frames: _Frames) -> None:
        window = self._window
        try:
            async for item in frames if isinstance(frames, AsyncIterable) else _aiter(frames):
                user_id, image = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
                req = types.request(image, self._knobs)
                while window.held >= window.size:
                    self._room.clear()
                    await self._room.wait()
                now = time.monotonic()
                if not window.unanswered:
                    self._progress_at = now  # frames start waiting now, not since the last answer
                req = window.add(user_id, req, now)
                lock = self._write_lock
                if not self._outbox.empty() or lock.locked():
                    self._outbox.put_nowait(req)  # behind frames sent again, or the sender is writing
                    continue
                # The feeder writes its frame itself (inline: once per frame). A call that broke
                # meanwhile is no loss: the frame is in the window, and the next call is sent the
                # unanswered frames.
                call = self._call  # the call of now: if it is replaced meanwhile, the replay has the frame
                await lock.acquire()
                try:
                    await call.write(req)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    pass
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this stream is ending
                    # else the call was cancelled (given up on), not the feeder: as above
                finally:
                    lock.release()
            self._input_done = True
            if self._window.held == 0:
                self._end_writing()  # nothing left to answer: the reader sees the call end
        except Exception as e:
            self._input_error = e
            self._interrupt()


async def _aiter(frames: Iterable[Any]) -> AsyncIterator[Any]:
    for item in frames:
        yield item
