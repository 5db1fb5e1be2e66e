"""eagleeye.client, the library: its pure window, its inputs, and its promise with real processes.

The promise: every frame of a stream answered exactly once, in order, through a failover, in every
mode: zero-hop (the library itself leaves a dead or hung worker), through the router (the router does,
and the library rides out a router restart), and against a single worker.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client import AsyncDetector, Detector, InvalidImage, Unavailable
from eagleeye.client import types as ct
from eagleeye.client.aio import _StreamRun
from eagleeye.client.window import MAX_FRAME_RETRIES, Window
from eagleeye.harness.processes import Proc
from eagleeye.scenes import encode_png, make_scene

ROOT = Path(__file__).resolve().parent.parent


def answer(frame_id: int, *, retry_elsewhere: bool = False, worker: str = "w") -> pb.DetectResponse:
    resp = pb.DetectResponse(frame_id=frame_id, worker=worker)
    if retry_elsewhere:
        resp.error.code, resp.error.message, resp.error.retry_elsewhere = 8, "queue full", True
    return resp


# -- the window (pure) --------------------------------------------------------------------------------

@pytest.mark.parametrize(("answers", "given_back"), [
    ([1, 2, 3], [[1], [2], [3]]),                 # in order: each at once
    ([2, 1, 3], [[], [1, 2], [3]]),               # out of order: held until the earlier one is in
    ([1, 1, 2, 2, 3], [[1], [], [2], [], [3]]),   # answered twice (sent again after a break): once
    ([3, 2, 1], [[], [], [1, 2, 3]]),
])
def test_the_window_gives_each_answer_back_once_in_order(answers: list[int], given_back: list[list[int]]) -> None:
    w = Window(8)
    for _ in range(3):
        w.add(None, pb.DetectRequest(), 0.0)
    got = [[r.frame_id for r in w.answer(answer(a), 1.0)[0]] for a in answers]
    assert got == given_back
    assert w.held == 0 and w.duplicates == len(answers) - 3


def test_the_window_replays_what_is_unanswered_keeps_callers_ids_and_bounds_itself() -> None:
    w = Window(3)
    for user_id in ("cam-a", "cam-b", "cam-c"):
        w.add(user_id, pb.DetectRequest(encoded=b"x"), 0.0)
    assert w.full
    [first], waited, _ = w.answer(answer(1), 0.25)
    assert (first.frame_id, waited) == ("cam-a", 0.25) and not w.full
    assert [r.frame_id for r in w.replay(5.0)] == [2, 3]          # on the wire: positions
    assert w.oldest_sent_at() == 5.0
    # A busy worker refused frame 2: sent again (a few times), not given back as an error.
    for _ in range(MAX_FRAME_RETRIES):
        due, _, resend = w.answer(answer(2, retry_elsewhere=True), 6.0)
        assert not due and resend is not None and resend.frame_id == 2
    due, _, resend = w.answer(answer(2, retry_elsewhere=True), 7.0)
    assert resend is None and due[0].frame_id == "cam-b" and due[0].error is not None  # then it is its answer
    with pytest.raises(ValueError):
        Window(0)


def test_images_become_requests_and_anything_else_is_refused_before_sending() -> None:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[1, 2] = (10, 20, 30)
    raw = ct.request(pixels, ct.Knobs(score_threshold=0.5, classes=("ellipse",)))
    assert (raw.raw.width, raw.raw.height, raw.raw.data) == (6, 4, pixels.tobytes())
    assert raw.score_threshold == 0.5 and list(raw.classes) == ["ellipse"] and not raw.HasField("iou_threshold")
    assert ct.request(Image.fromarray(pixels).convert("L"), ct.Knobs()).raw.width == 6  # grey: made RGB
    assert ct.request(b"\x89PNG...", ct.Knobs()).encoded == b"\x89PNG..."
    for bad in (b"", "street.jpg", np.zeros((4, 6), np.uint8), np.zeros((4, 6, 3), np.float32), None):
        with pytest.raises(InvalidImage):
            ct.request(bad, ct.Knobs())


def test_a_result_is_the_same_value_as_one_built_field_by_field() -> None:
    resp = pb.DetectResponse(frame_id=7, worker="primary", image_width=640, image_height=480)
    resp.timing.queue_ms, resp.timing.inference_ms, resp.timing.total_ms, resp.timing.batch_size = 1.5, 7.25, 9.0, 4
    resp.detections.add(label="ellipse", score=0.875, class_id=1).box.CopyFrom(pb.Box(x_min=1, y_min=2, x_max=30,
                                                                                        y_max=40))
    got = ct.Result.of("cam-1", resp)
    built = ct.Result(frame_id="cam-1", worker="primary", image_width=640, image_height=480, error=None,
                      timing=ct.Timing(1.5, 7.25, 9.0, 4),
                      detections=(ct.Detection("ellipse", 0.875, ct.Box(1.0, 2.0, 30.0, 40.0), 1),))
    assert got == built and hash(got) == hash(built) and repr(got) == repr(built)
    assert got.timing is got.timing and got.detections is got.detections  # built once, when first read
    assert pickle.loads(pickle.dumps(got)) == got
    assert "image_width=640" in repr(got) and "worker='primary'" in repr(got)
    for target, name in ((got, "worker"), (got, "frame_id"), (got.detections[0].box, "x_min"), (got, "other")):
        with pytest.raises(AttributeError):
            setattr(target, name, 5.0)
    assert got != ct.Result.of("cam-2", resp) and got.error is None
    refused = pb.DetectResponse(frame_id=1)
    refused.error.code, refused.error.message = grpc.StatusCode.INVALID_ARGUMENT.value[0], "not an image"
    error = ct.Result.of(1, refused).error
    assert isinstance(error, InvalidImage) and "not an image" in str(error)


# -- against real processes ----------------------------------------------------------------------------

def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Pair:
    """A router (its xDS control plane on) in front of two simulated workers."""

    def __init__(self, service_ms: str = "10") -> None:
        self.procs: list[Proc] = []
        try:
            self.primary = self._worker("primary", service_ms)
            self.standby = self._worker("standby", service_ms)
            self.primary_address = self.primary.wait_listening()
            standby_address = self.standby.wait_listening()
            self.xds = _free_address()
            self.listen = _free_address()
            self.router_args = ["--listen", self.listen, "--xds-listen", self.xds, "--primary",
                                self.primary_address, "--standby", standby_address, "--hold-down", "60"]
            self.router = self.start_router()
        except BaseException:
            self.stop()
            raise

    def _worker(self, name: str, service_ms: str) -> Proc:
        proc = Proc("python", ["-m", "bench.simworker", "--worker-id", name, "--service-ms", service_ms,
                               "--max-batch", "8", "--max-queue", "256"])
        self.procs.append(proc)
        return proc

    def start_router(self) -> Proc:
        router = Proc("eagleeye-router", self.router_args)
        self.procs.append(router)
        router.wait_for_event("switch", 60, to_state="NORMAL")
        return router

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.stop()


def _probe(target: str, xds: str | None, frames: int = 300, streams: int = 2) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "bench.clientprobe", "--target", target, "--frames", str(frames), "--fps", "50",
            "--streams", str(streams), "--warmup", "20"] + (["--xds-server", xds] if xds else [])
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_probe_through(probe: subprocess.Popen[str], fault: Any) -> dict[str, Any]:
    """Wait for the probe's first result, apply `fault`, and return its report."""
    assert probe.stdout is not None
    first = probe.stdout.readline()
    assert json.loads(first or "{}").get("ready"), (first, probe.stderr.read() if probe.stderr else "")
    fault()
    out, err = probe.communicate(timeout=90)
    assert probe.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_zero_hop_streams_lose_nothing_when_the_primary_dies_or_hangs(pair: Pair, sig: signal.Signals,
                                                                       figures: dict[str, object]) -> None:
    """Without the router on the path: the library reopens a broken or stalled stream, gRPC sends it
    where the router's assignment says, and the unanswered frames are sent again, each answered once."""
    probe = _probe("xds:///eagleeye-detector", pair.xds)
    try:
        report = _run_probe_through(probe, lambda: pair.primary.popen.send_signal(sig))
    finally:
        if probe.poll() is None:
            probe.kill()
    figures.update(report)
    for s in report["streams"]:
        assert s["in_order_once"] and not s["error"], report
    # The streams on the primary moved. gRPC may have put both streams on the standby (5 % of the
    # traffic): then the fault touched none of them, and there was nothing to move.
    if any(s["workers"][:1] == ["primary"] for s in report["streams"]):
        assert report["stats"]["reopened"] >= 1, report
    if sig == signal.SIGSTOP:
        assert all(s["max_ms"] < 5000 for s in report["streams"]), report  # left within seconds, not stuck


def test_through_the_router_streams_survive_a_router_restart(pair: Pair, figures: dict[str, object]) -> None:
    """The router's own failover is the router's; a router that restarts (a rolling update) loses its
    streams, and the library sends their unanswered frames again on new ones."""
    probe = _probe(pair.listen, None)

    def restart() -> None:
        pair.router.popen.send_signal(signal.SIGKILL)
        pair.router.stop()
        pair.router = pair.start_router()

    try:
        report = _run_probe_through(probe, restart)
    finally:
        if probe.poll() is None:
            probe.kill()
    figures.update(report)
    for s in report["streams"]:
        assert s["in_order_once"] and not s["error"], report
    assert report["stats"]["reopened"] >= 1, report


async def test_the_library_against_a_real_worker(worker: Proc) -> None:
    scene = make_scene(42, size=(320, 240))
    async with AsyncDetector(worker.address) as det:
        for image in (encode_png(scene.image), scene.image, Image.fromarray(scene.image)):
            result = await det.detect(image, score_threshold=0.3)
            assert (result.image_width, result.image_height) == (320, 240)
            assert sorted(d.label for d in result.detections) == sorted(
                ("screen", "ellipse", "triangle")[int(c)] for c in scene.classes), result
            assert all(0 <= d.box.x_min < d.box.x_max <= 320 for d in result.detections)
        with pytest.raises(InvalidImage):
            await det.detect(b"not an image")
        with pytest.raises(InvalidImage):
            await det.detect(encode_png(scene.image), classes=["unicorn"])

        # A stream: a bad frame is that frame's answer (an error), the others are answered.
        async def frames() -> AsyncIterator[tuple[str, Any]]:
            yield "a", scene.image
            yield "b", b"not an image"
            yield "c", encode_png(scene.image)

        results = [r async for r in det.stream(frames())]
        assert [r.frame_id for r in results] == ["a", "b", "c"]
        assert results[0].error is None and isinstance(results[1].error, InvalidImage) and results[2].detections


def test_the_blocking_detector_streams_from_a_plain_iterator_and_reports_a_dead_target() -> None:
    worker = Proc("python", ["-m", "bench.simworker", "--worker-id", "sync", "--service-ms", "5"])
    try:
        address = worker.wait_listening()
        worker.wait_for_event("model ready", 60)
        with Detector(address) as det:
            assert det.detect(b"x").worker == "sync"
            ids = [r.frame_id for r in det.stream(iter([b"x"] * 40))]
            assert ids == list(range(1, 41))
            # The caller stops early: the stream ends, the detector stays usable.
            for r in det.stream(b"x" for _ in range(1000)):
                if r.frame_id == 5:
                    break
            assert det.detect(b"x").worker == "sync"
            assert threading.active_count() < 40
    finally:
        worker.stop()
    with Detector(_free_address(), timeout=1.0) as det, pytest.raises(Unavailable):
        det.detect(b"x")
    with pytest.raises(ValueError):
        AsyncDetector("127.0.0.1:1", xds_server="127.0.0.1:2")
    assert grpc  # the errors carry gRPC status codes


async def test_a_caller_slow_to_take_its_results_is_not_a_stalled_stream() -> None:
    """Answers wait unread in the call while the caller is busy: the stream must not be given up on and
    its frames sent again, however long the caller takes."""
    worker = Proc("python", ["-m", "bench.simworker", "--worker-id", "w", "--service-ms", "5"])
    try:
        address = worker.wait_listening()
        worker.wait_for_event("model ready", 60)
        async with AsyncDetector(address) as det:
            async for _ in det.stream([b"x"] * 40):
                pass  # enough answers to learn the stall time (its floor, 2 s), rather than wait its ceiling
            ids = []
            async for r in det.stream([b"x"] * 60):
                ids.append(r.frame_id)
                if r.frame_id == 30:
                    await asyncio.sleep(1.5 * det.stall_s())  # the caller busy elsewhere (the stall time: 2 s)
            assert ids == list(range(1, 61))
            assert det.stats["reopened"] == 0 and det.stats["replayed"] == 0, det.stats
    finally:
        worker.stop()


async def test_a_stream_is_not_given_up_on_for_time_its_own_loop_ran_behind() -> None:
    """The caller's own work holds the loop past the stall time while an answer comes: the answer waits
    unread, a few loop turns from being seen. The watchdog counts only the time the loop was awake, so
    the stream is not opened again; once nobody answers, it is given up on within the stall time."""
    async with AsyncDetector("127.0.0.1:1") as det:
        det._stall_bounds = (0.2, 0.2)             # a stall time of 0.2 s, learned or not
        run = _StreamRun(det, ct.Knobs())
        run._window = SimpleNamespace(unanswered=1)  # type: ignore[assignment]  # a frame waits for its answer
        run._reading = True
        run._progress_at = time.monotonic()
        loop = asyncio.get_running_loop()
        answered = asyncio.Event()

        def answer(turns: int) -> None:
            if turns:
                loop.call_soon(answer, turns - 1)
                return
            run._progress_at = time.monotonic()
            answered.set()

        def held() -> None:
            time.sleep(0.5)          # the fault: the loop held past the stall time by the caller's own work
            loop.call_soon(answer, 3)  # the answer that came meanwhile is read a few loop turns later

        watchdog = asyncio.ensure_future(run._watchdog())
        loop.call_soon(held)
        try:
            await answered.wait()
            assert not run._stalled
            since = time.monotonic()
            async with asyncio.timeout(5):
                while not run._stalled:
                    await asyncio.sleep(0.01)  # polls the outcome (bounded); the watchdog decides
            assert time.monotonic() - since < 1.0
        finally:
            watchdog.cancel()


async def test_a_worker_that_hangs_soon_after_a_stream_starts_is_left_by_the_learned_stall_time() -> None:
    """The stall time is learned from the first answers and falls from its ceiling (10 s to a worker or a
    router) to its floor (2 s): a worker that hangs after a stream's fifth answer is given up on within
    about the floor, and every frame is still answered once, in order, once it serves again."""
    worker = Proc("python", ["-m", "bench.simworker", "--worker-id", "w", "--service-ms", "5"])
    try:
        address = worker.wait_listening()
        worker.wait_for_event("model ready", 60)
        async with AsyncDetector(address) as det, grpc.aio.insecure_channel(address) as channel:
            faults = fi_grpc.FaultInjectionStub(channel)
            five_answered = asyncio.Event()

            async def frames() -> AsyncIterator[bytes]:
                for i in range(1, 41):
                    if i == 6:
                        await five_answered.wait()
                    yield b"x"

            async def hang_then_serve() -> float:
                await five_answered.wait()
                await faults.HangInference(fi.HangInferenceRequest())
                hung_at = time.monotonic()
                while det.stats["reopened"] == 0 and time.monotonic() - hung_at < 15:
                    await asyncio.sleep(0.05)  # polls the outcome (bounded), does not stand in for it
                left_after = time.monotonic() - hung_at
                await faults.ClearFaults(fi.ClearFaultsRequest())
                return left_after

            hang = asyncio.ensure_future(hang_then_serve())
            ids = []
            async for r in det.stream(frames()):
                ids.append(r.frame_id)
                if r.frame_id == 5:
                    five_answered.set()
            left_after = await hang
        assert ids == list(range(1, 41))
        assert det.stats["reopened"] >= 1, det.stats
        assert left_after < 6.0, f"the hung worker was left after {left_after:.1f} s (the ceiling is 10 s)"
    finally:
        worker.stop()


def test_the_ingestion_example_in_the_docs_runs_as_written(tmp_path: Path) -> None:
    """docs/client.md's example, extracted and run on a video file against a worker: it must work as
    a user would copy it."""
    from tests.videos import write_video

    text = (ROOT / "docs" / "client.md").read_text()
    example = text.split("## An ingestion worker", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "ingest.py"
    script.write_text(example)
    video = tmp_path / "clip.mp4"
    write_video(video, 12)
    worker = Proc("python", ["-m", "bench.simworker", "--worker-id", "docs", "--service-ms", "5"])
    try:
        address = worker.wait_listening()
        worker.wait_for_event("model ready", 60)
        done = subprocess.run([sys.executable, str(script), address, str(video)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    finally:
        worker.stop()
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("frame ")]
    assert len(lines) == 12 and all("on docs" in line for line in lines), done.stdout
    assert "model: simulated" in done.stdout and "reconnects: 0" in done.stderr
