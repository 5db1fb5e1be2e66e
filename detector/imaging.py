"""Decoding and validation of client images, and the letterbox that fits them to the model input.

Everything here raises ImageError with a message meant for the caller; the servicer turns it into
INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL warns between its limit and twice it; the header check refuses those images itself, and a
# warning on stderr would break the JSON log lines.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Letterbox padding: the mid-grey used by YOLO-family preprocessing; the default model trained on it.
PAD_VALUE = 114


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


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize an RGB uint8 image (H x W x 3) to fit `size` (height, width), keeping aspect, padded."""
    th, tw = size
    h, w = image.shape[:2]
    scale = min(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.full((th, tw, 3), PAD_VALUE, dtype=np.uint8)
    px, py = (tw - nw) // 2, (th - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, Letterbox(scale=scale, pad_x=float(px), pad_y=float(py), width=w, height=h)


def decode_encoded(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Decode a JPEG or PNG into RGB uint8, refusing empty, oversized, bomb and broken files."""
    if not data:
        raise ImageError("image is empty: send JPEG/PNG bytes in image.encoded or pixels in image.raw")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes; the limit is {limits.max_bytes} (max_image_bytes)",
                         too_large=True)
    try:
        img = Image.open(io.BytesIO(data))
        # The header gives the size before any pixel is decoded: refuse bombs here.
        w, h = img.size
        if w * h > limits.max_pixels:
            raise ImageError(f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} "
                             "(max_image_pixels)", too_large=True)
        if img.format not in ("JPEG", "PNG"):
            raise ImageError(f"image format {img.format} is not supported; send JPEG or PNG")
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
        raise ImageError("image bytes are not a JPEG or PNG file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image could not be decoded (truncated or corrupt?): {e}") from None
    if w == 0 or h == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_raw(data: bytes, width: int, height: int, limits: ImageLimits) -> np.ndarray:
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

