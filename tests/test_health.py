"""The pure health evaluator: sequences of (time, signals) in, statuses and reasons out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import pytest

from eagleeye.api.names import HEADROOM, LIVENESS, READINESS_NAMES
from eagleeye.detector.config import HealthConfig
from eagleeye.detector.gpu import LOST, GpuSample
from eagleeye.detector.health import (
    CanaryOutcome,
    CanaryState,
    HealthEvaluator,
    HealthReport,
    Signals,
)

GiB = 1024**3
CFG = HealthConfig()
OK = Signals(model_ready=True, canary=CanaryState(CanaryOutcome.OK))
COOL = GpuSample(utilization_percent=40, memory_used_bytes=4 * GiB, memory_total_bytes=16 * GiB,
                 temperature_c=60, thermal_slowdown=False, ecc_uncorrected_total=0, xid_events=())
ON_GPU = replace(OK, gpu_expected=True, gpu=COOL)


def gpu(**kw: object) -> Signals:
    return replace(ON_GPU, gpu=replace(COOL, **kw))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Step:
    at: float
    signals: Signals
    ready: bool
    live: bool
    headroom: bool
    reason: str = ""  # a substring one of the reasons must contain


def run(steps: list[Step], cfg: HealthConfig = CFG) -> list[HealthReport]:
    ev = HealthEvaluator(cfg)
    reports = []
    for i, step in enumerate(steps):
        r = ev.evaluate(step.signals, step.at)
        assert (r.ready, r.live, r.headroom) == (step.ready, step.live, step.headroom), (i, r)
        if step.reason:
            assert any(step.reason in reason for reason in r.reasons), (i, step.reason, r.reasons)
        reports.append(r)
    return reports


CASES: dict[str, list[Step]] = {
    "loading: not ready, alive": [
        Step(0, Signals(model_ready=False), False, True, False, "loading"),
    ],
    "model failed to load": [
        Step(0, Signals(model_ready=False, model_error="bad file"), False, True, False, "bad file"),
    ],
    "warm and well": [Step(0, OK, True, True, True)],
    "first canary not finished yet is fine": [Step(0, replace(OK, canary=CanaryState()), True, True, True)],
    "canary late -> not ready, recovers": [
        Step(0, replace(OK, canary=CanaryState(CanaryOutcome.LATE, "3 s")), False, True, False, "late"),
        Step(1, OK, True, True, True),
    ],
    "canary wrong or NaN -> not ready": [
        Step(0, replace(OK, canary=CanaryState(CanaryOutcome.WRONG, "x")), False, True, False, "wrong"),
        Step(1, replace(OK, canary=CanaryState(CanaryOutcome.NON_FINITE, "NaN")), False, True, False, "NaN"),
    ],
    "canary in flight: deadline, then hang kills liveness": [
        Step(10.0, replace(OK, canary=CanaryState(CanaryOutcome.OK, inflight_since=9.0)), True, True, True),
        Step(11.5, replace(OK, canary=CanaryState(CanaryOutcome.OK, inflight_since=9.0)), False, True, False,
             "deadline"),
        Step(25.0, replace(OK, canary=CanaryState(CanaryOutcome.OK, inflight_since=9.0)), False, False, False,
             "hung"),
        Step(26.0, OK, True, True, True),
    ],
    "sticky CUDA error: not ready, not live, latched by the batcher": [
        Step(0, replace(OK, sticky_cuda_error="illegal memory access"), False, False, False, "sticky"),
    ],
    "no NVML on CPU: unknown is fine": [Step(0, replace(OK, gpu=None), True, True, True)],
    "utilization high must last 10 s": [
        Step(0, gpu(utilization_percent=99), True, True, True),
        Step(9.9, gpu(utilization_percent=99), True, True, True),
        Step(10.0, gpu(utilization_percent=99), True, True, False, "utilization 99%"),
        Step(11, gpu(utilization_percent=50), True, True, True),
        Step(12, gpu(utilization_percent=99), True, True, True),  # the clock restarted
    ],
    "temperature over 85 C for 30 s: the soft trigger, and with the defaults the hard guard too": [
        Step(0, gpu(temperature_c=90), True, True, True),
        Step(30, gpu(temperature_c=90), False, True, False, "temperature 90 C"),
        Step(30, gpu(temperature_c=90), False, True, False, "hardware protection"),
    ],
    "thermal slowdown at once": [Step(31, gpu(thermal_slowdown=True), True, True, False, "slowed down")],
    "hard guard: trips after the hold time, holds until cool for the recovery time": [
        Step(0, gpu(temperature_c=86), True, True, True),
        Step(29, gpu(temperature_c=86), True, True, True),
        Step(30, gpu(temperature_c=86), False, True, False, "over 85 C for 30 s"),
        Step(40, gpu(temperature_c=82), False, True, False, "hardware protection"),  # not cool enough
        Step(50, gpu(temperature_c=79), False, True, False, "hardware protection"),  # cooling starts
        Step(80, gpu(temperature_c=81), False, True, False, "hardware protection"),  # warmed: clock restarts
        Step(90, gpu(temperature_c=75), False, True, False, "hardware protection"),
        Step(149, replace(ON_GPU, gpu=None), False, True, False, "hardware protection"),  # no sample: held
        Step(150, gpu(temperature_c=75), True, True, True),
    ],
    "hard guard: a spike shorter than the hold time does nothing": [
        Step(0, gpu(temperature_c=95), True, True, True),
        Step(20, gpu(temperature_c=84), True, True, True),
        Step(40, gpu(temperature_c=95), True, True, True),
        Step(69, gpu(temperature_c=95), True, True, True),
        Step(70, gpu(temperature_c=95), False, True, False, "hardware protection"),
    ],
    "free memory below 512 MiB": [
        Step(0, gpu(memory_used_bytes=16 * GiB - 100 * 1024**2), True, True, False, "only 100 MiB free"),
    ],
    "memory over 92% only counts while growing": [
        *[Step(t, gpu(memory_used_bytes=int(15.0 * GiB)), True, True, True) for t in range(5)],
        *[Step(5 + t, gpu(memory_used_bytes=int((14.8 + 0.01 * t) * GiB)), True, True, t < 4,
               "" if t < 4 else "still growing") for t in range(5)],
    ],
    "critical XID latches readiness, application XIDs do not": [
        Step(0, gpu(xid_events=(13, 31, 43, 45)), True, True, True),
        Step(1, gpu(xid_events=(79,)), False, True, False, "XID 79"),
        Step(2, ON_GPU, False, True, False, "XID 79"),
    ],
    "uncorrected ECC rising latches": [
        Step(0, gpu(ecc_uncorrected_total=3), True, True, True),
        Step(1, gpu(ecc_uncorrected_total=3), True, True, True),
        Step(2, gpu(ecc_uncorrected_total=4), False, True, False, "from 3 to 4"),
        Step(3, gpu(ecc_uncorrected_total=4), False, True, False, "ECC"),
    ],
    "ECC not reported is not an error": [Step(0, gpu(ecc_uncorrected_total=None), True, True, True)],
    "GPU lost": [Step(0, replace(ON_GPU, gpu=LOST), False, True, False, "lost")],
    "latency over budget on 3 consecutive evaluations": [
        Step(0, replace(OK, latency_p95_ms=400), True, True, True),
        Step(1, replace(OK, latency_p95_ms=400), True, True, True),
        Step(2, replace(OK, latency_p95_ms=400), True, True, False, "p95 400 ms"),
        Step(3, replace(OK, latency_p95_ms=100), True, True, False),
        Step(4, replace(OK, latency_p95_ms=100), True, True, False),
        Step(5, replace(OK, latency_p95_ms=100), True, True, True),
    ],
    "latency hovering at the budget does not flap headroom (clears only below 80 % of it)": [
        Step(0, replace(OK, latency_p95_ms=260), True, True, True),
        Step(1, replace(OK, latency_p95_ms=260), True, True, True),
        Step(2, replace(OK, latency_p95_ms=260), True, True, False, "p95 260 ms"),
        Step(3, replace(OK, latency_p95_ms=240), True, True, False),
        Step(4, replace(OK, latency_p95_ms=210), True, True, False),
        Step(5, replace(OK, latency_p95_ms=240), True, True, False),
        Step(6, replace(OK, latency_p95_ms=190), True, True, False),
        Step(7, replace(OK, latency_p95_ms=260), True, True, False),
        Step(8, replace(OK, latency_p95_ms=190), True, True, False),
        Step(9, replace(OK, latency_p95_ms=190), True, True, False),
        Step(10, replace(OK, latency_p95_ms=190), True, True, True),
    ],
    "queue backlog": [
        Step(0, replace(OK, queue_depth=52, queue_capacity=64), True, True, False, "backlog 52/64"),
        Step(1, replace(OK, queue_depth=10, queue_capacity=64), True, True, True),
    ],
    "two soft triggers confirmed on three evaluations: not ready": [
        Step(0, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), True, True, False),
        Step(1, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), True, True, False),
        Step(2, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), False, True, False,
             "2 soft triggers"),
        Step(3, gpu(thermal_slowdown=True), True, True, False),
    ],
    "two soft triggers interrupted do not confirm": [
        Step(0, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), True, True, False),
        Step(1, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), True, True, False),
        Step(2, gpu(thermal_slowdown=True), True, True, False),
        Step(3, replace(gpu(thermal_slowdown=True), queue_depth=60, queue_capacity=64), True, True, False),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_rules(name: str) -> None:
    run(CASES[name])


def test_require_gpu_makes_a_missing_gpu_not_ready() -> None:
    cfg = replace(CFG, require_gpu=True)
    run([Step(0, replace(OK, gpu=None), False, True, False, "--require-gpu")], cfg)
    run([Step(0, replace(OK, gpu_expected=True, gpu=None), False, True, False, "NVML unavailable")], cfg)
    run([Step(0, ON_GPU, True, True, True)], cfg)


def test_statuses_cover_every_service_name() -> None:
    statuses = HealthReport(ready=True, live=False, headroom=False, reasons=()).statuses()
    assert {n: statuses[n] for n in READINESS_NAMES} == dict.fromkeys(READINESS_NAMES, True)
    assert statuses[LIVENESS] is False and statuses[HEADROOM] is False
    assert set(statuses) == {"", "readiness", "eagleeye.detector.v1.Detector", "liveness", "headroom"}


def test_reasons_are_not_repeated() -> None:
    ev = HealthEvaluator(CFG)
    ev.evaluate(gpu(xid_events=(79,)), 0)
    r = ev.evaluate(gpu(xid_events=(79,)), 1)
    assert len(r.reasons) == len(set(r.reasons))


async def test_a_new_cause_is_logged_while_every_status_stays_and_moving_figures_are_not(
        caplog: pytest.LogCaptureFixture) -> None:
    from grpc_health.v1 import _async as health_aio

    from eagleeye.detector.health import HealthReport
    from eagleeye.detector.monitor import HealthPublisher

    publisher = HealthPublisher(health_aio.HealthServicer())
    steps = [  # (reasons of a not-ready report, the event it logs)
        (("canary: no answer for 1.6 s (deadline 1.5 s)",), "health transition"),
        (("canary: no answer for 1.9 s (deadline 1.5 s)",), None),  # the same cause, a figure moved
        (("canary: no answer for 2.1 s (deadline 1.5 s)", "gpu: critical XID 79"), "health reasons"),
        (("gpu: critical XID 79",), "health reasons"),  # the canary answered; still not ready
        (("gpu: critical XID 79",), None),
    ]
    with caplog.at_level(logging.INFO, "eagleeye"):
        for reasons, logged in steps:
            caplog.clear()
            await publisher.publish(HealthReport(ready=False, live=True, headroom=False, reasons=reasons))
            got = [(r.getMessage(), r.fields["reasons"]) for r in caplog.records  # type: ignore[attr-defined]
                   if r.getMessage().startswith("health ")]
            assert got == ([] if logged is None else [(logged, list(reasons))]), reasons
