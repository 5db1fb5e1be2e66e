"""tests/netns.py: a network namespace that can be cut off with a true blackhole (packets dropped, not
refused) and restored, and eagleeye processes started inside one. Needs root, `ip` and `iptables`
(`make tools`); CI has them, so a missing piece fails the tests instead of skipping them."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api.router.v1 import router_pb2 as router_pb
from eagleeye.api.router.v1 import router_pb2_grpc as router_grpc
from eagleeye.harness.processes import LocalCluster, Proc
from tests.netns import NetNamespace, cleanup_stale, unavailable_reason
from tests.procs import SERVING

pytestmark = pytest.mark.integration

ECHO_SERVER = """
import socket, sys, threading
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""


def new_namespace() -> NetNamespace:
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"the network-namespace harness cannot run here (CI runs as root after `make tools`): {reason}")
    cleanup_stale()
    return NetNamespace()


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    with new_namespace() as namespace:
        yield namespace


@pytest.fixture
def echo(ns: NetNamespace) -> Iterator[tuple[str, int]]:
    """A TCP echo server inside the namespace: (ns_ip, port). Stopped before the namespace is closed."""
    popen = subprocess.Popen(ns.command([sys.executable, "-c", ECHO_SERVER, ns.ns_ip]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert popen.stdout is not None
        ready, _, _ = select.select([popen.stdout], [], [], 10)
        line = popen.stdout.readline() if ready else ""
        assert line.strip().isdigit(), f"echo server did not start: {line!r} (exit code {popen.poll()})"
        yield ns.ns_ip, int(line)
    finally:
        popen.kill()
        popen.communicate(timeout=10)


def roundtrip(conn: socket.socket, payload: bytes) -> bytes:
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def rules_naming(veth: str) -> list[str]:
    out = subprocess.run(["iptables", "-w", "-S"], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if veth in line.split()]


def test_cut_blackholes_and_restore_reconnects(ns: NetNamespace, echo: tuple[str, int]) -> None:
    with socket.create_connection(echo, timeout=1.0) as established:
        assert roundtrip(established, b"before") == b"before"

        ns.cut()
        assert ns.is_cut
        start = time.monotonic()
        with pytest.raises(TimeoutError):  # dropped, not refused (ConnectionRefusedError is no TimeoutError)
            socket.create_connection(echo, timeout=1.0).close()
        assert time.monotonic() - start >= 0.9
        established.sendall(b"during")  # accepted into the send buffer; its segments vanish
        with pytest.raises(TimeoutError):
            established.recv(65536)

        ns.restore()
        assert not ns.is_cut
        with socket.create_connection(echo, timeout=1.0) as fresh:
            assert roundtrip(fresh, b"after") == b"after"
        established.settimeout(5.0)  # the established connection survives: TCP retransmits what was dropped
        received = b""
        while len(received) < len(b"during"):
            received += established.recv(65536)
        assert received == b"during"


def test_close_removes_namespace_veth_and_rules() -> None:
    namespace = new_namespace()
    try:
        namespace.cut()
        assert len(rules_naming(namespace.host_veth)) == 2
    finally:
        namespace.close()
    namespace.close()  # idempotent
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert namespace.name not in listed.split()
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    assert namespace.host_veth not in links and namespace.ns_veth not in links
    assert rules_naming(namespace.host_veth) == []


def test_cut_and_restore_are_idempotent_and_instances_are_distinct(ns: NetNamespace) -> None:
    ns.cut()
    ns.cut()
    assert sorted(rules_naming(ns.host_veth)) == [f"-A INPUT -i {ns.host_veth} -j DROP",
                                                  f"-A OUTPUT -o {ns.host_veth} -j DROP"]
    ns.restore()
    ns.restore()
    assert rules_naming(ns.host_veth) == []
    with NetNamespace() as other:
        assert other.name != ns.name and other.host_veth != ns.host_veth and other.subnet != ns.subnet
        assert len(other.host_veth) <= 15 and other.name.startswith(f"eagleeye-t-{os.getpid()}-")
        assert other.command(["true"]) == ["ip", "netns", "exec", other.name, "true"]
        assert (other.host_ip, other.ns_ip) == (other.subnet[:-4] + "1", other.subnet[:-4] + "2")


def check(address: str, service: str = "liveness", timeout: float = 5.0) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status)


def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_worker_inside_namespace_is_dialable_from_the_root_namespace(ns: NetNamespace) -> None:
    worker = Proc("eagleeye-detector", ["--listen", f"{ns.ns_ip}:0"], wrapper=ns.command([]))
    try:
        address = worker.wait_listening()
        host, port = address.rsplit(":", 1)
        assert host == ns.ns_ip and int(port) > 0
        assert netns_inode(worker.popen.pid) == os.stat(f"/run/netns/{ns.name}").st_ino  # ip netns exec execs
        assert check(address) == SERVING  # liveness answers while the model loads
        ns.cut()
        with pytest.raises(grpc.RpcError) as failed:
            check(address, timeout=1.0)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        ns.restore()
        assert check(address) == SERVING
        assert worker.stop() == 0  # SIGTERM reached the detector itself (ip netns exec execs it): exit code 0
    finally:
        worker.stop()


def primary_health(admin_address: str) -> router_pb.BackendHealth:
    with grpc.insecure_channel(admin_address) as channel:
        stub = router_grpc.RouterAdminStub(channel)
        state: router_pb.RouterState = stub.GetState(router_pb.GetStateRequest(), timeout=5.0).state
    primary: router_pb.BackendHealth = next(b for b in state.backends if b.backend == router_pb.BACKEND_PRIMARY)
    return primary


def wait_router_watching_primary(cluster: LocalCluster, timeout: float = 10.0) -> router_pb.BackendHealth:
    """Until the router (root namespace) has its health Watch stream on the primary connected."""
    deadline = time.monotonic() + timeout
    while not (health := primary_health(cluster.admin_address)).watch_connected:
        assert time.monotonic() < deadline, f"the router never reached the primary at {cluster.primary_address}"
        time.sleep(0.1)
    return health


def test_cluster_primary_inside_namespace(ns: NetNamespace) -> None:
    """The router, in the root namespace, dials the primary inside; restart_primary keeps it there."""
    cluster = LocalCluster(primary_wrapper=ns.command([]), primary_listen=f"{ns.ns_ip}:0")
    try:
        assert cluster.primary_address.startswith(f"{ns.ns_ip}:")
        assert cluster.standby_address.startswith("127.0.0.1:")
        assert wait_router_watching_primary(cluster).address == cluster.primary_address
        address, inode = cluster.primary_address, netns_inode(cluster.primary.popen.pid)
        assert inode == os.stat(f"/run/netns/{ns.name}").st_ino != netns_inode(cluster.standby.popen.pid)
        cluster.primary.popen.kill()  # SIGTERM would wait for the model load under way
        cluster.restart_primary()
        assert cluster.primary.address == address
        assert netns_inode(cluster.primary.popen.pid) == inode
        assert check(address) == SERVING
    finally:
        for worker in (cluster.primary, cluster.standby):
            worker.popen.kill()  # nothing here needs a graceful stop, which would wait for the model loads
        cluster.stop()
