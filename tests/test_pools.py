"""A router in front of a pool: two primaries and a standby (simulated workers), and one primary failing.

Its share, and only its share, moves to the standby: the streams on the other primary keep their worker,
every frame is answered once, in order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.harness.processes import Proc

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent

ROUTER_TOML = """
hold_down_s = 60.0
healthy_checks = 3
"""


class Pool:
    def __init__(self, tmp: str) -> None:
        self.workers: dict[str, Proc] = {}
        self.token = secrets.token_hex(16)
        try:
            for name in ("p1", "p2", "s1"):
                self.workers[name] = Proc("python", ["-m", "bench.simworker", "--worker-id", name,
                                                     "--service-ms", "5", "--max-batch", "8"])
            self.address = {n: w.wait_listening() for n, w in self.workers.items()}
            config = f"{tmp}/router.toml"
            with open(config, "w") as f:
                f.write(ROUTER_TOML)
            self.router = Proc("eagleeye-router", [
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config", config,
                "--primary", f"{self.address['p1']},{self.address['p2']}", "--standby", self.address["s1"]],
                env={"EAGLEEYE_ADMIN_TOKEN": self.token})
            self.target = self.router.wait_listening()
            self.admin = self.router.wait_for_event("listening")["admin"]
            self.router.wait_for_event("switch", 60, to_state="NORMAL", worker="fleet")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in [getattr(self, "router", None), *self.workers.values()]:
            if proc is not None:
                if proc.popen.poll() is None and proc.popen.returncode is None:
                    proc.popen.send_signal(signal.SIGTERM)
                proc.stop()


@pytest.fixture
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    p = Pool(str(tmp_path_factory.mktemp("pool")))
    yield p
    p.stop()


async def _stream(stub: pb_grpc.DetectorStub, frames: int, gap: asyncio.Event, seen: list[tuple[int, str]],
                  pause_at: int) -> None:
    async def requests() -> AsyncIterator[pb.DetectRequest]:
        for i in range(1, frames + 1):
            if i == pause_at:
                await gap.wait()   # the test kills a primary while every stream is here
            yield pb.DetectRequest(frame_id=i, encoded=b"x")
            await asyncio.sleep(0.01)  # a camera's pace, not a synchronisation

    async for answer in stub.DetectStream(requests(), timeout=60):
        seen.append((answer.frame_id, answer.worker))


async def test_a_failed_primary_moves_only_its_own_share(pool: Pool) -> None:
    async with grpc.aio.insecure_channel(pool.target) as ch, grpc.aio.insecure_channel(pool.admin) as admin_ch:
        stub = pb_grpc.DetectorStub(ch)
        admin = rpb_grpc.RouterAdminStub(admin_ch)
        state = (await admin.GetState(rpb.GetStateRequest(), timeout=5)).state
        assert state.state == "NORMAL"
        names = {b.name: b for b in state.backends}
        assert set(names) == {f"primary/{pool.address['p1']}", f"primary/{pool.address['p2']}",
                              f"standby/{pool.address['s1']}"}
        assert [round(b.weight, 1) for b in state.backends] == [47.5, 47.5, 5.0]

        # Unary calls: both primaries carry the traffic, the standby its warm share.
        counts = collections.Counter([(await stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=5)).worker
                                      for _ in range(400)])
        assert counts["p1"] > 120 and counts["p2"] > 120 and 2 <= counts["s1"] < 60, counts

        # Streams: each has a home primary; 16 of them spread over both.
        gap = asyncio.Event()
        seen: list[list[tuple[int, str]]] = [[] for _ in range(16)]
        tasks = [asyncio.create_task(_stream(stub, 40, gap, s, pause_at=20)) for s in seen]
        for _ in range(2000):
            if all(len(s) >= 19 for s in seen):
                break
            await asyncio.sleep(0.01)  # polling what the streams have received, bounded
        before = {i: s[-1][1] for i, s in enumerate(seen)}
        assert {"p1", "p2"} <= set(before.values()), before

        pool.workers["p1"].popen.send_signal(signal.SIGKILL)
        gap.set()
        await asyncio.gather(*tasks)

    for i, s in enumerate(seen):
        assert [fid for fid, _ in s] == list(range(1, 41)), (i, s)   # every frame once, in order
        after = {w for fid, w in s if fid > 25}
        if before[i] == "p2":
            assert after == {"p2"}, (i, s)            # the other primary's streams are untouched
        elif before[i] == "p1":
            assert after <= {"s1", "p2"} and "p1" not in after, (i, s)
    state_event = pool.router.wait_for_event("switch", 10, to_state="FAILOVER", worker=f"primary/{pool.address['p1']}")
    assert "not ready" in state_event["reason"] or "ended" in state_event["reason"], state_event


async def test_new_streams_go_where_the_workers_own_reports_say_there_is_room(pool: Pool) -> None:
    """Another caller (a second router replica, a zero-hop client) loads p1 directly: this router's own
    counts cannot see that, p1's load reports can, and new streams go to p2."""
    frames_per_stream = 40
    async with grpc.aio.insecure_channel(pool.address["p1"]) as direct, \
            grpc.aio.insecure_channel(pool.target) as ch, grpc.aio.insecure_channel(pool.admin) as admin_ch:
        stop = asyncio.Event()

        async def other_caller() -> None:  # keeps 16 frames in p1 at all times, as fast as p1 answers
            window = asyncio.Semaphore(16)

            async def frames() -> AsyncIterator[pb.DetectRequest]:
                i = 0
                while not stop.is_set() and i < 100_000:
                    await window.acquire()  # a frame out per frame answered, never a backlog
                    i += 1
                    yield pb.DetectRequest(frame_id=i, encoded=b"x")
            async for _ in pb_grpc.DetectorStub(direct).DetectStream(frames(), timeout=60):
                window.release()

        others = [asyncio.create_task(other_caller()) for _ in range(4)]
        try:
            admin = rpb_grpc.RouterAdminStub(admin_ch)
            p1 = f"primary/{pool.address['p1']}"
            for _ in range(200):  # until the router has a report of that load (one a second), bounded
                state = (await admin.GetState(rpb.GetStateRequest(), timeout=5)).state
                b = next(b for b in state.backends if b.name == p1)
                if b.HasField("reported_queue") and b.reported_queue >= 32:
                    break
                await asyncio.sleep(0.05)  # polling the router's view, bounded
            else:
                raise AssertionError(f"the router never saw p1's load: {b}")

            stub = pb_grpc.DetectorStub(ch)
            seen: list[list[str]] = [[] for _ in range(10)]

            async def camera(out: list[str]) -> None:
                async def frames() -> AsyncIterator[pb.DetectRequest]:
                    for i in range(1, frames_per_stream + 1):
                        yield pb.DetectRequest(frame_id=i, encoded=b"x")
                        await asyncio.sleep(0.01)  # a camera's pace
                async for answer in stub.DetectStream(frames(), timeout=60):
                    out.append(answer.worker)

            await asyncio.gather(*(camera(s) for s in seen))
        finally:
            stop.set()
            await asyncio.gather(*others, return_exceptions=True)
    homes = collections.Counter(s[0] for s in seen)
    # Without the reports, this router's counts (0 and 0) would split the primaries' streams about evenly
    # (p1 at most one of about 9.5: 2 % likely). The standby takes its 5 % as ever (two of ten: 9 %).
    assert homes["p1"] <= 1 and all(len(s) == frames_per_stream for s in seen), homes


def test_zero_hop_clients_balance_the_primaries_by_their_load_reports(tmp_path: Path) -> None:
    """Zero-hop: stock grpcio clients take the router's cluster policy (weighted round robin over the
    workers' ORCA reports) and send most calls to the primary that serves more, where plain round robin
    would send half of them to the slow one."""
    procs: list[Proc] = []
    try:
        for name, service_ms, batch in (("fast", "5", "8"), ("slow", "50", "2"), ("s1", "5", "8")):
            procs.append(Proc("python", ["-m", "bench.simworker", "--worker-id", name, "--service-ms", service_ms,
                                         "--max-batch", batch, "--max-queue", "256"]))
        fast, slow, standby = (p.wait_listening() for p in procs)
        xds = f"127.0.0.1:{_free_port('127.0.0.1')}"
        router = Proc("eagleeye-router", ["--listen", "127.0.0.1:0", "--xds-listen", xds, "--primary",
                                          f"{fast},{slow}", "--standby", standby, "--hold-down", "60"])
        procs.append(router)
        router.wait_for_event("switch", 60, to_state="NORMAL", worker="fleet")
        probe = subprocess.run([sys.executable, "-m", "tests.xdsprobe", "--xds-server", xds, "--method", "detect",
                                "--threads", "8", "--duration", "9", "--window", "1", "--deadline", "5"],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert probe.returncode == 0, probe.stderr
    finally:
        for p in reversed(procs):
            p.stop()
    windows = [json.loads(line) for line in probe.stdout.splitlines() if '"t"' in line]
    late = collections.Counter[str]()
    for w in windows:
        assert not w["errors"], w
        if w["t"] > 5:  # the reports' blackout and a few weight updates later
            late.update(w["workers"])
    share = late["fast"] / max(late["fast"] + late["slow"], 1)
    assert share > 0.75, (late, windows)
    assert late["s1"] > 0, late  # the standby keeps its warm share (its own locality)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _private_hosts_works(hosts: Path) -> bool:
    """Whether this machine lets a process see a hosts file of its own (a mount namespace, as root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && getent ahosts ee-pool',
                            str(hosts)], capture_output=True, text=True, timeout=10)
    return probe.returncode == 0 and "127.0.0.2" in probe.stdout


async def test_a_dns_name_is_a_pool_that_grows_and_shrinks_without_a_restart(tmp_path: Path) -> None:
    """`--primary NAME:PORT` for a headless Service: every address is a primary; a new one joins and
    takes work, one that leaves is drained of its streams at frame boundaries, nothing lost."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 ee-pool\n127.0.0.3 ee-pool\n")
    if not _private_hosts_works(hosts):
        pytest.skip("needs unshare and mount namespaces (root) for a private hosts file")
    port = _free_port("127.0.0.2")
    procs: list[Proc] = []
    try:
        for i, ip in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.1"), 1):
            name = f"p{i}" if ip != "127.0.0.1" else "s1"
            procs.append(Proc("python", ["-m", "bench.simworker", "--worker-id", name, "--service-ms", "5",
                                         "--listen", f"{ip}:{port if name != 's1' else 0}"]))
        standby = procs[2].wait_listening()
        for p in procs[:2]:
            p.wait_listening()
        router = Proc("eagleeye-router", ["--listen", "127.0.0.1:0", "--primary", f"ee-pool:{port}",
                                          "--standby", standby, "--hold-down", "60"],
                      wrapper=["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                               str(hosts)])
        procs.append(router)
        target = router.wait_listening()
        router.wait_for_event("switch", 60, to_state="NORMAL", worker="fleet")

        async with grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.DetectorStub(ch)

            async def spread(n: int) -> collections.Counter[str]:
                return collections.Counter([(await stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=5)).worker
                                            for _ in range(n)])

            assert {"p1", "p2"} <= set(await spread(100))
            stop = asyncio.Event()
            seen: list[list[tuple[int, str]]] = [[] for _ in range(8)]

            async def camera(out: list[tuple[int, str]]) -> None:
                async def frames() -> AsyncIterator[pb.DetectRequest]:
                    i = 0
                    while not stop.is_set() and i < 3000:
                        i += 1
                        yield pb.DetectRequest(frame_id=i, encoded=b"x")
                        await asyncio.sleep(0.02)  # a camera's pace
                async for answer in stub.DetectStream(frames(), timeout=90):
                    out.append((answer.frame_id, answer.worker))

            cameras = [asyncio.create_task(camera(s)) for s in seen]
            # Scale out: a third address joins while its "model" still loads (4 s), and takes work once
            # ready, without a restart; until then it is no failed primary (no failover, no standby).
            p3 = Proc("python", ["-m", "bench.simworker", "--worker-id", "p3", "--service-ms", "5",
                                 "--listen", f"127.0.0.4:{port}", "--start-delay-s", "4"])
            procs.append(p3)
            p3.wait_listening()
            before = len(router.events)
            hosts.write_text("127.0.0.1 localhost\n127.0.0.2 ee-pool\n127.0.0.3 ee-pool\n127.0.0.4 ee-pool\n")
            p3_name = f"primary/127.0.0.4:{port}"
            await asyncio.to_thread(router.wait_for_event, "worker joined", 20, backend=p3_name)
            await asyncio.to_thread(router.wait_for_event, "worker ready: taking its share", 20, backend=p3_name)
            assert "p3" in await spread(100)
            # Running streams rebalance: an even share of them (8 // 3) moves onto p3, once each, at a frame
            # boundary; the rest stay where they are.
            rebalanced = await asyncio.to_thread(router.wait_for_event, "streams rebalanced onto a new primary",
                                                 20, backend=p3_name)
            assert rebalanced["streams"] == 2, (rebalanced, [e for e in router.events[before:] if e.get("event") in (
                "switch", "fleet switch", "worker ready: taking its share", "worker joined")])
            for _ in range(500):  # until the moved streams have answers from p3, bounded
                if sum(s[-1][1] == "p3" for s in seen) >= 2:
                    break
                await asyncio.sleep(0.01)  # polling what the streams have received, bounded
            assert sum(s[-1][1] == "p3" for s in seen) == 2, [s[-1] for s in seen]
            since = router.events[before:]
            bad = [(e.get("worker"), e["from_state"], e["to_state"], e["reason"]) for e in since
                   if e.get("event") == "switch" and e["to_state"] not in ("NORMAL", "RECOVERING")]
            assert not bad, bad
            # Scale in: p1's address goes; its streams move at a frame boundary, then it is removed.
            hosts.write_text("127.0.0.1 localhost\n127.0.0.3 ee-pool\n127.0.0.4 ee-pool\n")
            await asyncio.to_thread(router.wait_for_event, "worker removed", 45, backend=f"primary/127.0.0.2:{port}")
            assert "p1" not in await spread(100)
            stop.set()
            await asyncio.gather(*cameras)
    finally:
        for p in reversed(procs):
            p.stop()
    for s in seen:
        assert [fid for fid, _ in s] == list(range(1, len(s) + 1)) and len(s) > 20   # each frame once, in order
    # p1's streams left it, gracefully: no stream failed over off it (those moves are logged at INFO).
    on_p1 = [s for s in seen if any(w == "p1" for _, w in s)]
    assert on_p1 and all(s[-1][1] != "p1" for s in on_p1), [s[-1] for s in seen]
    failed_over = [e for e in router.events if e.get("event") == "stream moved" and "127.0.0.2" in e.get("frm", "")]
    assert not failed_over, failed_over
    assert not [e for e in router.events if e.get("level") == "error"], router.lines[-20:]
