"""TLS and mTLS on every hop, with real processes: refusals, the plaintext health port, rotation."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.harness.processes import LocalCluster
from eagleeye.scenes import encode_png, make_scene
from tests.certs import Pem, TestCA
from tests.conftest import fast_config
from tests.procs import SERVING, check, start_detector

pytestmark = pytest.mark.integration
IMAGE = encode_png(make_scene(3, size=(128, 96)).image)
# A channel of its own per test client: gRPC would otherwise share one connection among equal channels.
OWN = [("grpc.use_local_subchannel_pool", 1)]


def tls_channel(address: str, ca: TestCA, client: Pem | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(ca.cert.read_bytes(), client.key.read_bytes() if client else None,
                                         client.cert.read_bytes() if client else None)
    return grpc.aio.secure_channel(address, creds, options=OWN)


async def detect_code(ch: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await pb_grpc.DetectorStub(ch).Detect(pb.DetectRequest(encoded=IMAGE), timeout=20)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path, "ca")


async def test_mtls_worker_refuses_plaintext_and_strangers_and_probes_use_the_health_port(
        tmp_path: Path, ca: TestCA) -> None:
    server, client = ca.issue("worker"), ca.issue("client")
    stranger_ca = TestCA(tmp_path, "other")
    stranger = stranger_ca.issue("client")
    worker = start_detector("--tls-cert", str(server.cert), "--tls-key", str(server.key),
                            "--tls-client-ca", str(ca.cert), "--health-listen", "127.0.0.1:0",
                            "--config", fast_config(tmp_path))
    try:
        listening = worker.wait_for_event("listening")
        assert listening["tls"] == "mTLS"
        worker.wait_for_event("model ready")
        async with tls_channel(worker.address, ca, client) as ch:
            assert await detect_code(ch) == grpc.StatusCode.OK
            assert await check(ch, "eagleeye.detector.v1.Detector") == SERVING
        async with grpc.aio.insecure_channel(worker.address, options=OWN) as ch:
            assert await detect_code(ch) == grpc.StatusCode.UNAVAILABLE, "plaintext must not reach a TLS port"
        async with tls_channel(worker.address, ca) as ch:
            assert await detect_code(ch) == grpc.StatusCode.UNAVAILABLE, "mTLS needs a client certificate"
        async with tls_channel(worker.address, ca, stranger) as ch:
            assert await detect_code(ch) == grpc.StatusCode.UNAVAILABLE, "a certificate from another CA"
        # The probe port: plaintext, health only (what kubelet and grpc_health_probe without -tls use).
        async with grpc.aio.insecure_channel(listening["health"], options=OWN) as ch:
            for name in ("", "eagleeye.detector.v1.Detector", "liveness", "readiness"):
                assert await check(ch, name) == SERVING, name
            assert await detect_code(ch) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert worker.stop() == 0


@pytest.fixture
async def tls_worker(tmp_path: Path, ca: TestCA) -> AsyncIterator[tuple[Pem, str]]:
    pem = ca.issue("worker")
    worker = start_detector("--tls-cert", str(pem.cert), "--tls-key", str(pem.key), "--config",
                            fast_config(tmp_path))
    worker.wait_for_event("model ready")
    try:
        yield pem, worker.address
        assert any(e.get("event") == "certificate reloaded" for e in worker.events), "no reload was logged"
    finally:
        worker.stop()


async def test_a_rotated_certificate_is_served_without_restart_and_open_streams_continue(
        tmp_path: Path, ca: TestCA, tls_worker: tuple[Pem, str]) -> None:
    pem, address = tls_worker
    async with tls_channel(address, ca) as old:
        stream = pb_grpc.DetectorStub(old).DetectStream(timeout=60)
        await stream.write(pb.DetectRequest(frame_id=1, encoded=IMAGE))
        assert (await stream.read()).frame_id == 1

        # Rotate as cert-manager or a script would: new files renamed over the old ones.
        new_ca = TestCA(tmp_path, "rotated")
        fresh = new_ca.issue("worker")
        for src, dst in ((fresh.key, pem.key), (fresh.cert, pem.cert)):
            os.replace(src, dst)

        async with tls_channel(address, new_ca) as ch:
            assert await detect_code(ch) == grpc.StatusCode.OK, "the new certificate is served"
        async with tls_channel(address, ca) as ch:
            assert await detect_code(ch) == grpc.StatusCode.UNAVAILABLE, "the old one is not, to new connections"
        for fid in range(2, 6):  # the stream opened before the rotation keeps going
            await stream.write(pb.DetectRequest(frame_id=fid, encoded=IMAGE))
            answer = await stream.read()
            assert answer.frame_id == fid and not answer.HasField("error")
        await stream.done_writing()


async def test_tls_through_the_router_with_mtls_to_the_workers_and_admin_on_its_own_port(
        tmp_path: Path, ca: TestCA) -> None:
    worker, router, router_client = ca.issue("worker"), ca.issue("router"), ca.issue("router-client")
    cluster = LocalCluster(
        worker_args=["--tls-cert", str(worker.cert), "--tls-key", str(worker.key), "--tls-client-ca", str(ca.cert),
                     "--config", fast_config(tmp_path)],
        router_args=["--tls-cert", str(router.cert), "--tls-key", str(router.key),
                     "--backend-tls-ca", str(ca.cert), "--backend-tls-cert", str(router_client.cert),
                     "--backend-tls-key", str(router_client.key), "--backend-tls-server-name", "localhost",
                     "--health-listen", "127.0.0.1:0", "--hold-down", "1"])
    try:
        cluster.wait_normal()
        listening = cluster.router.wait_for_event("listening")
        assert (listening["tls"], listening["backend_tls"]) == ("TLS", "mTLS")
        async with tls_channel(cluster.router_address, ca) as ch:
            for _ in range(5):
                assert await detect_code(ch) == grpc.StatusCode.OK
        async with grpc.aio.insecure_channel(cluster.router_address, options=OWN) as ch:
            assert await detect_code(ch) == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(cluster.admin_address, ca) as ch:
            state = (await rpb_grpc.RouterAdminStub(ch).GetState(rpb.GetStateRequest(), timeout=10)).state
            assert state.state == "NORMAL" and all(b.ready for b in state.backends)
        async with grpc.aio.insecure_channel(listening["health"], options=OWN) as ch:
            assert await check(ch, "") == SERVING
    finally:
        cluster.stop()


async def test_the_routers_client_certificate_for_the_workers_rotates_without_a_restart(
        tmp_path: Path, ca: TestCA) -> None:
    new_ca = TestCA(tmp_path, "next")
    worker, client = ca.issue("worker"), ca.issue("router-client")
    accepted = tmp_path / "client-cas.pem"  # the workers accept both CAs while the router rotates
    accepted.write_bytes(ca.cert.read_bytes() + new_ca.cert.read_bytes())
    cluster = LocalCluster(
        worker_args=["--tls-cert", str(worker.cert), "--tls-key", str(worker.key), "--tls-client-ca", str(accepted),
                     "--config", fast_config(tmp_path)],
        router_args=["--backend-tls-ca", str(ca.cert), "--backend-tls-cert", str(client.cert),
                     "--backend-tls-key", str(client.key), "--hold-down", "1", "--ramp", "1"])
    try:
        cluster.wait_normal()
        fresh = new_ca.issue("router-client")
        for src, dst in ((fresh.key, client.key), (fresh.cert, client.cert)):
            os.replace(src, dst)
        cluster.router.wait_for_event("backend certificate reloaded", timeout=30)
        # From now on the workers accept only the new CA: a primary restarted now is reachable only by a
        # router that presents the new certificate.
        accepted.write_bytes(new_ca.cert.read_bytes())
        cluster.router.forget_events()
        cluster.primary.popen.kill()
        cluster.router.wait_for_event("switch", to_state="FAILOVER")
        cluster.restart_primary()
        cluster.router.wait_for_event("switch", from_state="RECOVERING", to_state="NORMAL", timeout=90)
        async with grpc.aio.insecure_channel(cluster.router_address, options=OWN) as ch:
            assert await detect_code(ch) == grpc.StatusCode.OK
    finally:
        cluster.stop()
