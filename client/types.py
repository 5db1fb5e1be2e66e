"""What the library takes and gives: images in (encoded bytes, numpy arrays, PIL images), typed results out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.errors import EagleEyeError, InvalidImage, error_for

#: What `detect` and `stream` take as an image: a JPEG or PNG file's bytes, an H x W x 3 uint8 RGB
#: numpy array (sent raw, no re-encoding) or a PIL image (converted to RGB, sent raw).
Image = Any
_T = TypeVar("_T")


@dataclass(frozen=True)
class Box:
    """A box in pixels of the image as sent (upright), x right, y down."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class Detection:
    """One object found: its class name (`label`) and index (`class_id`), the model's score (0-1), its box."""

    label: str
    score: float
    box: Box
    class_id: int


@dataclass(frozen=True)
class Timing:
    """Where a frame's time went in the worker (milliseconds), and how many frames shared its batch."""

    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int


@dataclass(frozen=True)
class Result:
    """One frame's answer. In a stream, `frame_id` is the frame's position (1-based) unless the caller
    gave ids; `error` is set (and `detections` empty) when the service refused this frame alone."""

    frame_id: Any
    detections: tuple[Detection, ...]
    worker: str
    timing: Timing
    image_width: int
    image_height: int
    error: EagleEyeError | None = None

    @classmethod
    def of(cls, frame_id: Any, resp: pb.DetectResponse) -> Result:
        """The Result of a DetectResponse (a frame refused alone becomes `error`), under `frame_id`."""
        error = None
        if resp.HasField("error") and (resp.error.code or resp.error.message):
            code = next((c for c in grpc.StatusCode if c.value[0] == resp.error.code), grpc.StatusCode.UNKNOWN)
            error = error_for(code, resp.error.message)
        t = resp.timing
        # Once per frame, so built without the frozen dataclasses' __init__ (a guarded setattr per field,
        # about 3x the cost); the fields are the same and a test compares the two ways.
        detections = tuple([_frozen(Detection, label=d.label, score=d.score, class_id=d.class_id,
                                    box=_frozen(Box, x_min=d.box.x_min, y_min=d.box.y_min, x_max=d.box.x_max,
                                                y_max=d.box.y_max))
                            for d in resp.detections]) if resp.detections else ()
        return _frozen(cls, frame_id=frame_id, worker=resp.worker, image_width=resp.image_width,
                       image_height=resp.image_height, error=error, detections=detections,
                       timing=_frozen(Timing, queue_ms=t.queue_ms, inference_ms=t.inference_ms, total_ms=t.total_ms,
                                      batch_size=t.batch_size))


def _frozen(cls: type[_T], **fields: Any) -> _T:
    """An instance of the frozen dataclass `cls` with every one of its fields given."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


@dataclass(frozen=True)
class Knobs:
    """Per-request settings; None: the worker's default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: Sequence[str] = ()

    def __bool__(self) -> bool:
        """Whether any knob is set (else a request is sent with the worker's defaults as it is)."""
        return (self.score_threshold is not None or self.iou_threshold is not None
                or self.max_detections is not None or bool(self.classes))

    def apply(self, req: pb.DetectRequest) -> None:
        if self.score_threshold is not None:
            req.score_threshold = self.score_threshold
        if self.iou_threshold is not None:
            req.iou_threshold = self.iou_threshold
        if self.max_detections is not None:
            req.max_detections = self.max_detections
        if self.classes:
            req.classes.extend(self.classes)


def request(image: Image, knobs: Knobs | None, frame_id: int = 0) -> pb.DetectRequest:
    """The DetectRequest for one image (`knobs` None: none set); InvalidImage for something that is not
    one of the image types."""
    if type(image) is bytes and image:  # the common case, first
        req = pb.DetectRequest(frame_id=frame_id, encoded=image)
        if knobs is not None:
            knobs.apply(req)
        return req
    req = pb.DetectRequest(frame_id=frame_id)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if not len(image):
            raise InvalidImage("empty image bytes")
        req.encoded = bytes(image)
    else:
        pixels = _pixels(image)
        height, width = pixels.shape[:2]
        req.raw.data, req.raw.width, req.raw.height = pixels.tobytes(), width, height
    if knobs is not None:
        knobs.apply(req)
    return req


def _pixels(image: Image) -> Any:
    import numpy as np  # numpy and PIL only when the caller passes arrays or images

    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"not an image: {type(image).__name__} (give encoded bytes, an H x W x 3 uint8 "
                           "numpy array or a PIL image)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidImage(f"an array image must be H x W x 3 uint8 RGB, not {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)
