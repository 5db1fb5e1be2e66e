"""Synthetic test videos: the default model's shapes moving across the frame (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eagleeye.scenes import make_scene


def write_video(path: Path, frames: int, size: tuple[int, int] = (320, 240), fps: int = 30) -> None:
    """`frames` frames at `fps`: a scene whose content moves 3 pixels right per frame, a new scene every 40."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.roll(make_scene(1000 + i // 40, size).image, 3 * (i % 40), axis=1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def frame_count(path: Path) -> tuple[int, float, tuple[int, int]]:
    """Decoded frames, frame rate and size of a video file."""
    import av

    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        count = sum(1 for _ in video.decode(video=0))
        return count, float(stream.average_rate or 0), (stream.width, stream.height)
