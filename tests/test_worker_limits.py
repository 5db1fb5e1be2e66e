"""The worker's bounds and error hygiene, without a model: admission before decode, call slots, error ids."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import pytest

from common.errors import IncidentLog
from detector.batcher import InferenceFailed, InferenceUnavailable, QueueFull
from detector.contract import ModelMeta
from detector.imaging import ImageLimits
from detector.pipeline import DecodeBusy, EncodedImage, LatencyWindow, Pipeline, RawImage
from detector.server import RequestError, Slots, _status_of

MiB = 1024 * 1024


class _NoBatcher:
    max_batch = 1


def _pipeline(max_decode_bytes: int) -> Pipeline:
    meta = ModelMeta(name="m", version="1", classes=("a",), input_size=(32, 32))
    return Pipeline(meta, _NoBatcher(), ImageLimits(8 * MiB, 4096 * 4096),  # type: ignore[arg-type]
                    LatencyWindow(10), max_decode_bytes=max_decode_bytes)


async def test_decode_admission_refuses_past_the_bound_at_once_and_releases_on_every_ending() -> None:
    pipeline = _pipeline(max_decode_bytes=3 * MiB)
    gate = threading.Event()
    decoding = threading.Semaphore(0)

    def slow_prepare(image: EncodedImage | RawImage) -> None:
        decoding.release()
        gate.wait(10)
        raise ValueError("undecodable")

    pipeline._prepare = slow_prepare  # type: ignore[assignment,method-assign]
    first = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"x" * (2 * MiB))))
    await asyncio.to_thread(decoding.acquire, True, 10)
    assert pipeline.decode_bytes == 2 * MiB
    with pytest.raises(DecodeBusy, match=r"max_decode_bytes 3145728"):
        await pipeline.prepare(EncodedImage(b"y" * (2 * MiB)))
    small = asyncio.ensure_future(pipeline.prepare(EncodedImage(b"z" * MiB)))  # fits: admitted
    await asyncio.to_thread(decoding.acquire, True, 10)
    assert pipeline.decode_bytes == 3 * MiB
    small.cancel()
    with pytest.raises(asyncio.CancelledError):
        await small
    assert pipeline.decode_bytes == 2 * MiB, "a cancelled request gives its bytes back"
    gate.set()
    with pytest.raises(ValueError):
        await first
    assert pipeline.decode_bytes == 0, "a failed decode gives its bytes back"
    pipeline.close()


def test_busy_refusals_are_resource_exhausted_and_marked_for_another_worker() -> None:
    for err in (QueueFull("queue full"), DecodeBusy("decode busy")):
        status = _status_of(err)
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.retry_elsewhere


def test_call_slots_refuse_past_the_limit_naming_the_setting_and_free_on_give() -> None:
    slots = Slots(2, "streams", "max_concurrent_streams")
    slots.take()
    slots.take()
    with pytest.raises(RequestError) as err:
        slots.take()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.retry_elsewhere
    assert "max_concurrent_streams" in err.value.message and "2 streams" in err.value.message
    slots.give()
    slots.take()


@pytest.mark.parametrize(("error", "code"), [
    (InferenceFailed("inference failed: CUDA error: an illegal memory access at 0x7f3a"), grpc.StatusCode.INTERNAL),
    (InferenceUnavailable("GPU context unusable after a CUDA error (device-side assert at /src/k.cu:12)"),
     grpc.StatusCode.UNAVAILABLE),
    (KeyError("/opt/model/secret-path"), grpc.StatusCode.INTERNAL),
])
def test_internal_errors_reach_clients_as_an_id_and_the_log_has_the_detail(
        error: Exception, code: grpc.StatusCode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    status = _status_of(error)
    assert status.code == code
    assert str(error).strip("'") not in status.message and "0x7f3a" not in status.message
    error_id = status.message.split("error id ")[1].split(";")[0]
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("error_id") == error_id]
    assert len(logged) == 1 and str(error).strip("'") in logged[0].fields["detail"]  # type: ignore[attr-defined]


def test_a_repeated_failure_keeps_its_id_within_the_window_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    incidents = IncidentLog(logging.getLogger("test"), window_s=1.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO)
    first = incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused")
    for _ in range(100):
        assert incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused") == first
    assert "10.0.0.5" not in first
    other = incidents.report("no worker can serve", "standby: timeout")
    assert other != first
    now[0] = 1.5
    later = incidents.report("no worker can serve", "primary: ipv4:10.0.0.5:50051 refused")
    assert later != first
    events = [(r.getMessage(), r.fields.get("repeats")) for r in caplog.records]  # type: ignore[attr-defined]
    assert events == [("internal error", None), ("internal error", None), ("internal error repeated", 100),
                      ("internal error", None)]
