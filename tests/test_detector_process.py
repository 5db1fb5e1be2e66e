"""The real eagleeye-detector process: health over the standard protocol, detection, bad input, faults."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from eagleeye.api.common.orca.v3 import orca_pb2
from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.common import loadreport
from eagleeye.common.loadreport import QUEUE_CAPACITY, TRAILER
from eagleeye.scenes import encode_jpeg, encode_png, make_scene
from tests.conftest import fast_config
from tests.h2raw import Relay, literal_header_values
from tests.procs import BIN, NOT_SERVING, SERVING, HealthWatch, Proc, check, reflect, start_detector

pytestmark = pytest.mark.integration
NAMES = ["", "readiness", "eagleeye.detector.v1.Detector", "liveness", "headroom"]
READY_NAMES = ["", "readiness", "eagleeye.detector.v1.Detector"]


@pytest.fixture
async def channel(worker: Proc) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(worker.address) as ch:
        await wait_ready(ch)
        yield ch
        # Leave the shared worker as we found it.
        await fi_grpc.FaultInjectionStub(ch).ClearFaults(fi.ClearFaultsRequest(), timeout=5)
        await wait_ready(ch)


async def wait_ready(ch: grpc.aio.Channel, timeout: float = 60) -> None:
    w = HealthWatch(ch, "headroom")
    try:
        await w.wait_for(SERVING, timeout)
    finally:
        w.cancel()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "eagleeye"), *args], capture_output=True, text=True, timeout=timeout)


async def test_liveness_serves_while_the_model_loads_then_every_name_serves(tmp_path: Path) -> None:
    proc = start_detector("--config", fast_config(tmp_path))
    try:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            assert await check(ch, "liveness") == SERVING
            readiness = HealthWatch(ch, "readiness")
            await readiness.wait_for(SERVING, 60)
            assert readiness.statuses[0] == NOT_SERVING  # loading came first, and Watch showed it
            for name in NAMES:
                assert await check(ch, name) == SERVING, name
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check(ch, "no.such.Service")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.DetectorStub(ch).Detect(pb.DetectRequest(encoded=b"junk"), timeout=10)
            readiness.cancel()
    finally:
        assert proc.stop() == 0
    stopped = proc.wait_for_event("stopped")
    assert stopped["errors"] == {"Detect/INVALID_ARGUMENT": 1}, "refused requests are counted"
    transitions = [e for e in proc.events if e["event"] == "health transition"]
    assert transitions[0]["reasons"] == ["model: loading or warming up"]
    assert transitions[1]["ready"] is True


async def test_a_compiled_model_is_ready_only_once_compiled_and_answers_every_batch_size(tmp_path: Path) -> None:
    from eagleeye.detector.model import export_model
    from tests.test_model import Tiny

    model = tmp_path / "tiny.pt2"
    export_model(Tiny(), model, name="tiny", version="1", classes=("thing",), input_size=(32, 32))
    proc = start_detector("--config", fast_config(tmp_path, {"max_batch": 2, "inference_threads": 2}),
                          "--model", str(model), "--compile")
    try:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            assert await check(ch, "liveness") == SERVING
            readiness = HealthWatch(ch, "readiness")
            await readiness.wait_for(SERVING, 240)
            readiness.cancel()
            assert readiness.statuses[0] == NOT_SERVING  # not ready while it compiled
            assert [e["batch_size"] for e in proc.events if e["event"] == "compiled"] == [1, 2]
            ready = proc.wait_for_event("model ready")
            assert ready["inference_threads"] == 1  # compiled graphs run one batch at a time
            stub = pb_grpc.DetectorStub(ch)
            for n in (1, 2, 3):  # each image gets its own answer, however they were batched (tests/test_model.py
                # checks that a batch runs padded to a compiled size)
                shades = [100 + 40 * i for i in range(n)]  # each over the 0.3 score threshold
                answers = await asyncio.gather(*(
                    stub.Detect(pb.DetectRequest(encoded=encode_png(np.full((32, 32, 3), v, np.uint8))), timeout=30)
                    for v in shades))
                assert [a.detections[0].score for a in answers] == pytest.approx([v / 255 for v in shades], abs=1e-3)
    finally:
        assert proc.stop() == 0
    assert not [e for e in proc.events if e["event"] == "inference failed"]


def test_reflection_lists_and_describes_the_api(worker: Proc) -> None:
    listed, methods = reflect(worker.address, "eagleeye.detector.v1.Detector")
    assert listed == {"eagleeye.detector.v1.Detector", "eagleeye.detector.testing.v1.FaultInjection",
                      "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert {f"eagleeye.detector.v1.Detector/{m}" for m in ("Detect", "DetectStream", "GetModelInfo")} == methods


async def test_model_info(channel: grpc.aio.Channel) -> None:
    info = await pb_grpc.DetectorStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert list(info.classes) == ["screen", "ellipse", "triangle"]
    assert (info.input_height, info.input_width, info.device, info.backend) == (256, 256, "cpu", "torch")


async def test_the_worker_reports_its_load_per_answer_and_to_subscribers(worker: Proc,
                                                                         channel: grpc.aio.Channel) -> None:
    scene = make_scene(5, size=(320, 240))
    request = pb.DetectRequest(encoded=encode_png(scene.image))
    relay = Relay(worker.address)  # grpcio keeps the trailer for its own balancing: read the wire
    try:
        async with grpc.aio.insecure_channel(relay.address) as ch:
            await pb_grpc.DetectorStub(ch).Detect(request, timeout=10)
    finally:
        relay.close()
    [trailer] = literal_header_values(bytes(relay.answers), TRAILER)
    assert orca_pb2.OrcaLoadReport.FromString(trailer).named_metrics[QUEUE_CAPACITY] > 0

    # Out of band: while frames go through the model, the reports say it is busy and frames are answered.
    reports = loadreport.subscribe(channel, 0.5)
    stub = pb_grpc.DetectorStub(channel)
    await asyncio.wait_for(reports.read(), 10)
    done = asyncio.Event()

    async def caller() -> None:
        while not done.is_set():
            await stub.Detect(request, timeout=30)

    callers = asyncio.gather(*(caller() for _ in range(4)))
    try:
        seen = [await asyncio.wait_for(reports.read(), 10) for _ in range(4)]
    finally:
        done.set()
        await callers
        reports.cancel()
    assert max(r.application_utilization for r in seen) > 0.3, seen
    assert max(r.rps_fractional for r in seen) > 1, seen
    assert max(r.cpu_utilization for r in seen) > 0.1, seen


async def test_detections_match_the_scene(channel: grpc.aio.Channel) -> None:
    scene = make_scene(123_456_789, size=(320, 240))
    stub = pb_grpc.DetectorStub(channel)
    for request in (pb.DetectRequest(encoded=encode_png(scene.image), frame_id=7),
                    pb.DetectRequest(raw=pb.RawImage(data=scene.image.tobytes(), width=320, height=240))):
        resp = await stub.Detect(request, timeout=10)
        assert resp.frame_id == request.frame_id and (resp.image_width, resp.image_height) == (320, 240)
        assert resp.worker and resp.timing.total_ms > 0
        found = sorted((d.class_id, round(d.box.x_min)) for d in resp.detections)
        truth = sorted((int(c), round(float(b[0]))) for b, c in zip(scene.boxes, scene.classes))
        assert [c for c, _ in found] == [c for c, _ in truth]
        for (_, x), (_, tx) in zip(found, truth):
            assert abs(x - tx) <= 8


async def test_a_sideways_phone_jpeg_is_answered_in_upright_coordinates(channel: grpc.aio.Channel) -> None:
    upright = make_scene(123_456_789, size=(320, 240)).image
    # Stored as a phone held sideways writes it: turned a quarter, EXIF Orientation 6 to undo it.
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upright[:, ::-1].transpose(1, 0, 2))).save(
        buf, format="JPEG", quality=95, exif=exif.tobytes())
    stub = pb_grpc.DetectorStub(channel)
    sideways = await stub.Detect(pb.DetectRequest(encoded=buf.getvalue(), score_threshold=0.5), timeout=10)
    plain = await stub.Detect(pb.DetectRequest(encoded=encode_jpeg(upright, quality=95), score_threshold=0.5),
                              timeout=10)
    assert (sideways.image_width, sideways.image_height) == (plain.image_width, plain.image_height) == (320, 240)

    def boxes(resp: pb.DetectResponse) -> list[tuple[int, float, float, float, float]]:
        return sorted((d.class_id, d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) for d in resp.detections)

    assert plain.detections and [b[0] for b in boxes(sideways)] == [b[0] for b in boxes(plain)]
    for turned, straight in zip(boxes(sideways), boxes(plain)):
        assert turned[1:] == pytest.approx(straight[1:], abs=4)


async def test_detect_cli(worker: Proc, channel: grpc.aio.Channel, tmp_path: Path) -> None:
    img = tmp_path / "frame.jpg"
    img.write_bytes(encode_jpeg(make_scene(5, size=(320, 240)).image))
    out = await asyncio.to_thread(run_cli, "detect", "--target", worker.address, str(img), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["width"] == 320 and result["detections"]
    assert {"label", "score", "box"} <= result["detections"][0].keys()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = await asyncio.to_thread(run_cli, "detect", "--target", worker.address, str(bad))
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "Traceback" not in out.stderr


async def test_detect_cli_takes_a_folder_and_writes_annotated_images(worker: Proc, tmp_path: Path) -> None:
    from PIL import Image

    from eagleeye.client.annotate import colour

    folder, drawn = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for seed, name in ((5, "a.png"), (6, "b.jpg")):
        image = make_scene(seed, size=(320, 240)).image
        (folder / name).write_bytes(encode_png(image) if name.endswith(".png") else encode_jpeg(image))
    (folder / "notes.txt").write_text("not an image")  # skipped: only JPEG and PNG files of a folder
    out = await asyncio.to_thread(run_cli, "detect", "--target", worker.address, str(folder), "--annotate",
                                  str(drawn), "--json")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["image"]).name for r in results] == ["a.png", "b.jpg"]
    for r in results:
        original = Image.open(folder / Path(r["image"]).name).convert("RGB")
        annotated = Image.open(drawn / Path(r["image"]).name).convert("RGB")
        assert annotated.size == original.size and r["detections"]
        first = r["detections"][0]
        x0, y0, x1, _ = (round(v) for v in first["box"])
        want = colour(first["class_id"])
        pixels = np.asarray(annotated).astype(int)
        span = slice(max(x0, 0), min(x1, 319))
        rows = [pixels[min(max(y, 0), 239), span] for y in (y0 - 1, y0, y0 + 1)]
        near = max(int((np.abs(row - np.array(want)).sum(axis=1) < 90).sum()) for row in rows)
        assert near > (span.stop - span.start) // 2, want  # the box's top edge, in its class's colour
    empty = tmp_path / "empty"
    empty.mkdir()
    out = await asyncio.to_thread(run_cli, "detect", "--target", worker.address, str(empty))
    assert out.returncode == 1 and "no JPEG or PNG files" in out.stderr


@pytest.mark.parametrize("mode", ["unary", "stream"])
async def test_load_cli_answers_every_frame_once(worker: Proc, channel: grpc.aio.Channel, mode: str) -> None:
    out = await asyncio.to_thread(run_cli, "load", "--target", worker.address, "--mode", mode,
                                  "--rate", "15", "--duration", "3", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["sent"] == summary["answered"] == 45
    assert summary["errors"] == summary["lost"] == summary["duplicated"] == 0
    assert summary["reordered"] == (0 if mode == "stream" else None)  # unary calls have no order
    assert summary["p50_ms"] > 0


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_REQUESTS = [
    (pb.DetectRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no image"),
    (pb.DetectRequest(encoded=b""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (pb.DetectRequest(encoded=b"GIF89a garbage"), grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG or PNG"),
    (pb.DetectRequest(encoded=encode_jpeg(make_scene(1).image)[:300]), grpc.StatusCode.INVALID_ARGUMENT,
     "truncated"),
    (pb.DetectRequest(encoded=_bomb()), grpc.StatusCode.RESOURCE_EXHAUSTED, "400000000 pixels by its header"),
    (pb.DetectRequest(encoded=b"\x89PNG" + b"\0" * 2_120_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 2097152"),
    (pb.DetectRequest(encoded=b"\0" * 5_000_000), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),  # over the gRPC limit
    (pb.DetectRequest(raw=pb.RawImage(data=b"\0" * 100, width=10, height=10)), grpc.StatusCode.INVALID_ARGUMENT,
     "needs 300 bytes"),
    (pb.DetectRequest(encoded=encode_png(make_scene(1).image), score_threshold=1.5),
     grpc.StatusCode.INVALID_ARGUMENT, "score_threshold 1.5"),
    (pb.DetectRequest(encoded=encode_png(make_scene(1).image), iou_threshold=0.0),
     grpc.StatusCode.INVALID_ARGUMENT, "iou_threshold"),
    (pb.DetectRequest(encoded=encode_png(make_scene(1).image), max_detections=0),
     grpc.StatusCode.INVALID_ARGUMENT, "max_detections 0"),
    (pb.DetectRequest(encoded=encode_png(make_scene(1).image), classes=["dog"]),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown class 'dog'"),
]


async def test_bad_input_is_refused_without_harm(worker: Proc, channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.DetectorStub(channel)
    watch = HealthWatch(channel, "readiness")
    await watch.wait_for(SERVING)
    for request, code, message in BAD_REQUESTS:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Detect(request, timeout=30)
        assert err.value.code() == code, (message, err.value.details())
        assert message in (err.value.details() or ""), err.value.details()
    # A bad frame in a stream is answered with an error; the stream goes on.
    good = pb.DetectRequest(encoded=encode_png(make_scene(2).image))
    frames = [pb.DetectRequest(frame_id=1, encoded=b"junk"), pb.DetectRequest(frame_id=2, encoded=good.encoded)]
    answers = [r async for r in stub.DetectStream(iter(frames), timeout=30)]
    assert [a.frame_id for a in answers] == [1, 2]
    assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not answers[1].HasField("error")
    assert watch.statuses == [SERVING], "bad input must not change health"
    assert worker.popen.poll() is None
    watch.cancel()


async def test_check_stays_fast_while_inference_is_slow(channel: grpc.aio.Channel) -> None:
    faults = fi_grpc.FaultInjectionStub(channel)
    await faults.DelayInference(fi.DelayInferenceRequest(seconds=0.5), timeout=5)
    stub = pb_grpc.DetectorStub(channel)
    frame = pb.DetectRequest(encoded=encode_png(make_scene(3).image))
    busy = [asyncio.ensure_future(stub.Detect(frame, timeout=30)) for _ in range(8)]
    worst = 0.0
    for _ in range(20):
        t0 = time.perf_counter()
        await check(channel, "readiness")
        worst = max(worst, time.perf_counter() - t0)
    await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    await asyncio.gather(*busy)
    assert worst < 0.5, f"Check took {worst:.3f} s while inference was busy"


async def test_slow_inference_makes_readiness_fail_and_recover(channel: grpc.aio.Channel) -> None:
    faults = fi_grpc.FaultInjectionStub(channel)
    ready, live = HealthWatch(channel, "readiness"), HealthWatch(channel, "liveness")
    await ready.wait_for(SERVING)
    await faults.DelayInference(fi.DelayInferenceRequest(seconds=2.5), timeout=5)
    down = await ready.wait_for(NOT_SERVING, 20)
    await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    await ready.wait_for(SERVING, 20, after=down)
    assert NOT_SERVING not in live.statuses
    ready.cancel()
    live.cancel()


async def test_hung_inference_fails_readiness_then_liveness_and_recovers(channel: grpc.aio.Channel) -> None:
    faults = fi_grpc.FaultInjectionStub(channel)
    ready, live = HealthWatch(channel, "readiness"), HealthWatch(channel, "liveness")
    await live.wait_for(SERVING)
    await faults.HangInference(fi.HangInferenceRequest(), timeout=5)
    t0 = time.monotonic()
    await ready.wait_for(NOT_SERVING, 20)
    down = await live.wait_for(NOT_SERVING, 30)
    assert time.monotonic() - t0 >= 3.0, "liveness must wait for the longer hang deadline"
    assert await check(channel, "liveness") == NOT_SERVING  # the health service itself still answers
    await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    await live.wait_for(SERVING, 20, after=down)
    await ready.wait_for(SERVING, 20)
    ready.cancel()
    live.cancel()


GiB = 1024**3


async def test_one_soft_trigger_costs_headroom_two_cost_readiness(channel: grpc.aio.Channel) -> None:
    faults = fi_grpc.FaultInjectionStub(channel)
    ready, headroom = HealthWatch(channel, "readiness"), HealthWatch(channel, "headroom")
    await headroom.wait_for(SERVING)
    hot = fi.SetTelemetryRequest(utilization_percent=99, memory_used_bytes=4 * GiB, memory_total_bytes=16 * GiB,
                       temperature_c=70)
    await faults.SetTelemetry(hot, timeout=5)
    await headroom.wait_for(NOT_SERVING, 20)
    assert ready.statuses == [SERVING]
    hot.thermal_slowdown = True
    await faults.SetTelemetry(hot, timeout=5)
    down = await ready.wait_for(NOT_SERVING, 20)
    await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    await ready.wait_for(SERVING, 20, after=down)
    ready.cancel()
    headroom.cancel()


async def test_an_overheating_gpu_is_taken_out_of_service_until_it_has_cooled(worker: Proc,
                                                                           channel: grpc.aio.Channel) -> None:
    faults = fi_grpc.FaultInjectionStub(channel)
    ready = HealthWatch(channel, "readiness")
    await ready.wait_for(SERVING)
    worker.forget_events()
    telemetry = fi.SetTelemetryRequest(utilization_percent=40, memory_used_bytes=4 * GiB,
                                       memory_total_bytes=16 * GiB, temperature_c=91)
    await faults.SetTelemetry(telemetry, timeout=5)
    down = await ready.wait_for(NOT_SERVING, 20)
    transition = await asyncio.to_thread(worker.wait_for_event, "health transition", 20, ready=False)
    assert any("hardware protection" in reason for reason in transition["reasons"]), transition
    telemetry.temperature_c = 82  # below critical, not yet below the recovery temperature: still held
    await faults.SetTelemetry(telemetry, timeout=5)
    telemetry.temperature_c = 70
    await faults.SetTelemetry(telemetry, timeout=5)
    await ready.wait_for(SERVING, 20, after=down)
    await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    ready.cancel()


async def test_critical_gpu_fault_and_sticky_cuda_error(tmp_path: Path) -> None:
    proc = start_detector("--fault-injection", "--config", fast_config(tmp_path))
    try:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            ready, live = HealthWatch(ch, "readiness"), HealthWatch(ch, "liveness")
            await ready.wait_for(SERVING, 60)
            faults = fi_grpc.FaultInjectionStub(ch)
            await faults.SetTelemetry(fi.SetTelemetryRequest(utilization_percent=10, memory_used_bytes=GiB,
                                                   memory_total_bytes=16 * GiB, temperature_c=50,
                                                   xid_events=[79]), timeout=5)
            await ready.wait_for(NOT_SERVING, 20)
            assert await check(ch, "liveness") == SERVING  # a restart does not cure a GPU off the bus
            await faults.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
            await faults.RaiseCudaError(fi.RaiseCudaErrorRequest(), timeout=5)
            await live.wait_for(NOT_SERVING, 20)
            stub = pb_grpc.DetectorStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(encoded=encode_png(make_scene(1).image)), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "restart" in (err.value.details() or "")
            assert {await check(ch, n) for n in NAMES} == {NOT_SERVING}  # latched: clearing does not help
            ready.cancel()
            live.cancel()
    finally:
        proc.stop()
    # A transition names the cause, or, when the worker was already not ready for another (a late
    # canary on a loaded machine), a "health reasons" line does.
    logged = [e for e in proc.events if e["event"] in ("health transition", "health reasons")]
    reasons = [r for e in logged for r in e.get("reasons", [])]
    assert any("XID 79" in r for r in reasons) and any("sticky" in r for r in reasons), logged


async def test_sigterm_drains_accepted_work(tmp_path: Path) -> None:
    proc = start_detector("--fault-injection", "--max-batch", "2",
                          "--config", fast_config(tmp_path, health={"canary_deadline_s": 8, "canary_hang_s": 20}))
    try:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            ready = HealthWatch(ch, "readiness")
            await ready.wait_for(SERVING, 60)
            faults = fi_grpc.FaultInjectionStub(ch)
            await faults.DelayInference(fi.DelayInferenceRequest(seconds=0.3), timeout=5)
            stub = pb_grpc.DetectorStub(ch)
            frame = encode_png(make_scene(4).image)
            unary = [asyncio.ensure_future(stub.Detect(pb.DetectRequest(encoded=frame, frame_id=i), timeout=30))
                     for i in range(6)]
            stream = stub.DetectStream(iter([pb.DetectRequest(encoded=frame, frame_id=100 + i) for i in range(3)]))
            while (await faults.GetInferenceState(fi.GetInferenceStateRequest(), timeout=5)).in_flight < 9:
                await asyncio.sleep(0.02)
            proc.signal(signal.SIGTERM)
            await ready.wait_for(NOT_SERVING, 10)
            answers = await asyncio.gather(*unary)
            assert sorted(a.frame_id for a in answers) == list(range(6))
            streamed = []
            try:
                async for a in stream:
                    streamed.append(a.frame_id)
            except grpc.aio.AioRpcError as e:  # the stream may end with "draining" after its answers
                assert e.code() == grpc.StatusCode.UNAVAILABLE
            assert streamed == [100, 101, 102]
        assert proc.popen.wait(30) == 0
    finally:
        proc.stop()
    assert any(e["event"] == "stopped" and e["exit_code"] == 0 for e in proc.events)


def test_eval_on_the_default_model_reaches_the_bar(worker: Proc) -> None:
    out = run_cli("eval", "--target", worker.address, "--images", "200", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["map50"] >= 0.9, result


def test_a_second_worker_on_a_busy_port_fails_loudly(worker: Proc) -> None:
    out = subprocess.run([str(BIN / "eagleeye-detector"), "--listen", worker.address], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "cannot bind" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
