"""Decoding and validation of client images, and the letterbox that fits them to the model input.

Everything here raises ImageError with a message meant for the caller; the servicer turns it into
INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import IO, Any, cast

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

# The encoded formats the API accepts (DetectRequest.encoded). PIL is asked to try these parsers only,
# so no other parser (TIFF, PSD, EPS, ...) ever reads a client's bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG")
# PIL's JPEG parser calls a JPEG with a multi-picture index (as phone cameras write) MPO. It is a
# JPEG all the same; its first picture is the one viewers show, and the only one decoded.
_DECODED_FORMATS = {"JPEG", "MPO", "PNG"}
_ACCEPTED = "the accepted formats are JPEG and PNG (or RGB pixels in image.raw)"

# Signatures of other formats, compared as bytes only, to name the format in the refusal.
_OTHER_SIGNATURES = (
    (0, b"GIF8", "GIF"), (0, b"BM", "BMP"), (0, b"II*\0", "TIFF"), (0, b"MM\0*", "TIFF"),
    (0, b"8BPS", "PSD"), (0, b"%!PS", "PostScript/EPS"), (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (8, b"WEBP", "WebP"), (4, b"ftypheic", "HEIC"), (4, b"ftypmif1", "HEIF"), (4, b"ftypavif", "AVIF"),
)

# EXIF Orientation -> the transpose that shows the stored pixels upright, as viewers do (1: as stored).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_QUARTER_TURNS = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                  Image.Transpose.ROTATE_90)
# Letterbox padding: the mid-grey used by YOLO-family preprocessing; the default model trained on it.
PAD_VALUE = 114


def quiet_pil_warnings() -> None:
    """Keep PIL's warnings about a client's image off stderr, where they would break the JSON log lines.

    Process-wide, installed on import. PIL warns between its pixel limit and twice it (the header check
    refuses those images itself), and about broken EXIF or multi-picture data (such an image is used
    as stored).
    """
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.(TiffImagePlugin|JpegImagePlugin)$")


quiet_pil_warnings()


class ImageError(ValueError):
    """A client image that cannot be used; `too_large` selects RESOURCE_EXHAUSTED."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what a client may send."""

    max_bytes: int
    max_pixels: int


def use_pil_guard(max_pixels: int) -> None:
    """Set PIL's own decompression-bomb guard to `max_pixels` (process-wide: PIL has one limit).

    decode_encoded checks the header's size against ImageLimits before any pixel is decoded; PIL's
    guard stands behind that check at the same limit and refuses, while opening, past twice it.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: scale, then offset by (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float
    width: int
    height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes (N x 4, x0 y0 x1 y1) from model-input pixels back to image pixels, clipped."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.height)
        return out


def letterbox(image: np.ndarray, size: tuple[int, int],
              full: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize an RGB uint8 image (H x W x 3) to fit `size` (height, width), keeping aspect, padded.

    `full` (width, height): the image's own size when `image` is a reduced decode of it; the
    Letterbox then maps boxes to the full image's pixels.
    """
    th, tw = size
    w, h = full or (image.shape[1], image.shape[0])
    if (w, h) == (tw, th) and image.shape[:2] == (th, tw):
        return image, Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0, width=w, height=h)  # as it is: no copy
    scale = min(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.full((th, tw, 3), PAD_VALUE, dtype=np.uint8)
    px, py = (tw - nw) // 2, (th - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, Letterbox(scale=scale, pad_x=float(px), pad_y=float(py), width=w, height=h)


def decode_encoded(data: bytes | memoryview, limits: ImageLimits) -> np.ndarray:
    """Decode a JPEG or PNG into upright RGB uint8, refusing empty, oversized, bomb, broken and other files.

    A JPEG's EXIF Orientation (2..8) is applied, so the result is the image as viewers show it, and its
    width and height are swapped for the quarter turns (5..8).
    """
    return decode_encoded_to_fit(data, limits, None)[0]


def decode_encoded_to_fit(data: bytes | memoryview, limits: ImageLimits,
                          fit: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """As decode_encoded, and the upright image's full (width, height); with `fit` (height, width), a
    JPEG is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 scale that still covers what letterbox()
    makes of it at that size.

    The JPEG decoder scales in the frequency domain: a 4096x4096 photo for a 320 px model decodes at
    1/8 size, about 10x faster, and averages its pixels instead of sampling them.
    """
    if not data:
        raise ImageError("image is empty: send JPEG/PNG bytes in image.encoded or pixels in image.raw")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes; the limit is {limits.max_bytes} (max_image_bytes)",
                         too_large=True)
    try:
        img = Image.open(_reader(data), formats=ACCEPTED_FORMATS)
        # The header gives the size before any pixel is decoded: refuse bombs here. A quarter turn
        # swaps width and height, so the upright image has the same number of pixels.
        w, h = img.size
        if w * h > limits.max_pixels:
            raise ImageError(f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} "
                             "(max_image_pixels)", too_large=True)
        if img.format not in _DECODED_FORMATS:
            raise ImageError(f"image format {img.format} is not supported; {_ACCEPTED}")
        upright = _upright(img)
        if fit is not None and img.format in ("JPEG", "MPO"):
            full_w, full_h = (h, w) if upright in _QUARTER_TURNS else (w, h)
            scale = min(fit[1] / full_w, fit[0] / full_h)
            need_w, need_h = max(1, round(full_w * scale)), max(1, round(full_h * scale))
            img.draft("RGB", (need_h, need_w) if upright in _QUARTER_TURNS else (need_w, need_h))
        img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's guard speaks while opening, before the header check above: past twice its limit, or
        # past it where a warnings filter (python -W error) makes its warning an exception.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"image is {found.group(1)} pixels" if found else "image has too many pixels"
        raise ImageError(f"{size} by its header; the limit is {limits.max_pixels} (max_image_pixels)",
                         too_large=True) from None
    except UnidentifiedImageError:
        other = _other_format(data)
        looks = f" (they look like {other})" if other else ""
        raise ImageError(f"image bytes are not a JPEG or PNG file{looks}; {_ACCEPTED}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image could not be decoded (truncated or corrupt?): {e}") from None
    if w == 0 or h == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    picture = img if upright is None else img.transpose(upright)
    full = (h, w) if upright in _QUARTER_TURNS else (w, h)
    return np.asarray(picture.convert("RGB"), dtype=np.uint8), full


class _ViewReader(io.RawIOBase):
    """A read-only file over a memoryview: the decoder reads the request's bytes in chunks, with no
    copy of the whole image (io.BytesIO copies anything but a bytes object)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n


def _reader(data: bytes | memoryview) -> IO[bytes]:
    return io.BytesIO(data) if isinstance(data, bytes) else cast(IO[bytes], _ViewReader(data))


def _upright(img: Image.Image) -> Image.Transpose | None:
    """The transpose a JPEG's EXIF Orientation asks for, or None (no tag, 1, or no valid value)."""
    exif = img.info.get("exif")
    if img.format not in ("JPEG", "MPO") or not isinstance(exif, bytes):
        return None
    tags = Image.Exif()
    try:
        tags.load(exif)
        orientation = tags.get(ExifTags.Base.Orientation)
    except Exception:  # PIL raises several types for broken EXIF; viewers show such an image as stored
        return None
    return _UPRIGHT.get(orientation) if isinstance(orientation, int) else None


def _other_format(data: bytes | memoryview) -> str | None:
    """The name of the format `data` looks like, by its signature alone, or None."""
    for offset, signature, name in _OTHER_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return name
    return None


def decode_raw(data: bytes | memoryview, width: int, height: int, limits: ImageLimits) -> np.ndarray:
    """View raw RGB bytes (height x width x 3, row-major) as an image, checking the size."""
    if width <= 0 or height <= 0:
        raise ImageError(f"raw image needs positive width and height, got {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"raw image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} "
            "(max_image_pixels)", too_large=True)
    expected = width * height * 3
    if len(data) != expected:
        raise ImageError(
            f"raw image of {width}x{height} RGB needs {expected} bytes ({width}*{height}*3), got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)

