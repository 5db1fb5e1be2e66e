"""A real Prometheus scrapes a running router and two workers; every dashboard and rule expression must work.

Expressions on GPU metrics must come back empty here: a CPU worker exports no GPU series, never a
made-up zero.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.harness.processes import LocalCluster
from tests.test_router_process import LoadRun

pytestmark = pytest.mark.integration
OBS = Path(__file__).parent.parent / "observability"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as e:  # a bad expression is a 400 with the error in the body
        return dict(json.load(e))


def wait_until(base: str, expr: str, timeout: float = 60.0) -> None:
    """Poll Prometheus until `expr` has a result (scrapes arrive every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if query(base, expr).get("data", {}).get("result"):
                return
        except urllib.error.URLError:
            pass  # Prometheus is still starting

        time.sleep(0.5)  # polling an external system's state, bounded by the deadline
    pytest.fail(f"Prometheus never returned data for {expr}")


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[str, LocalCluster]]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is missing: `make test` installs it (Debian package prometheus)")
    cluster = LocalCluster(worker_args=["--metrics-listen", "127.0.0.1:0"],
                           router_args=["--metrics-listen", "127.0.0.1:0", "--hold-down", "1",
                                        "--ramp", "1", "--request-default", "FAILOVER:score_threshold=0.4"])
    proc = None
    try:
        cluster.wait_ready()
        metrics = {name: p.wait_for_event("listening")["metrics"]
                   for name, p in (("primary", cluster.primary), ("standby", cluster.standby),
                                   ("router", cluster.router))}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(OBS / "prometheus" / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "eagleeye-detector", "static_configs": [
                    {"targets": [metrics["primary"]], "labels": {"role": "primary"}},
                    {"targets": [metrics["standby"]], "labels": {"role": "standby"}}]},
                {"job_name": "eagleeye-router", "static_configs": [{"targets": [metrics["router"]]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        wait_until(base, 'count(up == 1) == 3')
        yield base, cluster
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        cluster.stop()


def dashboard_exprs() -> list[str]:
    board = json.loads((OBS / "grafana" / "dashboards" / "eagleeye.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    return exprs


def concrete(expr: str) -> str:
    """Grafana variables as Grafana would fill them in for "All" and a 1 s scrape."""
    return expr.replace("$__rate_interval", "10s").replace("$router", ".*").replace("$worker", ".*")


def test_every_dashboard_and_rule_expression_works_against_real_data(scraped: tuple[str, LocalCluster]) -> None:
    base, cluster = scraped
    # Traffic of both kinds, and a switch (an operator drain) so the switch annotations have data.
    loads = (LoadRun(cluster.router_address, "unary", 8), LoadRun(cluster.router_address, "stream", 8))
    loads[0].wait_progress(2.0)
    with grpc.insecure_channel(cluster.admin_address) as ch:
        admin = rpb_grpc.RouterAdminStub(ch)
        auth = cluster.admin_metadata
        admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_STANDBY), timeout=5, metadata=auth)
        cluster.router.wait_for_event("switch", to_state="FAILOVER")
        loads[0].wait_progress(5.0)
        admin.Switch(rpb.SwitchRequest(to=rpb.BACKEND_PRIMARY), timeout=5, metadata=auth)
    for load in loads:
        load.result()
    wait_until(base, 'sum(eagleeye_router_switches_total{to_state="FAILOVER"}) > 0')
    # Per the seed: requests by kind (single images and video frames), objects by the model's classes.
    wait_until(base, 'sum(eagleeye_detector_frames_total{kind="image", method="Detect"}) > 0')
    wait_until(base, 'sum(eagleeye_detector_frames_total{kind="video", method="DetectStream"}) > 0')
    classes = query(base, "count by (class) (eagleeye_detector_objects_total)")["data"]["result"]
    assert classes and {r["metric"]["class"] for r in classes} <= {"screen", "ellipse", "triangle"}
    # The load's frames sent while the standby served got the FAILOVER request defaults.
    wait_until(base, 'sum(eagleeye_router_request_defaults_applied_total{state="FAILOVER"}) > 0')
    wait_until(base, 'sum(rate(eagleeye_detector_request_duration_seconds_count[10s])) > 0')

    problems = []
    for expr in dashboard_exprs():
        answer = query(base, concrete(expr))
        if answer.get("status") != "success":
            problems.append(f"{expr}: {answer.get('error')}")
        elif "eagleeye_gpu_" in expr:
            if answer["data"]["result"]:
                problems.append(f"{expr}: GPU series on a machine without a GPU")
        elif not answer["data"]["result"]:
            problems.append(f"{expr}: no data")
    rules = query(base, "up")  # keep the connection warm; the rules API below
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule["health"] != "ok":
                problems.append(f"rule {rule['name']}: {rule.get('lastError')}")
            for name in set(re.findall(r"\b(eagleeye_[a-z_]+|up)\b", rule["query"])):
                present = bool(query(base, f"count({name})")["data"]["result"])
                if present != (not name.startswith("eagleeye_gpu_")):
                    problems.append(f"rule {rule['name']}: series {name} {'present' if present else 'missing'}")
    assert len(groups) == 3 and rules["status"] == "success"
    assert not problems, "\n".join(problems)
