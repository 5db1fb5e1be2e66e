"""Reading frame_id from raw bytes agrees with protobuf itself."""

from __future__ import annotations

import pytest

from eagleeye.detector.v1 import detector_pb2 as pb
from router.wire import REQUEST_FRAME_ID, RESPONSE_FRAME_ID, WireError, frame_id


@pytest.mark.parametrize("fid", [0, 1, 127, 128, 300, 2**32 + 5, 2**64 - 1])
def test_frame_ids_match_protobuf(fid: int) -> None:
    req = pb.DetectRequest(encoded=b"\xff" * 70_000, frame_id=fid, score_threshold=0.5, classes=["a", "b"])
    assert frame_id(req.SerializeToString(), REQUEST_FRAME_ID) == fid
    raw = pb.DetectRequest(raw=pb.RawImage(data=b"\0" * 12, width=2, height=2), frame_id=fid)
    assert frame_id(raw.SerializeToString(), REQUEST_FRAME_ID) == fid
    resp = pb.DetectResponse(frame_id=fid, detections=[pb.Detection(score=0.5, label="x")], worker="w")
    assert frame_id(resp.SerializeToString(), RESPONSE_FRAME_ID) == fid


@pytest.mark.parametrize("junk", [b"\x1a\xff", b"\x18", b"\x80" * 12, b"\x07abc"])
def test_malformed_bytes_are_rejected(junk: bytes) -> None:
    with pytest.raises(WireError):
        frame_id(junk, REQUEST_FRAME_ID)


def test_forwarded_metadata_keeps_custom_and_trace_headers_only() -> None:
    from router.proxy import forwardable

    md = [("x-camera", "cam-7"), ("traceparent", "00-abc-def-01"), ("grpc-trace-bin", b"\x00\x01"),
          ("user-agent", "grpc-python"), ("content-type", "application/grpc"), ("grpc-timeout", "5S"),
          ("authorization", "Bearer s3cret"), (":authority", "router")]
    assert forwardable(md) == (("x-camera", "cam-7"), ("traceparent", "00-abc-def-01"),
                               ("grpc-trace-bin", b"\x00\x01"))


def test_only_backend_failures_are_retried() -> None:
    import grpc

    from router.proxy import retriable

    assert {c for c in grpc.StatusCode if retriable(c)} == {
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
