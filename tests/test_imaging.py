"""Decoding and validating client images: every bad input gets a message that says what is wrong."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from eagleeye.detector.imaging import (
    ImageError,
    ImageLimits,
    decode_encoded,
    decode_raw,
    letterbox,
    use_pil_guard,
)
from eagleeye.scenes import encode_jpeg, encode_png

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=1000 * 1000)
IMG = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)


def _bomb_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")  # compresses to a few KB
    return buf.getvalue()


@pytest.mark.parametrize(("data", "too_large", "message"), [
    (b"", False, "empty"),
    (b"not an image at all", False, "not a JPEG or PNG"),
    (encode_jpeg(IMG)[:200], False, "truncated"),
    (encode_png(IMG)[:-30], False, "truncated"),
    (_bomb_png(1200, 1000), True, "1200x1000 = 1200000 pixels; the limit is 1000000 (max_image_pixels)"),
    (_bomb_png(4000, 4000), True, "16000000 pixels"),
    (b"\xff" * (LIMITS.max_bytes + 1), True, "bytes; the limit"),
])
def test_bad_encoded_images_are_refused_with_a_reason(data: bytes, too_large: bool, message: str) -> None:
    with pytest.raises(ImageError) as err:
        decode_encoded(data, LIMITS)
    assert err.value.too_large is too_large
    assert message in str(err.value)


def test_other_formats_are_refused() -> None:
    buf = io.BytesIO()
    Image.fromarray(IMG).save(buf, format="BMP")
    with pytest.raises(ImageError, match="BMP is not supported"):
        decode_encoded(buf.getvalue(), LIMITS)


@pytest.mark.parametrize("encode", [encode_png, encode_jpeg])
def test_good_images_decode_to_rgb(encode) -> None:
    out = decode_encoded(encode(IMG), LIMITS)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_grey_png_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("L", (10, 7), 200).save(buf, format="PNG")
    assert decode_encoded(buf.getvalue(), LIMITS).shape == (7, 10, 3)


@pytest.mark.parametrize(("data", "w", "h", "too_large", "message"), [
    (b"\0" * 12, 2, 3, False, "needs 18 bytes"),
    (b"\0" * 18, 0, 3, False, "positive width and height"),
    (b"", 2000, 2000, True, "pixels; the limit"),
])
def test_bad_raw_images(data: bytes, w: int, h: int, too_large: bool, message: str) -> None:
    with pytest.raises(ImageError) as err:
        decode_raw(data, w, h, LIMITS)
    assert err.value.too_large is too_large and message in str(err.value)


def test_raw_image_round_trips() -> None:
    assert (decode_raw(IMG.tobytes(), 64, 48, LIMITS) == IMG).all()


def test_letterbox_maps_boxes_back_to_the_image() -> None:
    img = np.zeros((240, 320, 3), np.uint8)
    out, lb = letterbox(img, (256, 256))
    assert out.shape == (256, 256, 3)
    assert lb.scale == pytest.approx(0.8) and lb.pad_x == 0 and lb.pad_y == 32
    box_in_model = np.array([[8.0, 32 + 8.0, 80.0, 32 + 40.0]])
    assert lb.to_image(box_in_model)[0] == pytest.approx([10, 10, 100, 50])
    assert lb.to_image(np.array([[-50.0, -50.0, 400.0, 400.0]]))[0] == pytest.approx([0, 0, 320, 240])


# PIL's guard at 1000000 pixels: past twice it PIL refuses while opening; between once and twice it
# warns (ignored) and the header check refuses, unless a filter makes the warning an exception.
PIL_GUARD = {
    "past twice the limit: PIL refuses": (
        (4000, 4000), False, "image is 16000000 pixels by its header; the limit is 1000000 (max_image_pixels)"),
    "past the limit: the header check refuses": (
        (1200, 1000), False, "image is 1200x1000 = 1200000 pixels; the limit is 1000000 (max_image_pixels)"),
    "past the limit, PIL's warning an error (python -W error)": (
        (1200, 1000), True, "image is 1200000 pixels by its header; the limit is 1000000 (max_image_pixels)"),
}


@pytest.mark.parametrize(("size", "warning_is_error", "message"), PIL_GUARD.values(), ids=PIL_GUARD.keys())
def test_pils_own_bomb_guard_is_on_at_the_configured_limit(
        size: tuple[int, int], warning_is_error: bool, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # given back after the test
    use_pil_guard(LIMITS.max_pixels)
    assert Image.MAX_IMAGE_PIXELS == 1000 * 1000
    with warnings.catch_warnings(), pytest.raises(ImageError) as err:
        warnings.simplefilter("error" if warning_is_error else "ignore", Image.DecompressionBombWarning)
        decode_encoded(_bomb_png(*size), LIMITS)
    assert err.value.too_large
    assert str(err.value) == message
