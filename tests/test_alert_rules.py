"""The alert rules under `promtool test rules`: for every rule, a case that fires and one that does not.

The cases are a table here; the promtool test file is written from it, with the expected annotations
rendered from alerts.yml, so the rules' texts are not copied into the tests.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).parent.parent / "observability" / "prometheus" / "alerts.yml"
# Job names as a Kubernetes pod scrape would give them: the rules must not depend on them.
DET = 'job="kubernetes-pods", instance="w1:9100"'
ROUTER = 'job="kubernetes-pods", instance="r1:9101"'
JOB = "kubernetes-pods"


@dataclass(frozen=True)
class Case:
    alert: str
    series: dict[str, str]          # series -> promtool values, one sample a minute
    at: str                         # eval_time
    fires: dict[str, str] | None    # expected labels (besides alertname and severity), None: must not fire
    extra: list[dict[str, object]] = field(default_factory=list)


def gpu() -> str:
    return DET


CASES = [
    Case("EagleEyeGpuUtilizationHigh", {f"eagleeye_gpu_utilization_ratio{{{gpu()}}}": "0.99x15"}, "11m",
         {"job": JOB, "instance": "w1:9100"}),
    Case("EagleEyeGpuUtilizationHigh", {f"eagleeye_gpu_utilization_ratio{{{gpu()}}}": "0.99x5 0.5 0.99x9"}, "15m",
         None),
    Case("EagleEyeGpusIdle", {f"eagleeye_gpu_utilization_ratio{{{DET}}}": "0.02x70",
                              'eagleeye_gpu_utilization_ratio{job="kubernetes-pods", instance="w2:9100"}': "0.01x70"},
         "65m", {"job": JOB}),
    Case("EagleEyeGpusIdle", {f"eagleeye_gpu_utilization_ratio{{{DET}}}": "0.60x70",
                              'eagleeye_gpu_utilization_ratio{job="kubernetes-pods", instance="w2:9100"}': "0.01x70"},
         "65m", None),  # a warm standby is meant to be mostly idle while its primary works
    Case("EagleEyeGpuMemoryHigh", {f"eagleeye_gpu_memory_used_bytes{{{DET}}}": "15000000000x10",
                                   f"eagleeye_gpu_memory_total_bytes{{{DET}}}": "16000000000x10"}, "6m",
         {"job": JOB, "instance": "w1:9100"}),
    Case("EagleEyeGpuMemoryHigh", {f"eagleeye_gpu_memory_used_bytes{{{DET}}}": "12000000000x10",
                                   f"eagleeye_gpu_memory_total_bytes{{{DET}}}": "16000000000x10"}, "6m", None),
    Case("EagleEyeGpuTooHot", {f"eagleeye_gpu_temperature_celsius{{{DET}}}": "80 87 88 89 90"}, "3m",
         {"job": JOB, "instance": "w1:9100"}),
    Case("EagleEyeGpuTooHot", {f"eagleeye_gpu_temperature_celsius{{{DET}}}": "80 87 80 88 84"}, "4m", None),
    # 60 frames a minute, all in the 0.5 s bucket (p95 ~ 0.5 s) versus all under 25 ms.
    Case("EagleEyeInferenceLatencyHigh",
         {f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="0.025"}}': "0x15",
          f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="0.5"}}': "0+60x15",
          f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="+Inf"}}': "0+60x15"}, "12m",
         {"instance": "w1:9100"}),
    Case("EagleEyeInferenceLatencyHigh",
         {f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="0.025"}}': "0+60x15",
          f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="0.5"}}': "0+60x15",
          f'eagleeye_detector_request_duration_seconds_bucket{{{DET}, le="+Inf"}}': "0+60x15"}, "12m", None),
    # 600 probes a minute: all in the 0.25 s bucket (p99 ~ 0.25 s) versus all under 5 ms.
    Case("EagleEyeEventLoopLagging",
         {f'eagleeye_router_event_loop_lag_seconds_bucket{{{ROUTER}, le="0.005"}}': "0x15",
          f'eagleeye_router_event_loop_lag_seconds_bucket{{{ROUTER}, le="0.25"}}': "0+600x15",
          f'eagleeye_router_event_loop_lag_seconds_bucket{{{ROUTER}, le="+Inf"}}': "0+600x15"}, "12m",
         {"job": JOB, "instance": "r1:9101"}),
    Case("EagleEyeEventLoopLagging",
         {f'eagleeye_detector_event_loop_lag_seconds_bucket{{{DET}, le="0.005"}}': "0+594x15",
          f'eagleeye_detector_event_loop_lag_seconds_bucket{{{DET}, le="0.25"}}': "0+600x15",
          f'eagleeye_detector_event_loop_lag_seconds_bucket{{{DET}, le="+Inf"}}': "0+600x15"}, "12m",
         None),  # one probe in a hundred late: a hiccup, not a starved process
    Case("EagleEyeThroughputLow", {f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="OK"}}':
                                   "0+30x30"}, "25m", {}),
    Case("EagleEyeThroughputLow", {f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="OK"}}':
                                   "0+600x30"}, "25m", None),
    Case("EagleEyeWorkerDown", {f"up{{{DET}}}": "1 1 0x5", f"eagleeye_detector_queue_depth{{{DET}}}": "0 0 _x5"},
         "5m", {"job": JOB, "instance": "w1:9100"}),
    Case("EagleEyeWorkerDown", {f"up{{{DET}}}": "1x6", f"eagleeye_detector_queue_depth{{{DET}}}": "0x6",
                                f'eagleeye_health_status{{{DET}, service="readiness"}}': "1 1 0x4"}, "5m",
         {"job": JOB, "instance": "w1:9100", "service": "readiness"}),
    Case("EagleEyeWorkerDown", {f"up{{{DET}}}": "1x6", f"eagleeye_detector_queue_depth{{{DET}}}": "0x6",
                                f'eagleeye_health_status{{{DET}, service="readiness"}}': "1 0 1 1 1 1"}, "5m",
         None),  # a blip shorter than a minute
    Case("EagleEyeWorkerDown", {f"up{{{ROUTER}}}": "1 1 0x5", f'eagleeye_router_state{{{ROUTER}, state="NORMAL"}}':
                                "1 1 _x5", f'eagleeye_health_status{{{ROUTER}, service="readiness"}}': "0x6"}, "5m",
         None),  # a router is not a worker
    Case("EagleEyeRouterDown", {f"up{{{ROUTER}}}": "1 1 0x5", f'eagleeye_router_state{{{ROUTER}, state="NORMAL"}}':
                                "1 1 _x5"}, "5m", {"job": JOB, "instance": "r1:9101"}),
    Case("EagleEyeRouterDown", {f"up{{{DET}}}": "1 1 0x5", f"eagleeye_detector_queue_depth{{{DET}}}": "0 0 _x5"},
         "5m", None),  # a worker is not a router
    Case("EagleEyeRouterErrorRatioHigh",
         {f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="OK"}}': "0+600x15",
          f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="UNAVAILABLE"}}': "0+30x15",
          f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="INVALID_ARGUMENT"}}': "0+300x15"},
         "12m", {"job": JOB, "instance": "r1:9101"}),
    Case("EagleEyeRouterErrorRatioHigh",
         {f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="OK"}}': "0+600x15",
          f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="UNAVAILABLE"}}': "0+3x15",
          f'eagleeye_router_requests_total{{{ROUTER}, method="Detect", code="INVALID_ARGUMENT"}}': "0+300x15"},
         "12m", None),  # the clients' own bad requests are not the router's errors
    Case("EagleEyeFailoverActive", {f'eagleeye_router_state{{{ROUTER}, state="FAILOVER"}}': "1x20"}, "16m",
         {"instance": "r1:9101"}),
    Case("EagleEyeFailoverActive", {f'eagleeye_router_state{{{ROUTER}, state="FAILOVER"}}': "1x10 0x10",
                                    f'eagleeye_router_state{{{ROUTER}, state="NORMAL"}}': "0x10 1x10"}, "16m", None),
    Case("EagleEyeRedundancyLost", {f'eagleeye_health_status{{{ROUTER}, service="redundancy"}}': "0x10"}, "6m",
         {"job": JOB, "instance": "r1:9101", "service": "redundancy"}),
    Case("EagleEyeRedundancyLost", {f'eagleeye_health_status{{{ROUTER}, service="redundancy"}}': "1x10"}, "6m",
         None),
    Case("EagleEyePrimaryFlapping",
         {f'eagleeye_router_switches_total{{{ROUTER}, to_state="FAILOVER", cause="primary_failed"}}': "0 1 1 2 2 2",
          f'eagleeye_router_switches_total{{{ROUTER}, to_state="FAILOVER", cause="primary_failed_in_recovery"}}':
          "0 0 1 1 1 1"}, "5m", {"instance": "r1:9101"}),
    Case("EagleEyePrimaryFlapping",
         {f'eagleeye_router_switches_total{{{ROUTER}, to_state="FAILOVER", cause="primary_failed"}}': "0 1 1 1 1 1",
          f'eagleeye_router_switches_total{{{ROUTER}, to_state="NORMAL", cause="ramp_complete"}}': "0 0 1 1 1 1"},
         "5m", None),
    Case("EagleEyeStandbysShort", {f'eagleeye_router_state{{{ROUTER}, state="STANDBYS_SHORT"}}': "0 1 1 1 1"}, "4m",
         {"instance": "r1:9101"}),
    Case("EagleEyeStandbysShort", {f'eagleeye_router_state{{{ROUTER}, state="STANDBYS_SHORT"}}': "0 1 0 1 0"}, "4m",
         None),  # a minute short, then covered again: a pool changing, not a pool short
    Case("EagleEyeBothBackendsDown", {f'eagleeye_router_state{{{ROUTER}, state="BOTH_DOWN"}}': "0 1 1 1"}, "3m",
         {"instance": "r1:9101"}),
    Case("EagleEyeBothBackendsDown", {f'eagleeye_router_state{{{ROUTER}, state="BOTH_DOWN"}}': "0x3"}, "3m", None),
]


def _rules() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _render(text: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)


def test_every_rule_has_a_firing_and_a_quiet_case_and_a_runbook() -> None:
    rules = _rules()
    assert {c.alert for c in CASES if c.fires is not None} == set(rules)
    assert {c.alert for c in CASES if c.fires is None} == set(rules)
    runbooks = (RULES.parent.parent.parent / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbooks, re.M)}
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook_url") == f"docs/runbooks.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbooks.md has no section {name}"


def test_rules_select_on_the_metrics_own_labels_only() -> None:
    """No job name and no label that only a particular scrape config adds (role, env, ...)."""
    for name, rule in _rules().items():
        expr = str(rule["expr"])
        assert "job=" not in expr.replace(" ", "") and "role" not in expr, (name, expr)


def test_rules_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    rules = _rules()
    tests = []
    for case in CASES:
        expected = []
        if case.fires is not None:
            labels = {**case.fires, "severity": str(rules[case.alert]["labels"]["severity"])}  # type: ignore[index]
            annotations = {k: _render(str(v), labels)
                           for k, v in rules[case.alert]["annotations"].items()}  # type: ignore[attr-defined]
            expected.append({"exp_labels": labels, "exp_annotations": annotations})
        tests.append({"interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                      "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}]})
    spec = tmp_path / "alerts_test.yml"  # JSON is YAML
    spec.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    out = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


ADMIN_ADDR_PLACEHOLDER = "ROUTER_ADMIN_ADDR"
DRAIN_COMMAND = f"eagleeye admin drain primary --target {ADMIN_ADDR_PLACEHOLDER}"


def test_descriptions_name_real_operator_commands() -> None:
    """Advice to drain names the real command; every `eagleeye ...` command named parses with the client's parser."""
    from eagleeye.client.__main__ import build_parser

    rules = _rules()
    drains = [name for name, rule in rules.items()
              if re.search(r"\bdrain", str(rule["annotations"]["description"]), re.I)]  # type: ignore[index]
    assert drains, "no rule tells operators to drain any more: update this test with the rules"
    for name in drains:
        description = str(rules[name]["annotations"]["description"])  # type: ignore[index]
        assert f"`{DRAIN_COMMAND}`" in description and "EAGLEEYE_ADMIN_TOKEN" in description, name
    for name, rule in rules.items():
        text = " ".join(str(v) for v in rule["annotations"].values())  # type: ignore[attr-defined]
        assert "SetDrain" not in text, name  # the RPC, not a command
        commands = re.findall(r"`(eagleeye [^`]*)`", text)
        # Every mention of the tool is a whole command in backticks, and each one calls a router's admin address.
        assert len(re.findall(r"\beagleeye (?=[a-z])", text)) == len(commands), (name, text)
        for command in commands:
            argv = shlex.split(command)[1:]
            assert argv[argv.index("--target") + 1] == ADMIN_ADDR_PLACEHOLDER, (name, command)
            try:
                build_parser().parse_args([a.replace(ADMIN_ADDR_PLACEHOLDER, "127.0.0.1:50059") for a in argv])
            except SystemExit:
                pytest.fail(f"{name}: `{command}` is not a valid eagleeye command")


def test_runbook_commands_are_real_commands() -> None:
    from eagleeye.client.__main__ import build_parser

    runbooks = (RULES.parent.parent.parent / "docs" / "runbooks.md").read_text()
    inline = re.findall(r"`(eagleeye [^`]*)`", runbooks.replace("\n", " "))
    commands = inline + re.findall(r"^(eagleeye .+?)(?:\s+#.*)?$", runbooks, re.M)
    assert len(commands) >= 8
    for command in commands:
        argv = [a.replace(ADMIN_ADDR_PLACEHOLDER, "127.0.0.1:50059") for a in shlex.split(command)[1:]]
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/runbooks.md: `{command}` is not a valid eagleeye command")
