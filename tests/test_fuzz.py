"""Abuse of the worker and router APIs: random and broken images, random protobuf bytes on every
method, nonsense knobs, unknown methods, unauthenticated admin calls. Every answer must be a clean
gRPC status (never UNKNOWN, the sign of an exception escaping a servicer), nothing may crash, and
health must not change. Short here (`make test`); `FUZZ_EXAMPLES=500 make test` runs it longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.harness.processes import LocalCluster
from eagleeye.scenes import encode_jpeg, encode_png, make_scene

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID = [encode_png(make_scene(1, size=(96, 64)).image), encode_jpeg(make_scene(2, size=(96, 64)).image)]
METHODS = ["/eagleeye.detector.v1.Detector/Detect", "/eagleeye.detector.v1.Detector/GetModelInfo",
           "/grpc.health.v1.Health/Check", "/eagleeye.router.v1.RouterAdmin/GetState",
           "/eagleeye.router.v1.RouterAdmin/SetDrain", "/eagleeye.router.v1.RouterAdmin/Switch",
           "/eagleeye.detector.v1.Detector/NoSuchMethod", "/no.such.Service/Call"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    fast_refusals = tmp_path_factory.mktemp("fuzz") / "router.toml"  # wrong tokens answered at once, not after 1 s
    fast_refusals.write_text("admin_auth_failure_delay_s = 0.0\n")
    c = LocalCluster(router_args=["--config", str(fast_refusals)])
    try:
        c.wait_normal()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def channels(cluster: LocalCluster) -> Iterator[dict[str, grpc.Channel]]:
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    chans = {name: grpc.insecure_channel(addr, options=opts)
             for name, addr in (("worker", cluster.primary_address), ("router", cluster.router_address),
                                ("admin", cluster.admin_address))}
    yield chans
    for ch in chans.values():
        ch.close()


def call(ch: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    """Send raw bytes to a unary method; the status it ends with."""
    try:
        ch.unary_unary(method)(body, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        return code


def assert_clean(code: grpc.StatusCode) -> None:
    """A status that says what happened: not UNKNOWN or INTERNAL (a server-side bug), not a hang."""
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED), code


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096),
                      st.sampled_from(VALID).flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n])),
                      st.tuples(st.sampled_from(VALID), st.integers(0, 400), st.integers(0, 255)).map(
                          lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])),
       target=st.sampled_from(["worker", "router"]))
def test_random_and_broken_images(channels: dict[str, grpc.Channel], data: bytes, target: str) -> None:
    code = call(channels[target], METHODS[0], pb.DetectRequest(encoded=data).SerializeToString())
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), code


@FUZZ
@given(width=st.integers(0, 5000), height=st.integers(0, 5000), size=st.integers(0, 200_000),
       score=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
       iou=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
       max_det=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       classes=st.lists(st.text(max_size=12), max_size=3))
def test_random_raw_frames_and_knobs(channels: dict[str, grpc.Channel], width: int, height: int, size: int,
                                     score: float | None, iou: float | None, max_det: int | None,
                                     classes: list[str]) -> None:
    req = pb.DetectRequest(raw=pb.RawImage(data=b"\x80" * size, width=width, height=height), classes=classes)
    if score is not None:
        req.score_threshold = score
    if iou is not None:
        req.iou_threshold = iou
    if max_det is not None:
        req.max_detections = max_det
    assert_clean(call(channels["router"], METHODS[0], req.SerializeToString()))


@FUZZ
@given(body=st.binary(max_size=2048), method=st.sampled_from(METHODS),
       target=st.sampled_from(["worker", "router", "admin"]))
def test_random_protobuf_bytes_on_every_method(channels: dict[str, grpc.Channel], body: bytes, method: str,
                                               target: str) -> None:
    code = call(channels[target], method, body)
    assert_clean(code)
    if "NoSuch" in method or "no.such" in method:
        assert code == grpc.StatusCode.UNIMPLEMENTED
    if "RouterAdmin" in method and target == "router":
        assert code == grpc.StatusCode.UNIMPLEMENTED, code  # the admin API is not on the client port
    if method.endswith(("SetDrain", "Switch")) and target == "admin":
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT), code  # no token, no action
    if "Detector" in method and target == "admin":
        assert code == grpc.StatusCode.UNIMPLEMENTED, code  # nor the data path on the admin port


@FUZZ
@given(frames=st.lists(st.binary(max_size=512), min_size=1, max_size=5))
def test_random_bytes_in_streams(channels: dict[str, grpc.Channel], frames: list[bytes]) -> None:
    for target in ("worker", "router"):
        stream = channels[target].stream_stream("/eagleeye.detector.v1.Detector/DetectStream")
        try:
            for _ in stream(iter(frames), timeout=30):
                pass
        except grpc.RpcError as e:
            assert_clean(e.code())


def test_oversized_message_and_then_nothing_changed(cluster: LocalCluster, channels: dict[str, grpc.Channel]) -> None:
    for target in ("worker", "router"):
        code = call(channels[target], METHODS[0], pb.DetectRequest(encoded=b"\0" * (40 << 20)).SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # After all of the above: every process alive, every health name as it was, no admin action taken.
    for proc in (cluster.primary, cluster.standby, cluster.router):
        assert proc.popen.poll() is None
    for ch, names in ((channels["worker"], ("", "readiness", "liveness", "headroom")),
                      (channels["router"], ("", "readiness", "liveness", "redundancy"))):
        stub = health_pb2_grpc.HealthStub(ch)
        for name in names:
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING, name
    assert not [e for e in cluster.router.events if e["event"] == "switch" and e["to_state"] != "NORMAL"
                and e["from_state"] == "NORMAL"]
