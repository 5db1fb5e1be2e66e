"""What the library takes and gives: images in (encoded bytes, numpy arrays, PIL images), typed results out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.errors import EagleEyeError, InvalidImage, error_for

#: What `detect` and `stream` take as an image: a JPEG or PNG file's bytes, an H x W x 3 uint8 RGB
#: numpy array (sent raw, no re-encoding) or a PIL image (converted to RGB, sent raw).
Image = Any


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


_UNSET: Any = object()


class Result:
    """One frame's answer. In a stream, `frame_id` is the frame's position (1-based) unless the caller
    gave ids; `error` is set (and `detections` empty) when the service refused this frame alone.

    Immutable, compared and hashed by its fields, like the other result types. A Result made from an
    answer (`Result.of`) keeps the answer and builds `detections`, `timing` and `error` when first read:
    a caller that looks at some fields pays for those alone.
    """

    __slots__ = ("_detections", "_error", "_frame_id", "_resp", "_timing")

    def __init__(self, frame_id: Any, detections: tuple[Detection, ...], worker: str, timing: Timing,
                 image_width: int, image_height: int, error: EagleEyeError | None = None) -> None:
        self._frame_id = frame_id
        self._resp = pb.DetectResponse(worker=worker, image_width=image_width, image_height=image_height)
        self._detections: tuple[Detection, ...] | None = tuple(detections)
        self._timing: Timing | None = timing
        self._error: Any = error

    @classmethod
    def of(cls, frame_id: Any, resp: pb.DetectResponse) -> Result:
        """The Result of a DetectResponse (a frame refused alone becomes `error`), under `frame_id`."""
        # Once per frame: five slots set, nothing converted until it is read.
        obj = object.__new__(cls)
        obj._frame_id, obj._resp, obj._detections, obj._timing, obj._error = frame_id, resp, None, None, _UNSET
        return obj

    @property
    def frame_id(self) -> Any:
        """The frame's position in its stream (from 1), the caller's own id, or 0 from `detect`."""
        return self._frame_id

    @property
    def detections(self) -> tuple[Detection, ...]:
        """The objects found, as the worker listed them."""
        if self._detections is None:
            self._detections = tuple([
                Detection(d.label, d.score, Box(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max), d.class_id)
                for d in self._resp.detections])
        return self._detections

    @property
    def worker(self) -> str:
        """The worker that answered (its id)."""
        return self._resp.worker

    @property
    def timing(self) -> Timing:
        """Where the frame's time went in the worker."""
        if self._timing is None:
            t = self._resp.timing
            self._timing = Timing(t.queue_ms, t.inference_ms, t.total_ms, t.batch_size)
        return self._timing

    @property
    def image_width(self) -> int:
        """The image's width in pixels, as the worker decoded it."""
        return self._resp.image_width

    @property
    def image_height(self) -> int:
        """The image's height in pixels, as the worker decoded it."""
        return self._resp.image_height

    @property
    def error(self) -> EagleEyeError | None:
        """Why the service refused this frame alone (None: it was answered)."""
        if self._error is _UNSET:
            resp, error = self._resp, None
            if resp.HasField("error") and (resp.error.code or resp.error.message):
                code = next((c for c in grpc.StatusCode if c.value[0] == resp.error.code), grpc.StatusCode.UNKNOWN)
                error = error_for(code, resp.error.message)
            self._error = error
        return self._error  # type: ignore[no-any-return]

    def _fields(self) -> tuple[Any, ...]:
        return (self.frame_id, self.detections, self.worker, self.timing, self.image_width, self.image_height,
                self.error)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Result(" + ", ".join(f"{n}={v!r}" for n, v in zip(_RESULT_FIELDS, self._fields(), strict=True)) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return Result, self._fields()


_RESULT_FIELDS = ("frame_id", "detections", "worker", "timing", "image_width", "image_height", "error")


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
