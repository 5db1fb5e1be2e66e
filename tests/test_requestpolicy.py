"""State-dependent request defaults: the pure part (which fields, which bytes, which settings)."""

from __future__ import annotations

import pytest

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.common.cli import ConfigError
from eagleeye.router.requestpolicy import RequestPolicy, check, parse_flag

SEED = {"FAILOVER": {"score_threshold": 0.4}}


def request(**kw: object) -> pb.DetectRequest:
    return pb.DetectRequest(encoded=b"\xff\xd8jpeg bytes", frame_id=7, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "given", "expected", "filled"), [
    ("FAILOVER", {}, {"score_threshold": 0.4}, ("score_threshold",)),
    ("FAILOVER", {"score_threshold": 0.7}, {"score_threshold": 0.7}, ()),      # the client's own value wins
    ("FAILOVER", {"score_threshold": 0.0}, {"score_threshold": 0.0}, ()),      # set to 0 is set
    ("NORMAL", {}, {}, ()),                                                   # no policy for this state
    ("DEGRADED", {"iou_threshold": 0.6}, {"iou_threshold": 0.6}, ()),
])
def test_the_seed_policy(state: str, given: dict[str, float], expected: dict[str, float],
                         filled: tuple[str, ...]) -> None:
    req = request(**given)
    data = req.SerializeToString()
    out = RequestPolicy(check(SEED)).fill(state, req, data)
    assert out.fields == filled
    assert out.data.startswith(data)  # the image bytes are forwarded untouched
    got = pb.DetectRequest.FromString(out.data)
    assert got.encoded == req.encoded and got.frame_id == 7
    for key in ("score_threshold", "iou_threshold", "max_detections"):
        if key in expected:
            assert got.HasField(key) and getattr(got, key) == pytest.approx(expected[key])
        else:
            assert not got.HasField(key)


def test_several_fields_and_a_large_count() -> None:
    policy = RequestPolicy(check({"FAILOVER": {"score_threshold": 0.35, "max_detections": 300,
                                               "iou_threshold": 0.5}}))
    req = request(iou_threshold=0.45)
    out = policy.fill("FAILOVER", req, req.SerializeToString())
    got = pb.DetectRequest.FromString(out.data)
    assert set(out.fields) == {"score_threshold", "max_detections"}
    assert got.max_detections == 300 and got.iou_threshold == pytest.approx(0.45)
    assert got.score_threshold == pytest.approx(0.35)


def test_a_raw_frame_keeps_its_pixels() -> None:
    req = pb.DetectRequest(raw=pb.RawImage(data=bytes(range(256)) * 300, width=160, height=160), frame_id=1)
    out = RequestPolicy(check(SEED)).fill("FAILOVER", req, req.SerializeToString())
    assert pb.DetectRequest.FromString(out.data).raw == req.raw


def test_no_policy_is_falsy() -> None:
    assert not RequestPolicy({}) and RequestPolicy(check(SEED))


@pytest.mark.parametrize(("table", "message"), [
    ({"FAILOVR": {"score_threshold": 0.4}}, "request_defaults.FAILOVR: not a router state"),
    ({"FAILOVER": {"score": 0.4}}, "request_defaults.FAILOVER.score: not a request default"),
    ({"FAILOVER": {"score_threshold": 1.5}}, "request_defaults.FAILOVER.score_threshold=1.5: must be in [0, 1]"),
    ({"FAILOVER": {"iou_threshold": 0}}, "request_defaults.FAILOVER.iou_threshold=0: must be in (0, 1]"),
    ({"FAILOVER": {"max_detections": 2.5}}, "must be a whole number"),
    ({"FAILOVER": {"score_threshold": "low"}}, "must be a number"),
    ({"FAILOVER": {}}, "must be a table of request fields"),
    ([1, 2], "must be a table of router states"),
])
def test_bad_settings_name_what_is_wrong(table: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check(table)
    assert message in str(err.value)


def test_the_flag_form() -> None:
    assert parse_flag("failover:score_threshold=0.4") == ("FAILOVER", "score_threshold", 0.4)
    with pytest.raises(ValueError, match="STATE:FIELD=VALUE"):
        parse_flag("FAILOVER=0.4")
