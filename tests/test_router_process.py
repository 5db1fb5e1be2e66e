"""The real router between two real workers, under `eagleeye load`, through every fault it must survive."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as fi
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as fi_grpc
from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.harness.processes import BIN, LocalCluster
from eagleeye.scenes import encode_png, make_scene
from tests.conftest import fast_config
from tests.procs import NOT_SERVING, SERVING, check, reflect

pytestmark = pytest.mark.integration

HOLD_DOWN_S, RAMP_S = 2.0, 2.0
ADMIN_TOKEN = "s3cret-admin-token-for-the-tests"  # 32 bytes, the least the router accepts
ROUTER_TOML = f"""
hold_down_s = {HOLD_DOWN_S}
ramp_s = {RAMP_S}
healthy_checks = 3
degraded_recover_s = 1.0

[request_defaults.FAILOVER]
score_threshold = 0.4
"""


class LoadRun:
    """`eagleeye load` through the router, in the background; progress lines are events to wait on."""

    def __init__(self, target: str, mode: str, duration: float, rate: float = 10) -> None:
        self.popen = subprocess.Popen([str(BIN / "eagleeye"), "load", "--target", target, "--mode", mode,
                                       "--rate", str(rate), "--duration", str(duration), "--deadline", "5",
                                       "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.progress = 0.0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            parts = line.split()
            if len(parts) > 2 and parts[1] == "s" and parts[2] == "sent":
                with self._cond:
                    self.progress = float(parts[0])
                    self._cond.notify_all()

    def wait_progress(self, seconds: float, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.progress >= seconds, timeout), "load made no progress"

    def result(self, timeout: float = 120) -> dict[str, Any]:
        out, _ = self.popen.communicate(timeout=timeout)
        return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    router_cfg = tmp_path / "router.toml"
    router_cfg.write_text(ROUTER_TOML)
    c = LocalCluster(worker_args=["--fault-injection", "--config", fast_config(tmp_path)],
                     router_args=["--config", str(router_cfg), "--admin-token", ADMIN_TOKEN])
    try:
        c.wait_normal()
        c.router.forget_events()  # the tests look at what their fault causes, not at start-up
        yield c
    finally:
        c.stop()


def switches(c: LocalCluster) -> list[dict[str, Any]]:
    return [e for e in c.router.events if e["event"] == "switch"]


def assert_clean(*results: dict[str, Any]) -> None:
    for r in results:
        assert r["errors"] == 0 and r["lost"] == 0 and r["duplicated"] == 0 and not r["reordered"], r
        assert r["answered"] == r["sent"] > 0, r


def assert_switch_back_respects_hold_down_and_ramp(c: LocalCluster) -> None:
    ev = switches(c)
    recovering = next(e for e in ev if e["to_state"] == "RECOVERING" and e["from_state"] == "FAILOVER")
    ramp = next(e for e in ev if e["from_state"] == "RECOVERING" and e["to_state"] == "RECOVERING")
    normal = next(e for e in ev if e["from_state"] == "RECOVERING" and e["to_state"] == "NORMAL")

    def at(e: dict[str, Any]) -> float:
        return time.mktime(time.strptime(e["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + float(e["ts"][19:-1] or 0)

    assert at(ramp) - at(recovering) >= HOLD_DOWN_S - 0.01
    assert at(normal) - at(ramp) >= RAMP_S - 0.01


def under_load(c: LocalCluster, duration: float) -> tuple[LoadRun, LoadRun]:
    loads = (LoadRun(c.router_address, "unary", duration), LoadRun(c.router_address, "stream", duration))
    for load in loads:
        load.wait_progress(2.0)
    return loads


def faults(address: str) -> fi_grpc.FaultInjectionStub:
    return fi_grpc.FaultInjectionStub(grpc.insecure_channel(address))


def test_sigkill_primary_then_it_returns(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 14)
    cluster.primary.popen.kill()
    failover = cluster.router.wait_for_event("switch", to_state="FAILOVER")
    assert "Watch stream down" in failover["reason"]
    cluster.restart_primary()
    cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=60)
    assert_clean(unary.result(), stream.result())
    assert_switch_back_respects_hold_down_and_ramp(cluster)


def test_sigstop_primary_hangs_with_its_connection_alive(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 14)
    cluster.primary.signal(signal.SIGSTOP)
    failover = cluster.router.wait_for_event("switch", to_state="FAILOVER")
    # Watch says nothing: the active Checks, or calls overtaken by their hedges, see the hang.
    assert "Checks failed" in failover["reason"] or "ejected" in failover["reason"], failover
    with grpc.insecure_channel(cluster.router_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        statuses = {name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                    for name in ("", "readiness", "liveness", "redundancy")}
    assert statuses == {"": SERVING, "readiness": SERVING, "liveness": SERVING, "redundancy": NOT_SERVING}
    cluster.primary.signal(signal.SIGCONT)
    cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=60)
    assert_clean(unary.result(), stream.result())
    assert_switch_back_respects_hold_down_and_ramp(cluster)


def test_inference_hang_with_health_alive(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 14)
    fi_stub = faults(cluster.primary_address)
    fi_stub.HangInference(fi.HangInferenceRequest(), timeout=5)
    cluster.router.wait_for_event("switch", to_state="FAILOVER")
    fi_stub.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=60)
    assert_clean(unary.result(), stream.result())


def test_injected_gpu_fault(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 8)
    faults(cluster.primary_address).SetTelemetry(fi.SetTelemetryRequest(
        utilization_percent=50, memory_used_bytes=2**30, memory_total_bytes=16 * 2**30, temperature_c=60,
        xid_events=[79]), timeout=5)
    failover = cluster.router.wait_for_event("switch", to_state="FAILOVER")
    assert "readiness NOT_SERVING" in failover["reason"]
    assert_clean(unary.result(), stream.result())


def test_primary_without_headroom_gets_part_of_the_traffic(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 8)
    stub = faults(cluster.primary_address)
    stub.SetTelemetry(fi.SetTelemetryRequest(utilization_percent=99, memory_used_bytes=2**30,
                                   memory_total_bytes=16 * 2**30, temperature_c=60), timeout=5)
    cluster.router.wait_for_event("switch", to_state="DEGRADED")
    stub.ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    cluster.router.wait_for_event("switch", from_state="DEGRADED", to_state="NORMAL")
    assert_clean(unary.result(), stream.result())


def test_planned_sigterm_of_the_primary(cluster: LocalCluster) -> None:
    unary, stream = under_load(cluster, 12)
    cluster.primary.signal(signal.SIGTERM)
    cluster.router.wait_for_event("switch", to_state="FAILOVER")
    assert cluster.primary.popen.wait(30) == 0
    cluster.restart_primary()
    cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=60)
    assert_clean(unary.result(), stream.result())


async def test_standby_down_then_both_down(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.router_address) as ch:
        for name in ("", "readiness", "liveness", "redundancy"):
            assert await check(ch, name) == SERVING, name
        unary, stream = under_load(cluster, 6)
        cluster.standby.popen.kill()
        cluster.router.wait_for_event("switch", to_state="STANDBY_DOWN")
        assert_clean(unary.result(), stream.result())
        assert await check(ch, "redundancy") == NOT_SERVING
        assert await check(ch, "readiness") == SERVING

        cluster.primary.popen.kill()
        cluster.router.wait_for_event("switch", to_state="BOTH_DOWN")
        assert await check(ch, "readiness") == NOT_SERVING
        assert await check(ch, "") == NOT_SERVING
        assert await check(ch, "liveness") == SERVING
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.DetectorStub(ch).Detect(pb.DetectRequest(encoded=encode_png(make_scene(1).image)),
                                                  timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "BOTH_DOWN" in (err.value.details() or "")
        # The backends' addresses and transport errors are for the router's log, under the error id.
        error_id = (err.value.details() or "").split("error id ")[1].split(";")[0]
        assert "127.0.0.1" not in (err.value.details() or "")
        logged = cluster.router.wait_for_event("no worker can serve", error_id=error_id)
        assert logged["detail"].startswith("primary: ") and "standby: " in logged["detail"]
        assert time.monotonic() - t0 < 1.0, "BOTH_DOWN must fail fast, not wait for a dead backend"


def test_client_errors_are_not_retried_and_metadata_passes(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.router_address) as ch:
        stub = pb_grpc.DetectorStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Detect(pb.DetectRequest(encoded=b"junk"), timeout=5, metadata=[("x-camera", "cam-7")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a JPEG or PNG" in err.value.details()
        unknown = ch.unary_unary("/eagleeye.detector.v1.Detector/Nope")
        with pytest.raises(grpc.RpcError) as err:
            unknown(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert cluster.router.popen.poll() is None


def test_router_restart_rebuilds_its_view_within_a_second(cluster: LocalCluster) -> None:
    cluster.restart_router()
    listening = time.monotonic()
    cluster.router.wait_for_event("switch", to_state="NORMAL", timeout=10)
    assert time.monotonic() - listening < 2.0  # measured ~10 ms; the target is a second
    unary = LoadRun(cluster.router_address, "unary", 3)
    stream = LoadRun(cluster.router_address, "stream", 3)
    assert_clean(unary.result(), stream.result())


def test_status_cli_and_admin_actions(cluster: LocalCluster) -> None:
    out = subprocess.run([str(BIN / "eagleeye"), "status", "--target", cluster.admin_address, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["state"] == "NORMAL"
    weights = {b["backend"]: round(b["weight"]) for b in state["backends"]}
    assert weights == {"BACKEND_PRIMARY": 95, "BACKEND_STANDBY": 5}
    assert state["recent_events"][-1]["to_state"] == "NORMAL"

    from eagleeye.api.router.v1 import router_pb2 as rpb
    from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc

    # Reflection: the client port shows the Detector API (and not the admin API), the admin port the admin API.
    listed, methods = reflect(cluster.router_address, "eagleeye.detector.v1.Detector")
    assert listed == {"eagleeye.detector.v1.Detector", "grpc.health.v1.Health",
                      "grpc.reflection.v1alpha.ServerReflection"}
    assert "eagleeye.detector.v1.Detector/DetectStream" in methods
    listed, methods = reflect(cluster.admin_address, "eagleeye.router.v1.RouterAdmin")
    assert listed == {"eagleeye.router.v1.RouterAdmin", "grpc.reflection.v1alpha.ServerReflection"}
    assert {"eagleeye.router.v1.RouterAdmin/Switch", "eagleeye.router.v1.RouterAdmin/SetDrain"} <= methods

    with grpc.insecure_channel(cluster.router_address) as ch:  # not on the client port
        with pytest.raises(grpc.RpcError) as err:
            rpb_grpc.RouterAdminStub(ch).GetState(rpb.GetStateRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(cluster.admin_address) as ch:
        admin = rpb_grpc.RouterAdminStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5,
                         metadata=[("authorization", "Bearer nope")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = [("authorization", f"Bearer {ADMIN_TOKEN}")]
        admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5, metadata=auth)
        cluster.router.wait_for_event("switch", to_state="FAILOVER")
        assert "drained by operator" in switches(cluster)[-1]["reason"]
        admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_PRIMARY), timeout=5, metadata=auth)
        cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=30)
    text = subprocess.run([str(BIN / "eagleeye"), "status", "--target", cluster.admin_address],
                          capture_output=True, text=True, timeout=30).stdout
    assert "NORMAL" in text and "primary" in text and "FAILOVER" in text


async def test_request_defaults_apply_in_their_state_only_and_say_so(cluster: LocalCluster) -> None:
    from eagleeye.api.router.v1 import router_pb2 as rpb
    from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc

    image = encode_png(make_scene(3, (160, 120)).image)

    async def detect(score_threshold: float | None = None) -> dict[str, str | bytes]:
        async with grpc.aio.insecure_channel(cluster.router_address) as ch:
            request = pb.DetectRequest(encoded=image, frame_id=1, score_threshold=score_threshold)
            call = pb_grpc.DetectorStub(ch).Detect(request, timeout=10)
            await call
            return dict(await call.trailing_metadata() or ())

    async def stream(frames: int) -> dict[str, str | bytes]:
        async with grpc.aio.insecure_channel(cluster.router_address) as ch:
            call = pb_grpc.DetectorStub(ch).DetectStream(
                iter([pb.DetectRequest(encoded=image, frame_id=i) for i in range(frames)]), timeout=20)
            assert [a.frame_id async for a in call] == list(range(frames))
            return dict(await call.trailing_metadata() or ())

    assert "eagleeye-request-defaults" not in await detect()  # NORMAL has no defaults
    with grpc.insecure_channel(cluster.admin_address) as ch:
        rpb_grpc.RouterAdminStub(ch).Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5,
                                            metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")])
    await asyncio.to_thread(cluster.router.wait_for_event, "switch", 30, to_state="FAILOVER")
    assert (await detect())["eagleeye-request-defaults"] == "FAILOVER=1"
    assert "eagleeye-request-defaults" not in await detect(score_threshold=0.9)  # the client's own value
    assert (await stream(3))["eagleeye-request-defaults"] == "FAILOVER=3"


def admin_cli(cluster: LocalCluster, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([str(BIN / "eagleeye"), "admin", *args, "--target", cluster.admin_address],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "EAGLEEYE_ADMIN_TOKEN": token})


def test_admin_cli_refuses_a_switch_to_an_unready_standby_unless_forced_and_logs_each_call(
        cluster: LocalCluster) -> None:
    wrong = admin_cli(cluster, "drain", "primary", token="guess")
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr
    with grpc.insecure_channel(cluster.standby_address) as ch:
        # A canary slower than its deadline: the standby not ready until ClearFaults.
        fi_grpc.FaultInjectionStub(ch).DelayInference(fi.DelayInferenceRequest(seconds=3), timeout=5)
    try:
        cluster.router.wait_for_event("switch", to_state="STANDBY_DOWN")
        refused = admin_cli(cluster, "switch", "standby")
        assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr, refused.stderr
        assert "standby is not ready" in refused.stderr
        assert all(e["to_state"] != "FAILOVER" for e in switches(cluster)), "a refused switch moved traffic"
        forced = admin_cli(cluster, "switch", "standby", "--force")
        assert forced.returncode == 0, forced.stderr
        cluster.router.wait_for_event("switch", to_state="BOTH_DOWN")
        back = admin_cli(cluster, "switch", "primary")
        assert back.returncode == 0, back.stderr
    finally:
        with grpc.insecure_channel(cluster.standby_address) as ch:
            fi_grpc.FaultInjectionStub(ch).ClearFaults(fi.ClearFaultsRequest(), timeout=5)
    cluster.router.wait_for_event("switch", to_state="NORMAL", timeout=60)
    audit = [(e["action"], e["outcome"]) for e in cluster.router.events if e.get("event") == "admin call"]
    assert ("drain primary", "refused: missing or wrong token") in audit
    assert any(a == "switch standby" and o.startswith("refused: standby not ready") for a, o in audit), audit
    assert ("switch standby (forced)", "done") in audit and ("switch primary", "done") in audit
    assert not any("s3cret" in line or "guess" in line for line in cluster.router.lines), "a token was logged"


async def test_a_client_streams_own_deadline_is_not_a_worker_failure(cluster: LocalCluster) -> None:
    """Video clients often give a stream a deadline; when it passes, the stream ends DEADLINE_EXCEEDED and
    nothing else: no failover leg, no failure charged to the worker, no switch."""
    image = encode_png(make_scene(2, size=(128, 96)).image)

    async def one(ch: grpc.aio.Channel, i: int) -> grpc.StatusCode:
        call = pb_grpc.DetectorStub(ch).DetectStream(timeout=2.0)
        await call.write(pb.DetectRequest(frame_id=i, encoded=image))
        assert (await call.read()).frame_id == i
        try:
            await call.read()  # the client sends nothing more; its deadline ends the stream
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    async with grpc.aio.insecure_channel(cluster.router_address) as ch:
        codes = await asyncio.gather(*(one(ch, i) for i in range(20)))
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    moved = [e for e in cluster.router.events if e["event"] in ("stream moved", "switch", "ejected")]
    assert not moved, moved
    from eagleeye.api.router.v1 import router_pb2 as rpb
    from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc

    with grpc.insecure_channel(cluster.admin_address) as ch:  # (a Detect may go to the standby: 5 % of them do)
        state = rpb_grpc.RouterAdminStub(ch).GetState(rpb.GetStateRequest(), timeout=5).state
    primary = next(b for b in state.backends if b.backend == rpb.BACKEND_PRIMARY)
    assert state.state == "NORMAL" and primary.ready and not primary.ejected, state


async def test_idle_streams_leave_a_drained_worker_at_once_and_come_back_at_their_next_frame(
        cluster: LocalCluster) -> None:
    """An idle stream has no timer of its own (the router holds thousands): when its worker stops being
    usable (here an operator's drain) the router moves its leg at once, gracefully, instead of holding
    it open on that worker until the stream's next frame or until the worker's restart breaks it."""
    from eagleeye.api.router.v1 import router_pb2 as rpb
    from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc

    image = encode_png(make_scene(3, (160, 120)).image)
    auth = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    more = [asyncio.Event() for _ in range(6)]
    done = asyncio.Event()

    async def legs(admin: Any) -> dict[str, int]:
        state = await admin.GetState(rpb.GetStateRequest(), timeout=5)
        return {b.name: b.outstanding for b in state.state.backends}

    async def until(admin: Any, want: Any) -> dict[str, int]:
        seen: dict[str, int] = {}
        for _ in range(100):  # bounded: 100 looks at the router's own count, 50 ms apart
            seen = await legs(admin)
            if want(seen):
                break
            await asyncio.sleep(0.05)  # polling the router's state, bounded
        return seen

    async with grpc.aio.insecure_channel(cluster.router_address) as ch, \
            grpc.aio.insecure_channel(cluster.admin_address) as admin_ch:
        stub, admin = pb_grpc.DetectorStub(ch), rpb_grpc.RouterAdminStub(admin_ch)
        answers: list[list[str]] = [[] for _ in more]

        async def camera(i: int) -> None:
            async def frames() -> Any:
                yield pb.DetectRequest(frame_id=1, encoded=image)
                await more[i].wait()       # idle: the stream stays open with nothing in flight
                yield pb.DetectRequest(frame_id=2, encoded=image)
                await done.wait()
            async for answer in stub.DetectStream(frames(), timeout=60):
                answers[i].append(answer.worker)

        cameras = [asyncio.create_task(camera(i)) for i in range(len(more))]
        try:
            before = await until(admin, lambda s: sum(s.values()) == len(more) and all(answers))
            assert sum(before.values()) == len(more) and all(answers), (before, answers)
            await admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5, metadata=auth)
            after = await until(admin, lambda s: s.get("primary") == 0 and s.get("standby") == len(more))
            assert after == {"primary": 0, "standby": len(more)}, (before, after)
            await admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_PRIMARY), timeout=5, metadata=auth)
            await asyncio.to_thread(cluster.router.wait_for_event, "switch", 30, from_state="RECOVERING",
                                    to_state="NORMAL")
            for e in more:
                e.set()
            for _ in range(200):  # until every stream has its second answer, bounded
                if all(len(a) == 2 for a in answers):
                    break
                await asyncio.sleep(0.05)  # polling what the streams have received, bounded
            assert all(len(a) == 2 for a in answers), answers
        finally:
            done.set()
            for e in more:
                e.set()
            await asyncio.gather(*cameras, return_exceptions=True)
    # Nothing was blamed on the drained primary: no stream failed over off it with its frames.
    assert not [e for e in cluster.router.events if e.get("event") == "backend ejected"]
