"""Synthetic video frames for load tests and demos: a pool of generated scenes, pre-encoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.scenes import encode_jpeg, encode_png, make_scene

FORMATS = ("jpeg", "png", "raw")


@dataclass(frozen=True)
class FramePool:
    """Requests ready to send, cycled through; only frame_id changes per frame."""

    requests: tuple[pb.DetectRequest, ...]
    payload_bytes: int

    def frame(self, frame_id: int) -> pb.DetectRequest:
        """The request for frame `frame_id`."""
        req = pb.DetectRequest()
        req.CopyFrom(self.requests[frame_id % len(self.requests)])
        req.frame_id = frame_id
        return req


def image_of(req: pb.DetectRequest) -> Any:
    """The image a request carries, as the client library takes it: encoded bytes, or an RGB array."""
    if req.WhichOneof("image") == "raw":
        return np.frombuffer(req.raw.data, np.uint8).reshape(req.raw.height, req.raw.width, 3)
    return req.encoded


def make_pool(width: int, height: int, fmt: str, count: int = 16, seed: int = 20_000_000) -> FramePool:
    """`count` scenes of width x height, as `fmt` (jpeg, png or raw RGB)."""
    requests = []
    for i in range(count):
        image = make_scene(seed + i, size=(width, height)).image
        if fmt == "raw":
            req = pb.DetectRequest(raw=pb.RawImage(data=image.tobytes(), width=width, height=height))
        else:
            data = encode_jpeg(image) if fmt == "jpeg" else encode_png(image)
            req = pb.DetectRequest(encoded=data)
        requests.append(req)
    size = sum(r.ByteSize() for r in requests) // count
    return FramePool(tuple(requests), size)
