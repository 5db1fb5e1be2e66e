"""Decoding and validating client images: every bad input gets a message that says what is wrong."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from PIL import ExifTags, Image

from eagleeye.detector.imaging import (
    ImageError,
    ImageLimits,
    decode_encoded,
    decode_encoded_to_fit,
    decode_raw,
    letterbox,
    quiet_pil_warnings,
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


def _saved(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(IMG).save(buf, format=fmt)
    return buf.getvalue()


# Bodies in formats PIL could read but the API does not accept, and what the refusal calls them.
OTHER_FORMATS = {
    "TIFF": (_saved("TIFF"), "(they look like TIFF)"),
    "GIF": (_saved("GIF"), "(they look like GIF)"),
    "BMP": (_saved("BMP"), "(they look like BMP)"),
    "WebP": (_saved("WEBP"), "(they look like WebP)"),
    "PPM": (_saved("PPM"), "file; the accepted"),
    "EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n", "(they look like PostScript/EPS)"),
    "PSD": (b"8BPS\0\x01" + b"\0" * 6 + b"\0\x03\0\0\0\x30\0\0\0\x40\0\x08\0\x03", "(they look like PSD)"),
    "HEIC": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "(they look like HEIC)"),
}


@pytest.mark.parametrize(("data", "named"), OTHER_FORMATS.values(), ids=OTHER_FORMATS.keys())
def test_other_formats_are_refused_naming_the_accepted_ones(
        data: bytes, named: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.init()  # every plugin registered, so that a parser that ran would be one of those fenced off

    def fenced(*args: object) -> bool:
        raise AssertionError("a parser other than JPEG's or PNG's read the bytes")

    monkeypatch.setattr(Image, "OPEN", {name: opener if name in ("JPEG", "PNG") else (fenced, fenced)
                                        for name, opener in Image.OPEN.items()})
    with pytest.raises(ImageError) as err:
        decode_encoded(data, LIMITS)
    assert not err.value.too_large
    assert str(err.value).startswith("image bytes are not a JPEG or PNG file")
    assert named in str(err.value)
    assert str(err.value).endswith("the accepted formats are JPEG and PNG (or RGB pixels in image.raw)")


@pytest.mark.parametrize("encode", [encode_png, encode_jpeg])
def test_good_images_decode_to_rgb(encode) -> None:
    out = decode_encoded(encode(IMG), LIMITS)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_grey_png_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("L", (10, 7), 200).save(buf, format="PNG")
    assert decode_encoded(buf.getvalue(), LIMITS).shape == (7, 10, 3)


# An upright 64 x 48 picture with a white block at its top-left corner and a red one at its top-right:
# the two blocks tell every one of the eight orientations apart.
UPRIGHT = np.zeros((48, 64, 3), np.uint8)
UPRIGHT[:16, :16] = 255
UPRIGHT[:16, -16:] = (255, 0, 0)

# EXIF Orientation: how the stored pixels are laid out, in the words of the EXIF standard ("row 0 is
# the visual top, column 0 the visual left"), as the stored array made from the upright one.
STORED: dict[int, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    1: ("row 0 top, column 0 left", lambda u: u),
    2: ("row 0 top, column 0 right", lambda u: u[:, ::-1]),
    3: ("row 0 bottom, column 0 right", lambda u: u[::-1, ::-1]),
    4: ("row 0 bottom, column 0 left", lambda u: u[::-1, :]),
    5: ("row 0 left, column 0 top", lambda u: u.transpose(1, 0, 2)),
    6: ("row 0 right, column 0 top", lambda u: u[:, ::-1].transpose(1, 0, 2)),
    7: ("row 0 right, column 0 bottom", lambda u: u[::-1, ::-1].transpose(1, 0, 2)),
    8: ("row 0 left, column 0 bottom", lambda u: u[::-1, :].transpose(1, 0, 2)),
}


def _jpeg(pixels: np.ndarray, orientation: int | None = None, exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    tags = Image.Exif()
    if orientation is not None:
        tags[ExifTags.Base.Orientation] = orientation
    Image.fromarray(np.ascontiguousarray(pixels)).save(
        buf, format="JPEG", quality=95, subsampling=0, exif=exif if exif is not None else tags.tobytes())
    return buf.getvalue()


def _corners(image: np.ndarray) -> list[tuple[int, ...]]:
    """Mean colour of the four 16 x 16 corners (top-left, top-right, bottom-left, bottom-right), rounded."""
    return [tuple(85 * round(float(c) / 85) for c in image[rows, cols].reshape(-1, 3).mean(axis=0))
            for rows in (slice(0, 16), slice(-16, None)) for cols in (slice(0, 16), slice(-16, None))]


UPRIGHT_CORNERS = [(255, 255, 255), (255, 0, 0), (0, 0, 0), (0, 0, 0)]


@pytest.mark.parametrize("orientation", STORED.keys(), ids=[f"{o}: {w}" for o, (w, _) in STORED.items()])
def test_a_jpeg_is_turned_upright_by_its_exif_orientation(orientation: int) -> None:
    stored = STORED[orientation][1](UPRIGHT)
    assert stored.shape == ((64, 48, 3) if orientation >= 5 else (48, 64, 3))
    assert _corners(stored) != UPRIGHT_CORNERS or orientation == 1  # the file really is turned
    out = decode_encoded(_jpeg(stored, orientation), LIMITS)
    assert out.shape == (48, 64, 3)
    assert _corners(out) == UPRIGHT_CORNERS


TURNED_AS_STORED = {
    "no EXIF": _jpeg(UPRIGHT, exif=b""),
    "EXIF without Orientation": _jpeg(UPRIGHT),
    "Orientation 0 (not a valid value)": _jpeg(UPRIGHT, 0),
    "Orientation 9 (not a valid value)": _jpeg(UPRIGHT, 9),
    "broken EXIF": _jpeg(UPRIGHT, exif=b"Exif\0\0MM\0*\0\0\0\x08\0\x05\x01\x12\0\x03"),
    "EXIF that is not TIFF data": _jpeg(UPRIGHT, exif=b"Exif\0\0garbage"),
}


@pytest.mark.parametrize("data", TURNED_AS_STORED.values(), ids=TURNED_AS_STORED.keys())
def test_a_jpeg_without_a_valid_orientation_is_used_as_stored_without_a_word(data: bytes) -> None:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # anything the worker's filters let through is seen
        quiet_pil_warnings()  # in front, as in the worker (pytest gives each test its own filters)
        out = decode_encoded(data, LIMITS)
    assert out.shape == (48, 64, 3) and _corners(out) == UPRIGHT_CORNERS
    assert [str(w.message) for w in said] == []  # nothing on stderr to break the JSON log lines


def test_a_png_is_used_as_stored_whatever_its_exif_says() -> None:
    tags = Image.Exif()
    tags[ExifTags.Base.Orientation] = 6
    buf = io.BytesIO()
    Image.fromarray(UPRIGHT).save(buf, format="PNG", exif=tags.tobytes())
    assert (decode_encoded(buf.getvalue(), LIMITS) == UPRIGHT).all()


def test_a_multi_picture_jpeg_from_a_phone_decodes_its_first_picture_upright() -> None:
    first, second = (Image.fromarray(np.ascontiguousarray(STORED[6][1](UPRIGHT))),
                     Image.new("RGB", (48, 64), (0, 0, 255)))
    tags = Image.Exif()
    tags[ExifTags.Base.Orientation] = 6
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second], exif=tags.tobytes(), quality=95,
               subsampling=0)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    out = decode_encoded(buf.getvalue(), LIMITS)
    assert out.shape == (48, 64, 3) and _corners(out) == UPRIGHT_CORNERS


@pytest.mark.parametrize(("size", "refused"), [((800, 1250), False), ((801, 1250), True)])
def test_the_pixel_limit_holds_for_a_turned_image(size: tuple[int, int], refused: bool) -> None:
    data = _jpeg(np.zeros((size[1], size[0], 3), np.uint8), 6)  # stored 800 wide, upright 1250 wide
    if refused:
        with pytest.raises(ImageError, match="801x1250 = 1001250 pixels; the limit is 1000000") as err:
            decode_encoded(data, LIMITS)
        assert err.value.too_large
    else:
        assert decode_encoded(data, LIMITS).shape == (800, 1250, 3)


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


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_the_model_input(orientation: int) -> None:
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 256, (1000, 2400, 3), dtype=np.uint8)   # 2400 wide, 1000 high as stored
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    limits = ImageLimits(1 << 24, 1 << 24)
    full_pixels = decode_encoded(buf.getvalue(), limits)
    pixels, full = decode_encoded_to_fit(buf.getvalue(), limits, (256, 320))
    assert full == (full_pixels.shape[1], full_pixels.shape[0])       # the upright image's own size
    assert pixels.shape[0] < full_pixels.shape[0]                     # decoded smaller ...
    _, lb = letterbox(pixels, (256, 320), full)
    _, lb_full = letterbox(full_pixels, (256, 320))
    assert lb == lb_full                                              # ... and boxes map to the same pixels
    assert pixels.shape[1] >= round(full[0] * lb.scale) and pixels.shape[0] >= round(full[1] * lb.scale)
