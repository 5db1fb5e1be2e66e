"""`eagleeye video`: a synthetic video (the default model's shapes, moving) through a worker and through the
router while the primary is killed; every input frame comes out annotated, none is lost."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eagleeye.harness.processes import BIN, LocalCluster, Proc
from tests.videos import frame_count, write_video

CLASSES = {"screen", "ellipse", "triangle"}


class VideoRun:
    """`eagleeye video` in the background; its once-a-second progress lines on stderr are waited on."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen([str(BIN / "eagleeye"), "video", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_answered(self, frames: int, timeout: float = 60) -> None:
        def answered() -> bool:
            return any(int(m.group(1)) >= frames for line in self.lines
                       if (m := re.search(r"answered (\d+)", line))) or self.popen.poll() is not None
        with self._changed:
            assert self._changed.wait_for(answered, timeout), self.lines[-5:]

    def result(self, timeout: float = 120) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(10)
        return code


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    write_video(path, 120)
    return path


def test_a_video_through_a_worker_comes_out_annotated_with_every_frame(worker: Proc, video: Path,
                                                                     tmp_path: Path) -> None:
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    run = VideoRun(str(video), "--target", worker.address, "--out", str(out), "--json", str(stats), "--every", "2")
    assert run.result() == 0, run.lines[-5:]
    s = json.loads(stats.read_text())
    assert (s["frames_read"], s["frames_sent"], s["frames_answered"], s["lost"]) == (120, 60, 60, 0)
    assert s["frames_written"] == 120 and frame_count(out) == (120, 30.0, (320, 240))
    assert s["detections_per_class"] and set(s["detections_per_class"]) <= CLASSES
    assert sum(s["frames_per_worker"].values()) == 60 and s["failovers_seen"] == 0
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(router_args=["--weights", "100,0"])  # the stream is on the primary, to be killed
    try:
        c.wait_normal()
        yield c
    finally:
        c.stop()


def test_a_video_through_the_router_survives_a_sigkill_of_the_primary(cluster: LocalCluster, video: Path,
                                                                    tmp_path: Path) -> None:
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    run = VideoRun(str(video), "--target", cluster.router_address, "--out", str(out), "--json", str(stats),
                   "--rate", "20")
    run.wait_answered(40)
    cluster.primary.signal(signal.SIGKILL)
    assert run.result() == 0, run.lines[-5:]
    s = json.loads(stats.read_text())
    print(f"\nthe run's statistics (-s shows them): {json.dumps(s)}")
    assert (s["frames_read"], s["frames_sent"], s["frames_answered"], s["lost"]) == (120, 120, 120, 0)
    assert frame_count(out)[0] == 120 and s["frames_written"] == 120
    assert s["failovers_seen"] >= 1 and s["worker_changes"][0]["from"] == "primary"
    assert s["worker_changes"][0]["to"] == "standby" and set(s["frames_per_worker"]) == {"primary", "standby"}
    assert s["stream_reconnects"] == 0  # the router kept the client's stream: the failover was its own


def test_ctrl_c_closes_the_output_with_what_was_answered(worker: Proc, video: Path, tmp_path: Path) -> None:
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    run = VideoRun(str(video), "--target", worker.address, "--out", str(out), "--json", str(stats), "--rate", "15")
    run.wait_answered(10)
    run.popen.send_signal(signal.SIGINT)
    assert run.result() == 130
    s = json.loads(stats.read_text())
    assert s["interrupted"] and 10 <= s["frames_answered"] < 120
    assert frame_count(out)[0] == s["frames_written"] == s["frames_answered"]  # a playable file


@pytest.mark.parametrize(("args", "message"), [
    (["/nonexistent/video.mp4"], "cannot open /nonexistent/video.mp4"),
    (["video.mp4", "--every", "0"], "must be at least 1"),
])
def test_bad_sources_and_flags_are_one_line_errors(args: list[str], message: str) -> None:
    done = subprocess.run([str(BIN / "eagleeye"), "video", "--target", "127.0.0.1:1", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
