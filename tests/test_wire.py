"""Reading frame_id from raw bytes, and refusing what the worker could not parse."""

from __future__ import annotations

import pytest

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.router.wire import WireError, request_frame_id, response_frame_id


@pytest.mark.parametrize("fid", [0, 1, 127, 128, 300, 2**32 + 5, 2**64 - 1])
def test_frame_ids_match_protobuf(fid: int) -> None:
    req = pb.DetectRequest(encoded=b"\xff" * 70_000, frame_id=fid, score_threshold=0.5, classes=["a", "b"])
    assert request_frame_id(req.SerializeToString()) == fid
    raw = pb.DetectRequest(raw=pb.RawImage(data=b"\0" * 12, width=2, height=2), frame_id=fid)
    assert request_frame_id(raw.SerializeToString()) == fid
    resp = pb.DetectResponse(frame_id=fid, detections=[pb.Detection(score=0.5, label="x")], worker="w")
    assert response_frame_id(resp.SerializeToString()) == (fid, False)


@pytest.mark.parametrize("junk", [
    b"\x1a\xff", b"\x18", b"\x80" * 12, b"\x07abc",
    b"\x88\x9b\xed\xf3N\xa4K",          # a field number beyond protobuf's range (found by the fuzz pass)
    b"\x3a\x02\xff\xfe",                 # classes: a string that is not UTF-8
    b"\x12\x03\x08\xff\xff",             # raw: a nested RawImage that is truncated
])
def test_what_the_worker_would_refuse_is_refused(junk: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 -- whatever protobuf raises, the worker refuses it too
        pb.DetectRequest.FromString(junk)
    with pytest.raises(WireError):
        request_frame_id(junk)


def test_forwarded_metadata_keeps_custom_and_trace_headers_only() -> None:
    from eagleeye.router.proxy import forwardable

    md = [("x-camera", "cam-7"), ("traceparent", "00-abc-def-01"), ("grpc-trace-bin", b"\x00\x01"),
          ("user-agent", "grpc-python"), ("content-type", "application/grpc"), ("grpc-timeout", "5S"),
          ("authorization", "Bearer s3cret"), (":authority", "router")]
    assert forwardable(md) == (("x-camera", "cam-7"), ("traceparent", "00-abc-def-01"),
                               ("grpc-trace-bin", b"\x00\x01"))


def test_only_backend_failures_and_a_full_queue_are_tried_elsewhere() -> None:
    import grpc
    from grpc.aio import AioRpcError, Metadata

    from eagleeye.router.proxy import outcome
    from eagleeye.router.unary import Outcome

    def error(code: grpc.StatusCode, *trailing: tuple[str, str]) -> AioRpcError:
        return AioRpcError(code, Metadata(), Metadata(*trailing), "details")

    assert outcome(None) is Outcome.OK
    assert {c for c in grpc.StatusCode if c != grpc.StatusCode.OK and outcome(error(c)) is Outcome.FAILED} == {
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    assert outcome(error(grpc.StatusCode.RESOURCE_EXHAUSTED)) is Outcome.FINAL  # e.g. an image too large
    assert outcome(error(grpc.StatusCode.RESOURCE_EXHAUSTED, ("eagleeye-retry-elsewhere", "queue-full"))) \
        is Outcome.OVERLOADED
    assert outcome(error(grpc.StatusCode.INVALID_ARGUMENT)) is Outcome.FINAL


def _large_requests() -> list[bytes]:
    big = b"\xff\xd8" + bytes(range(256)) * 400    # ~100 KB: past LARGE_REQUEST_BYTES
    return [
        pb.DetectRequest(encoded=big, frame_id=9, score_threshold=0.25, max_detections=5,
                         classes=["person", "car"]).SerializeToString(),
        pb.DetectRequest(raw=pb.RawImage(data=big, width=320, height=100), frame_id=2**40,
                         iou_threshold=0.5).SerializeToString(),
        pb.DetectRequest(encoded=big).SerializeToString(),
        # both of the oneof's members (the last wins), an unknown field, a repeated scalar field
        pb.DetectRequest(encoded=big, frame_id=1).SerializeToString()
        + pb.DetectRequest(raw=pb.RawImage(data=big[:70_000], width=1)).SerializeToString()
        + b"\x52\x03abc" + b"\x18\x05",
    ]


def _mutations(seed: int, data: bytes) -> list[bytes]:
    """Damaged copies: bytes changed near the fields' tags and lengths, truncated, junk appended."""
    import random
    rng = random.Random(seed)
    out = [data[:len(data) // 2], data + b"\x0b", data + b"\x3a\x02\xff\xfe", data + b"\x12\x03\x08\xff\xff"]
    for _ in range(150):
        d = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice([rng.randrange(0, 16), rng.randrange(len(d) - 16, len(d))])
            d[at] = rng.randrange(256)
        out.append(bytes(d))
    return out


def _settings(m: pb.DetectRequest) -> tuple[object, ...]:
    """Everything the router reads of a request: all but the image's bytes (and unknown fields)."""
    raw = m.raw if m.WhichOneof("image") == "raw" else None
    return (m.WhichOneof("image"), m.frame_id, m.HasField("score_threshold"), m.score_threshold,
            m.HasField("iou_threshold"), m.iou_threshold, m.HasField("max_detections"), m.max_detections,
            list(m.classes), None if raw is None else (raw.width, raw.height))


@pytest.mark.parametrize("index", range(4))
def test_a_large_request_parsed_without_its_image_gets_protobufs_verdict_and_settings(index: int) -> None:
    """Past LARGE_REQUEST_BYTES the router parses a request without its image's bytes (protobuf's copy
    of a 10 MB image held its loop 2-9 ms): for the request and damaged copies of it, exactly what
    protobuf accepts is accepted, with the same settings, and the rest is refused."""
    from eagleeye.router.wire import LARGE_REQUEST_BYTES, parse_request
    data = _large_requests()[index]
    assert len(data) >= LARGE_REQUEST_BYTES
    for case in [data, *_mutations(index, data)]:
        try:
            expected: pb.DetectRequest | None = pb.DetectRequest.FromString(case)
        except Exception:  # whatever protobuf raises, the router refuses
            expected = None
        if expected is None:
            with pytest.raises(WireError):
                parse_request(case)
        else:
            assert _settings(parse_request(case)) == _settings(expected), case[:24]
