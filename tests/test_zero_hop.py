"""Zero-hop mode with real processes: stock xDS clients take the router's decisions and call the workers
directly: grpcio's (tests/xdsprobe.py: threads calling GetModelInfo on xds:///eagleeye-detector) and, in
another gRPC implementation, grpc-js's (tests/grpcjs/xdsprobe.js, with the bootstrap `eagleeye
bootstrap` prints; npm packages installed by the test's own setup)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.harness.processes import BIN, LocalCluster
from tests.conftest import fast_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


class Probe:
    """tests/xdsprobe.py (or `command`: a probe printing the same lines) in the background; its windows as
    they come."""

    def __init__(self, xds_address: str, duration: float, threads: int = 4, window: float = 0.05,
                 command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            command or [sys.executable, "-m", "tests.xdsprobe", "--xds-server", xds_address, "--threads",
                        str(threads), "--duration", str(duration), "--window", str(window)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.windows: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            item = json.loads(line)
            item["wall"] = time.time()
            with self._cond:
                if item.get("ready"):
                    self._ready = True
                else:
                    self.windows.append(item)
                self._cond.notify_all()
        self.popen.wait()  # its output ended: wake whoever waits, to see it gone
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float = 30) -> None:
        with self._cond:
            ready = self._cond.wait_for(lambda: self._ready or self.popen.poll() is not None, timeout) and self._ready
        if not ready:
            self.stop()
            assert self.popen.stderr is not None
            raise AssertionError(f"the probe never got an answer: its calls' errors {totals(self.windows)[2]}; "
                                 f"its stderr: {self.popen.stderr.read()[-3000:]}")
        self.wait_windows(2)

    def wait_windows(self, n: int, timeout: float = 30) -> None:
        """Until `n` more windows have been reported."""
        with self._cond:
            want = len(self.windows) + n
            assert self._cond.wait_for(lambda: len(self.windows) >= want or self.popen.poll() is not None, timeout)

    def since(self, wall: float) -> list[dict[str, Any]]:
        with self._cond:
            return [w for w in self.windows if w["wall"] >= wall]

    def finish(self) -> None:
        self.popen.wait(60)
        self.wait_windows(0)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


def totals(windows: list[dict[str, Any]]) -> tuple[int, int, dict[str, int]]:
    errors: dict[str, int] = {}
    for w in windows:
        for code, n in w["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return sum(w["primary"] for w in windows), sum(w["standby"] for w in windows), errors


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    router_cfg = tmp_path / "router.toml"
    router_cfg.write_text("hold_down_s = 2.0\nramp_s = 2.0\nhealthy_checks = 3\n")
    c = LocalCluster(worker_args=["--config", fast_config(tmp_path)], router_args=["--config", str(router_cfg)],
                     xds_listen="127.0.0.1:0")
    try:
        c.wait_normal()
        yield c
    finally:
        c.stop()


def test_clients_split_traffic_by_the_routers_weights(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=8)
    try:
        probe.wait_ready()
        start = time.time()
        probe.finish()
        primary, standby, errors = totals(probe.since(start))
    finally:
        probe.stop()
    share = 100 * primary / (primary + standby)
    print(f"\nzero-hop split: {primary} primary, {standby} standby = {share:.1f} % primary; errors {errors}")
    assert not errors
    assert primary + standby > 1000
    assert 92 <= share <= 98


def test_sigkill_of_the_primary_costs_zero_hop_clients_no_error(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=8)
    try:
        probe.wait_ready()
        probe.wait_windows(10)
        killed = time.time()
        cluster.primary.signal(signal.SIGKILL)
        probe.finish()
        after = probe.since(killed)
        primary, standby, errors = totals(probe.windows)
    finally:
        probe.stop()
    first_standby_only = next(w["wall"] for w in after if w["standby"] and not w["primary"])
    print(f"\nSIGKILL under 4 threads: {errors or 'no'} errors; {primary} primary, {standby} standby answers; "
          f"standby alone from {1000 * (first_standby_only - killed):.0f} ms after the kill (50 ms windows)")
    assert not errors
    assert sum(w["standby"] for w in after) > 100


def admin(cluster: LocalCluster) -> rpb_grpc.RouterAdminStub:
    return rpb_grpc.RouterAdminStub(grpc.insecure_channel(cluster.admin_address))


def test_an_admin_drain_moves_every_client_call_within_100_ms(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=6, window=0.02)
    try:
        probe.wait_ready()
        probe.wait_windows(10)
        drained = time.time()
        admin(cluster).SetDrain(rpb.SetDrainRequest(backend=rpb.BACKEND_PRIMARY, drained=True),
                                metadata=cluster.admin_metadata, timeout=10)
        probe.finish()
        after = probe.since(drained)
    finally:
        probe.stop()
    last_primary = max((w["wall"] for w in after if w["primary"]), default=drained)
    print(f"\nadmin drain: the last primary answer {1000 * (last_primary - drained):.0f} ms after the call "
          "(20 ms windows)")
    assert not totals(after)[2]
    assert last_primary - drained < 0.1 + 0.05  # the target, plus the window and reporting delay
    assert sum(w["standby"] for w in after) > 100


def test_clients_keep_working_while_the_control_plane_restarts(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=10)
    try:
        probe.wait_ready()
        probe.wait_windows(10)
        cluster.router.stop()
        down = time.time()
        probe.wait_windows(20)  # a second without any control plane
        cluster.restart_router()
        cluster.router.wait_for_event("switch", 30, to_state="NORMAL")
        cluster.router.wait_for_event("xds client", 30)
        probe.finish()
        primary, standby, errors = totals(probe.windows)
        during = probe.since(down)
    finally:
        probe.stop()
    print(f"\ncontrol plane down and back: {primary} primary, {standby} standby answers, errors {errors}")
    assert not errors
    assert sum(w["primary"] for w in during) > 100


def event_wall(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def test_switch_back_follows_hold_down_and_ramp(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=20, threads=2)
    try:
        probe.wait_ready()
        cluster.primary.signal(signal.SIGKILL)
        cluster.router.wait_for_event("switch", 30, to_state="FAILOVER")
        cluster.restart_primary()
        recovering = cluster.router.wait_for_event("switch", 60, to_state="RECOVERING", from_state="FAILOVER")
        normal = cluster.router.wait_for_event("switch", 60, to_state="NORMAL", from_state="RECOVERING")
        probe.wait_windows(20)
        windows = probe.since(event_wall(recovering))
    finally:
        probe.stop()
    hold_down_ends = event_wall(recovering) + 2.0  # hold_down_s
    normal_at = event_wall(normal)

    def share(ws: list[dict[str, Any]]) -> float:
        p, s, _ = totals(ws)
        return p / max(1, p + s)

    held = [w for w in windows if w["wall"] < hold_down_ends - 0.1]
    ramp = [w for w in windows if hold_down_ends + 0.1 <= w["wall"] < normal_at]
    after = [w for w in windows if w["wall"] >= normal_at + 0.2]
    halves = ramp[:len(ramp) // 2], ramp[len(ramp) // 2:]
    print(f"\nswitch-back over xDS: primary share {share(held):.0%} in hold-down, {share(halves[0]):.0%} then "
          f"{share(halves[1]):.0%} over the ramp, {share(after):.0%} after NORMAL")
    assert held and totals(held)[0] == 0
    assert 0 < share(halves[0]) < share(halves[1]) < 0.95
    assert 0.9 <= share(after) <= 0.99


def test_a_hung_primary_is_left_once_the_router_sees_it(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=10)
    try:
        probe.wait_ready()
        probe.wait_windows(10)
        stopped = time.time()
        cluster.primary.signal(signal.SIGSTOP)
        failover = cluster.router.wait_for_event("switch", 30, to_state="FAILOVER")
        probe.wait_windows(60)
        # From 1 s after the switch, once the calls caught on the hung worker have reached their 2 s
        # deadline (a thread waiting on one makes no other call).
        after = probe.since(max(event_wall(failover) + 1.0, stopped + 2.1))
        primary_after, standby_after, _ = totals(after)
        _, _, errors = totals(probe.windows)
    finally:
        cluster.primary.signal(signal.SIGCONT)
        probe.stop()
    print(f"\nSIGSTOP: the router switched {1000 * (event_wall(failover) - stopped):.0f} ms after it; calls caught "
          "on the hung primary: "
          f"{errors or 'none'}; from 1 s after the switch {standby_after} standby, {primary_after} primary answers")
    # Served without a gap from then on (4 threads, 50 ms windows): every window has standby answers.
    assert after and all(w["standby"] > 0 for w in after), [w["standby"] for w in after]
    assert primary_after == 0
    # The calls already on the hung worker end at their deadline (xDS clients do not hedge): a few per thread.
    assert set(errors) <= {"DEADLINE_EXCEEDED"} and sum(errors.values()) <= 4 * 3


def test_the_client_tool_and_status_in_zero_hop_mode(cluster: LocalCluster) -> None:
    probe = Probe(cluster.xds_address, duration=6, threads=1)
    try:
        probe.wait_ready()
        out = subprocess.run([str(BIN / "eagleeye"), "status", "--target", cluster.admin_address, "--json"],
                             capture_output=True, text=True, timeout=30)
        state = json.loads(out.stdout)
        text = subprocess.run([str(BIN / "eagleeye"), "status", "--target", cluster.admin_address],
                              capture_output=True, text=True, timeout=30).stdout
    finally:
        probe.stop()
    (client,) = state["xds_clients"]
    assert client["node_id"] == "xdsprobe" and client["endpoints_version"] == state["xds_endpoints_version"]
    assert "xDS clients: 1 connected, 1 on assignment" in text
    load = subprocess.run([str(BIN / "eagleeye"), "load", "--target", "xds:///eagleeye-detector", "--xds-server",
                           cluster.xds_address, "--mode", "unary", "--rate", "40", "--duration", "3", "--json"],
                          capture_output=True, text=True, timeout=60)
    summary = json.loads(load.stdout.strip().splitlines()[-1])
    assert load.returncode == 0 and summary["errors"] == 0, load.stderr
    assert summary["by_worker"].get("primary", 0) > summary["by_worker"].get("standby", 0)


# -- another gRPC implementation: grpc-js ---------------------------------------------------------------

GRPCJS = ROOT / "tests" / "grpcjs"


@pytest.fixture(scope="module")
def grpcjs_modules() -> Path:
    """tests/grpcjs/package.json's packages, installed with npm into the virtual environment (once, and
    again when package.json changes). No lock file: one would name the registry it came from."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the grpc-js zero-hop test (Debian packages nodejs and npm)")
    where = Path(sys.prefix) / "grpcjs"
    wanted = (GRPCJS / "package.json").read_text()
    installed = where / "package.json"
    if not installed.exists() or installed.read_text() != wanted or not (where / "node_modules").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        installed.write_text(wanted)
        done = subprocess.run([npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--silent"],
                              cwd=where, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            installed.unlink()  # installed again next time
            pytest.fail(f"npm install of tests/grpcjs/package.json failed: {done.stderr[-2000:]}")
    return where / "node_modules"


def grpcjs_probe(cluster: LocalCluster, modules: Path, tmp_path: Path, duration: float) -> Probe:
    bootstrap = subprocess.run([str(BIN / "eagleeye"), "bootstrap", "--xds-server", cluster.xds_address,
                                "--node-id", "grpcjs-probe"], capture_output=True, text=True, timeout=30, check=True)
    (tmp_path / "bootstrap.json").write_text(bootstrap.stdout)
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(tmp_path / "bootstrap.json"), "NODE_PATH": str(modules)}
    env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
    return Probe(cluster.xds_address, duration, env=env, command=[
        "node", str(GRPCJS / "xdsprobe.js"), "--protos", str(ROOT / "protos"), "--calls", "4",
        "--duration", str(duration), "--window", "0.05"])


def test_a_grpcjs_client_with_eagleeyes_bootstrap_splits_and_rides_out_a_primary_sigkill(
        cluster: LocalCluster, grpcjs_modules: Path, tmp_path: Path) -> None:
    probe = grpcjs_probe(cluster, grpcjs_modules, tmp_path, duration=12)
    try:
        probe.wait_ready()
        start = time.time()
        probe.wait_windows(80)  # 4 s
        before = probe.since(start)
        killed = time.time()
        cluster.primary.signal(signal.SIGKILL)
        probe.finish()
        after = probe.since(killed)
        _, _, errors = totals(probe.windows)
    finally:
        probe.stop()
    primary, standby, _ = totals(before)
    share = 100 * primary / max(1, primary + standby)
    standby_after = sum(w["standby"] for w in after)
    print(f"\ngrpc-js zero-hop: {primary} primary, {standby} standby = {share:.1f} % primary; after a SIGKILL of "
          f"the primary {standby_after} standby answers; errors {errors or 'none'}")
    assert not errors, (errors, probe.popen.stderr.read() if probe.popen.stderr else "")
    assert primary + standby > 300
    assert 90 <= share <= 99
    assert standby_after > 100 and sum(w["primary"] for w in after[40:]) == 0
