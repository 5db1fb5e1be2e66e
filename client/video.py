"""`eagleeye video`: a video file, a camera's stream or a v4l2 device through the Detector API.

Frames are decoded with PyAV (FFmpeg), sent as JPEG over one DetectStream (through the router they
survive a failover exactly once and in order), and, with --out, written again with their detections
drawn, at the input's frame rate; --json writes the run's statistics. The stream is the client
library's (eagleeye.client): a broken or stalled one is reopened and the frames it had not answered
are sent again, each answered once. Ctrl-C ends the run and closes the output file properly with
every frame answered so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from eagleeye.client import annotate
from eagleeye.client.aio import AsyncDetector
from eagleeye.client.args import at_least_one_arg, target_arg
from eagleeye.client.dial import Tls
from eagleeye.client.errors import EagleEyeError
from eagleeye.client.progress import Progress
from eagleeye.client.types import Detection, Result
from eagleeye.common.latency import percentile
from eagleeye.scenes import encode_jpeg

WINDOW = 32             # frames sent and not yet answered, at most
JPEG_QUALITY = 90
# Input codecs the output may keep: encoders that take yuv420p at a usable speed (others become H.264).
_YUV420_CODECS = ("h264", "hevc", "mpeg4", "vp8", "vp9")


class VideoError(Exception):
    """A source or output the tool cannot use: one line for the user."""


@dataclass
class VideoStats:
    """What happened to the frames of one run (the --json file)."""

    source: str
    frames_read: int = 0
    frames_sent: int = 0
    frames_answered: int = 0
    frames_written: int = 0
    lost: int = 0
    unanswered_at_stop: int = 0
    reconnects: int = 0
    interrupted: bool = False
    detections: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    worker_changes: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    _last_worker: str = ""

    def answered(self, resp: Result, latency_s: float) -> None:
        self.frames_answered += 1
        self.latencies_ms.append(latency_s * 1000)
        self.by_worker[resp.worker] += 1
        self.detections.update(d.label for d in resp.detections)
        if self._last_worker and resp.worker != self._last_worker:
            self.worker_changes.append({"frame": resp.frame_id, "from": self._last_worker, "to": resp.worker})
        self._last_worker = resp.worker

    def to_dict(self) -> dict[str, Any]:
        lat = self.latencies_ms

        def q(p: float) -> float:
            return round(percentile(lat, p) or 0.0, 2)
        return {
            "source": self.source, "frames_read": self.frames_read, "frames_sent": self.frames_sent,
            "frames_answered": self.frames_answered, "frames_written": self.frames_written, "lost": self.lost,
            "unanswered_at_stop": self.unanswered_at_stop, "interrupted": self.interrupted,
            "detections_per_class": dict(sorted(self.detections.items())),
            "frames_per_worker": dict(sorted(self.by_worker.items())),
            # A change of the answering worker within the run: a failover (or a switch back) seen by this client.
            "failovers_seen": len(self.worker_changes), "worker_changes": self.worker_changes,
            "stream_reconnects": self.reconnects,
            "latency_ms": {"p50": q(50), "p95": q(95), "p99": q(99)} if lat else None,
        }


def open_source(source: str) -> Any:
    """The PyAV container of a file, a URL (rtsp://, http://) or a v4l2 device (/dev/videoN)."""
    import av

    try:
        if source.startswith("/dev/video"):
            return av.open(source, format="v4l2")
        if source.startswith("rtsp://"):
            return av.open(source, options={"rtsp_transport": "tcp"}, timeout=10)
        return av.open(source, timeout=10 if "://" in source else None)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open {source}: {e}") from None


class Reader(threading.Thread):
    """Decodes the source's video frames into a bounded queue (RGB arrays), then None; stops on `stop`."""

    def __init__(self, container: Any, max_frames: int | None) -> None:
        super().__init__(daemon=True)
        self.frames: queue.Queue[np.ndarray | BaseException | None] = queue.Queue(maxsize=WINDOW * 2)
        self.stop = threading.Event()
        self._container = container
        self._max = max_frames

    def run(self) -> None:
        n = 0
        try:
            for frame in self._container.decode(video=0):
                if self.stop.is_set() or (self._max is not None and n >= self._max):
                    break
                image = frame.to_ndarray(format="rgb24")
                while not self.stop.is_set():
                    try:
                        self.frames.put(image, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                n += 1
        except Exception as e:  # a corrupt file or a dropped camera: the run ends with what it has
            self._put(e)
        self._put(None)

    def _put(self, item: np.ndarray | BaseException | None) -> None:
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


class Writer:
    """The annotated output video: the input's frame rate, size (even) and codec where this FFmpeg can
    encode it, else H.264, else MPEG-4."""

    def __init__(self, path: Path, rate: Fraction, width: int, height: int, codec: str = "") -> None:
        import av

        try:
            self._container = av.open(str(path), "w")
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot write {path}: {e}") from None
        stream = None
        for name in (*((codec,) if codec else ()), "libx264", "h264", "mpeg4"):
            try:
                stream = self._container.add_stream(name, rate=rate)
                break
            except (av.FFmpegError, ValueError):
                continue
        if stream is None:
            raise VideoError(f"{path}: no H.264 or MPEG-4 encoder in this FFmpeg")
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        self._stream = stream
        self._count = 0

    def write(self, image: np.ndarray) -> None:
        import av

        h, w = self._stream.height, self._stream.width
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
        frame.pts = self._count
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


class Run:
    """One video through the Detector API: reading, sending over a stream, ordered writing, statistics."""

    def __init__(self, args: argparse.Namespace, source: Any) -> None:
        self.args = args
        self.stats = VideoStats(args.source)
        self._container = source
        stream = source.streams.video[0]
        self._rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(30)
        name = stream.codec_context.name if stream.codec_context else ""
        self._codec = name if name in _YUV420_CODECS else ""
        self._expected = args.max_frames or (stream.frames or None)
        if args.max_frames and stream.frames:
            self._expected = min(args.max_frames, stream.frames)
        self._pending: deque[tuple[int, np.ndarray]] = deque()  # read, not yet written, in order
        self._sent_at: dict[int, float] = {}                      # frame index -> sent at, unanswered
        self._latest: list[Detection] = []
        self._writer: Writer | None = None
        self._stop = asyncio.Event()
        self._done_reading = False
        self._last_line = 0.0
        self._progress = Progress("frames", self._expected) if sys.stderr.isatty() else None

    # -- the pieces --------------------------------------------------------------------------------

    def _answered(self, result: Result) -> None:
        sent = self._sent_at.pop(result.frame_id, None)
        if result.error is not None:
            print(f"frame {result.frame_id}: {result.error}", file=sys.stderr)
        self.stats.answered(result, time.monotonic() - sent if sent is not None else 0.0)
        while self._pending and self._pending[0][0] <= result.frame_id:
            index, image = self._pending.popleft()
            if index == result.frame_id:
                self._latest = list(result.detections)  # frames not sent (--every) carry the latest boxes
            self._write(image)
        self._report()

    def _write(self, image: np.ndarray) -> None:
        if self.args.out is None:
            return
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = Writer(self.args.out, self._rate, w, h, self._codec)
        self._writer.write(np.asarray(annotate.draw(Image.fromarray(image), self._latest)))
        self.stats.frames_written += 1

    def _report(self, final: bool = False) -> None:
        if self._progress is not None:
            self._progress.count = self.stats.frames_answered
            if final:
                self._progress.done()
            else:
                self._progress.step(0)
            return
        now = time.monotonic()
        if final or now - self._last_line >= 1.0:
            self._last_line = now
            s = self.stats
            print(f"video: read {s.frames_read}" + (f" of {self._expected}" if self._expected else "")
                  + f", sent {s.frames_sent}, answered {s.frames_answered}", file=sys.stderr, flush=True)

    async def _frames(self, reader: Reader) -> AsyncIterator[tuple[int, bytes]]:
        """The frames to send, as (index, JPEG) pairs: every --every'th, paced by --rate; the library's
        window (frames sent and not yet answered) holds the reading back when the service is slower."""
        every = self.args.every
        gap = 1 / self.args.rate if self.args.rate else 0.0
        next_at = time.monotonic()
        index = 0
        while not self._stop.is_set():
            item = await asyncio.to_thread(reader.frames.get)
            if item is None:
                break
            if isinstance(item, BaseException):
                print(f"{self.args.source}: decoding stopped: {item}", file=sys.stderr)
                break
            self.stats.frames_read += 1
            self._pending.append((index, item))
            if index % every == 0:
                if gap:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing, as --rate asks
                    next_at = max(next_at + gap, time.monotonic() - gap)
                jpeg = await asyncio.to_thread(encode_jpeg, item, JPEG_QUALITY)
                self._sent_at[index] = time.monotonic()
                self.stats.frames_sent += 1
                yield index, jpeg
            index += 1
            self._report()
        self._done_reading = True

    async def _stream(self, det: AsyncDetector, reader: Reader) -> None:
        async for result in det.stream(self._frames(reader), score_threshold=self.args.score_threshold):
            self._answered(result)

    async def run(self, target: str, tls: Tls | None) -> int:
        reader = Reader(self._container, self.args.max_frames)
        reader.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
        code = 0
        try:
            async with AsyncDetector(target, tls=tls, timeout=self.args.timeout, window=WINDOW) as det:
                streaming = asyncio.create_task(self._stream(det, reader))
                stopping = asyncio.create_task(self._stop.wait())
                done, _ = await asyncio.wait({streaming, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    self.stats.interrupted = True
                    streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
                stopping.cancel()
                self.stats.reconnects = det.stats["reopened"]
                if streaming in done and streaming.exception() is not None:
                    e = streaming.exception()
                    if not isinstance(e, EagleEyeError):
                        raise e  # type: ignore[misc]
                    print(f"{self.args.target}: {e}", file=sys.stderr)
                    self.stats.lost = len(self._sent_at)
                    code = 1
        finally:
            reader.stop.set()
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)
            if self.stats.interrupted:
                self.stats.unanswered_at_stop = len(self._sent_at)
            elif self._done_reading and not code:
                while self._pending:  # frames read after the last one sent (--every): the latest boxes
                    self._write(self._pending.popleft()[1])
            if self._writer is not None:
                self._writer.close()
            self._container.close()
            self._report(final=True)
        if self.args.json is not None:
            self.args.json.write_text(json.dumps(self.stats.to_dict(), indent=2) + "\n")
        if self.stats.interrupted:
            return 130  # as a shell reports Ctrl-C
        return code if not self.stats.lost else 1


def add_parser(sub: Any, target_help: str) -> argparse.ArgumentParser:
    v: argparse.ArgumentParser = sub.add_parser(
        "video", help="detect objects in a video file, a stream URL or a camera; write it annotated",
        description="Send a video's frames over one DetectStream (through the router, a failover loses none); "
                    "write the video with its detections drawn (--out) and the run's statistics (--json). "
                    "SOURCE: a file, rtsp:// or http:// URL, or a v4l2 device (/dev/video0). Needs PyAV: "
                    "pip install 'eagleeye[video]'.")
    v.add_argument("source", metavar="SOURCE")
    v.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT", help=target_help)
    v.add_argument("--out", type=Path, metavar="FILE", help="write the annotated video here (e.g. out.mp4)")
    v.add_argument("--json", type=Path, metavar="FILE", help="write the run's statistics here (JSON)")
    v.add_argument("--every", type=at_least_one_arg, default=1, metavar="N",
                   help="send every Nth frame (the others are written with the latest boxes; default 1)")
    v.add_argument("--max-frames", type=at_least_one_arg, metavar="N", help="stop after N frames of the source")
    v.add_argument("--rate", type=float, metavar="FPS",
                   help="send at most FPS frames a second (a file is otherwise sent as fast as answered)")
    v.add_argument("--score-threshold", type=float, metavar="S", help="keep detections scoring at least S")
    v.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="give up when no frame has been answered for S seconds (default 30)")
    return v


async def cmd_video(args: argparse.Namespace) -> int:
    try:
        import av  # noqa: F401
    except ImportError:
        print("eagleeye video: PyAV is not installed: pip install 'eagleeye[video]'", file=sys.stderr)
        return 2
    try:
        source = open_source(args.source)
        if not source.streams.video:
            source.close()
            raise VideoError(f"{args.source}: no video stream")
        return await Run(args, source).run(args.target, args.tls)
    except VideoError as e:
        print(f"eagleeye video: {e}", file=sys.stderr)
        return 2
