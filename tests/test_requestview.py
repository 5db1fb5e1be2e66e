"""detector/requestview.py: a large image reaches the decoder as a view of the received bytes, and the
request means exactly what protobuf makes of the same bytes, whatever they are."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.detector.imaging import ImageLimits, decode_encoded, decode_raw
from eagleeye.detector.requestview import VIEW_MIN_BYTES, RequestView, parse
from eagleeye.scenes import encode_jpeg, make_scene

BIG = VIEW_MIN_BYTES + 17


def materialised(got: pb.DetectRequest | RequestView) -> pb.DetectRequest:
    """The plain message a RequestView stands for."""
    if not isinstance(got, RequestView):
        return got
    out = pb.DetectRequest()
    out.CopyFrom(got.message)
    if got.kind == "encoded":
        out.encoded = bytes(got.image)
    else:
        out.raw.data = bytes(got.image)
    return out


def requests() -> list[tuple[str, bytes]]:
    encoded = pb.DetectRequest(encoded=b"\xff\xd8" + bytes(BIG), frame_id=7, score_threshold=0.25,
                               classes=["ellipse", "screen"], max_detections=5)
    raw = pb.DetectRequest(raw=pb.RawImage(data=bytes(range(256)) * (BIG // 256 + 1), width=640, height=480),
                           frame_id=2**40, iou_threshold=0.7)
    small = pb.DetectRequest(encoded=b"\xff\xd8small", frame_id=3)
    cases = [("encoded, knobs", encoded.SerializeToString()), ("raw", raw.SerializeToString()),
             ("small image: parsed as usual", small.SerializeToString()),
             ("no image", pb.DetectRequest(frame_id=9).SerializeToString()),
             ("knobs after the image", pb.DetectRequest(frame_id=4).SerializeToString()
              + pb.DetectRequest(encoded=bytes(BIG)).SerializeToString()
              + pb.DetectRequest(score_threshold=0.5).SerializeToString()),
             # Two image fields: the last wins (protobuf's oneof), so the view stands aside.
             ("encoded then raw", encoded.SerializeToString() + raw.SerializeToString()),
             ("raw then encoded", raw.SerializeToString() + encoded.SerializeToString()),
             ("raw twice (merged)", raw.SerializeToString()
              + pb.DetectRequest(raw=pb.RawImage(width=2)).SerializeToString()),
             ("unknown field", encoded.SerializeToString() + b"\xa0\x06\x01"),  # field 100, varint 1
             ("empty", b"")]
    return cases


@pytest.mark.parametrize(("name", "data"), requests(), ids=[n for n, _ in requests()])
def test_a_request_means_what_protobuf_makes_of_its_bytes(name: str, data: bytes) -> None:
    got = parse(data)
    assert materialised(got) == pb.DetectRequest.FromString(data), name
    if isinstance(got, RequestView):
        assert got.image.obj is data  # a view of the received bytes, not a copy
        assert len(got.image) >= VIEW_MIN_BYTES


def test_large_images_are_views_and_small_ones_are_not() -> None:
    assert isinstance(parse(requests()[0][1]), RequestView)
    assert isinstance(parse(requests()[1][1]), RequestView)
    assert not isinstance(parse(requests()[2][1]), RequestView)


def test_a_request_of_countless_small_fields_is_left_to_protobufs_own_parser() -> None:
    image = pb.DetectRequest(encoded=bytes(BIG)).SerializeToString()
    data = image + b"\xa0\x06\x01" * 200_000  # 200,000 unknown varint fields: not scanned one by one
    got = parse(data)
    assert not isinstance(got, RequestView) and got == pb.DetectRequest.FromString(data)


def test_damaged_bytes_are_refused_or_read_exactly_as_protobuf_does() -> None:
    rng = random.Random(23)
    originals = [d for _, d in requests() if d]
    for case in range(600):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            where = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[where] = rng.randrange(256)
            elif action == 1:
                del data[where:where + rng.randint(1, 8)]
            else:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        if data and rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        raw = bytes(data)
        try:
            expected = pb.DetectRequest.FromString(raw)
        except DecodeError:
            with pytest.raises(DecodeError):
                parse(raw)
            continue
        assert materialised(parse(raw)) == expected, case


def test_the_decoders_read_a_view_as_they_read_bytes() -> None:
    image = make_scene(5, size=(320, 240)).image
    jpeg = encode_jpeg(image, 90)
    limits = ImageLimits(max_bytes=1 << 26, max_pixels=1 << 24)
    assert np.array_equal(decode_encoded(memoryview(b"xx" + jpeg)[2:], limits), decode_encoded(jpeg, limits))
    pixels = image.tobytes()
    assert np.array_equal(decode_raw(memoryview(pixels), 320, 240, limits), image)
