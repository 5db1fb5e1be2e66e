"""Deployment files, validated as strongly as a machine without Docker or Kubernetes allows.

Kubernetes manifests: strict schema validation for a current Kubernetes, the base and the TLS
component applied to it. Compose files: the real docker-compose parser, each file alone and with
the TLS override, and the command lines it resolves. Every command line in them: parsed by the
services' own argument parsers. Every health probe's service name: asked of a running worker and
router with the standard health client. And the security properties of issue 12: published ports on
127.0.0.1, no anonymous Grafana admin and no default password, an admin token that is required, the
admin API on a port of its own that a NetworkPolicy opens only to labelled namespaces, probes on the
plaintext health port, Secrets that are never optional. Pools and autoscaling (issue 21): the routers
name headless Services of each role, worker ids come from the pod, and the autoscaling components scale
the primaries on queries that select metrics the worker really exports, evaluated by promtool.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.harness.processes import LocalCluster

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "kubernetes"
K8S_TLS = K8S / "tls"
K8S_ZERO_HOP = K8S / "zero-hop"
K8S_GPU_NODES = K8S / "gpu-nodes"
K8S_MONITORING = K8S / "monitoring"
K8S_KEDA = K8S / "autoscaling" / "keda"
K8S_HPA = K8S / "autoscaling" / "hpa"
# prometheus-adapter's Helm values: beside the HPA component for its users, but not a Kubernetes resource.
ADAPTER_VALUES = K8S_HPA / "prometheus-adapter-values.yaml"
# Custom resources of the Prometheus Operator and KEDA: kubernetes-validate knows only Kubernetes' own
# kinds, and their CRD schemas are not on this machine; test_monitoring_component_* and
# test_keda_* check the fields the operators act on instead, and the rules and queries themselves go
# through promtool (test_alert_rules.py, test_autoscaling_queries_*).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
XDS_PORT = 50070
ZERO_HOP_LABEL = {"eagleeye.io/zero-hop": "true"}
COMPOSE_DIR = ROOT / "compose"
COMPOSE = [COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "docker-compose.cpu.yml"]
TLS_OVERRIDE = COMPOSE_DIR / "docker-compose.tls.yml"
FLEET_OVERRIDE = COMPOSE_DIR / "docker-compose.fleet.yml"  # over the CPU file only (its header says why)
# Every way the compose files are meant to be run: each compose file alone, the CPU one with the fleet
# override, and each of those with the TLS override last.
COMPOSE_BASES: list[tuple[Path, ...]] = [(f,) for f in COMPOSE] + [(COMPOSE[1], FLEET_OVERRIDE)]
COMPOSE_SETUPS: list[tuple[Path, ...]] = COMPOSE_BASES + [(*b, TLS_OVERRIDE) for b in COMPOSE_BASES]
WORKER_SERVICES = ("detector-primary", "detector-standby")
KUBERNETES_VERSION = "1.33.0"
DETECTOR_PORT, ROUTER_PORT = 50051, 50050
HEALTH_PORTS = {DETECTOR_PORT: 50061, ROUTER_PORT: 50060}  # the plaintext --health-listen ports
ADMIN_PORT = 50059
ADMIN_ACCESS_LABEL = {"eagleeye.io/admin-access": "true"}
# What compose refuses to start without; values used by the tests.
REQUIRED_ENV = {"EAGLEEYE_ADMIN_TOKEN": "test-admin-token-0123456789abcdef",  # 32 bytes or more, as the router wants
                "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}


def setup_id(files: tuple[Path, ...]) -> str:
    return "+".join(f.name for f in files)


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` (or `--name=VALUE`) in a command line; the last one wins, as in argparse."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------------------------
# Kubernetes

def load_docs(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return load_docs(K8S)


# Strategic-merge keys of the lists the TLS patches touch (as in the Kubernetes API); other lists
# are replaced, as a strategic merge patch does for them (args).
_MERGE_KEYS = {"containers": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
               "env": "name"}


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:  # null deletes the field, in a strategic merge patch as in kustomize
                out.pop(k, None)
                continue
            out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in _MERGE_KEYS:
        mk = _MERGE_KEYS[key]
        out_list = [copy.deepcopy(b) for b in base]
        for item in patch:
            match = [i for i, b in enumerate(out_list) if b.get(mk) == item.get(mk)]
            if match:
                out_list[match[0]] = _merge(out_list[match[0]], item)
            else:
                out_list.insert(0, copy.deepcopy(item))  # kustomize puts new items first
        return out_list
    return copy.deepcopy(patch)


def component(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def tls_component() -> dict[str, Any]:
    return component(K8S_TLS)


def component_manifests(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The base with a component applied: its patches (kustomize's strategic merge, for these fields),
    then its own resources."""
    c = component(directory)
    patches = [yaml.safe_load((directory / p["path"]).read_text()) for p in c.get("patches", [])]
    out = []
    for path, doc in manifests():
        for patch in patches:
            if (patch["kind"], patch["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"]):
                doc = _merge(doc, patch)
        out.append((path, doc))
    for name in c.get("resources", []):
        out += [(directory / name, doc) for doc in yaml.safe_load_all((directory / name).read_text()) if doc]
    return out


def tls_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_TLS)


def zero_hop_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_ZERO_HOP)


def gpu_nodes_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_GPU_NODES)


def monitoring_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_MONITORING)


def keda_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_KEDA)


def hpa_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return component_manifests(K8S_HPA)


VARIANTS = {"plain": manifests, "tls": tls_manifests, "zero-hop": zero_hop_manifests,
            "gpu-nodes": gpu_nodes_manifests, "monitoring": monitoring_manifests,
            "keda": keda_manifests, "hpa": hpa_manifests}


def deployments(variant: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in VARIANTS[variant]() if doc["kind"] == "Deployment"}


def containers(variant: str = "plain") -> list[dict[str, Any]]:
    return [c for d in deployments(variant).values() for c in d["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize(("path", "doc"), manifests(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_manifest_is_valid_for_kubernetes_in_strict_mode(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("path", "doc"), tls_manifests(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_tls_manifest_is_valid_for_kubernetes_in_strict_mode(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("path", "doc"), zero_hop_manifests(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_zero_hop_manifest_is_valid_for_kubernetes_in_strict_mode(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("path", "doc"), [m for m in gpu_nodes_manifests() + monitoring_manifests()
                                           + keda_manifests() + hpa_manifests()
                                           if m[1]["kind"] not in CUSTOM_KINDS],
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_component_manifest_is_valid_for_kubernetes_in_strict_mode(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", [K8S_GPU_NODES, K8S_MONITORING, K8S_KEDA, K8S_HPA], ids=lambda p: p.name)
def test_component_lists_every_file(directory: Path) -> None:
    c = component(directory)
    assert c["kind"] == "Component" and c["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    listed = set(c.get("resources", [])) | {p["path"] for p in c.get("patches", [])}
    assert listed == {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml", ADAPTER_VALUES.name}


def test_gpu_nodes_component_sets_node_selection_and_runtime_class_of_every_worker() -> None:
    workers = {n: d for n, d in deployments("gpu-nodes").items() if n.startswith("eagleeye-detector")}
    assert len(workers) == 2
    for name, doc in workers.items():
        spec = doc["spec"]["template"]["spec"]
        assert spec["runtimeClassName"] and spec["nodeSelector"], name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"], name
    plain = deployments("plain")
    for name in workers:  # the base: the usual GPU taint tolerated, nothing else assumed about the nodes
        spec = plain[name]["spec"]["template"]["spec"]
        assert spec["tolerations"] and "runtimeClassName" not in spec and "nodeSelector" not in spec


def test_monitoring_component_scrapes_every_metrics_port_and_carries_the_alerts_and_dashboard() -> None:
    import json
    docs = {d["kind"]: d for _, d in monitoring_manifests() if d["kind"] in CUSTOM_KINDS | {"ConfigMap"}}
    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"] and endpoints[0]["path"] == "/metrics"
    # eagleeye_health_status carries its own `service` (the health name) that alerts select on: the
    # target's must not rename it to exported_service.
    assert endpoints[0].get("honorLabels") is True
    selector = monitor["spec"]["selector"]["matchLabels"]
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    common = {k: v for entry in base["labels"] for k, v in entry["pairs"].items()}
    assert selector.items() <= common.items()  # the base labels every Service with it
    services = [d for _, d in manifests() if d["kind"] == "Service"]
    with_metrics = {d["metadata"]["name"] for d in services if any(p["name"] == "metrics" for p in d["spec"]["ports"])}
    assert {"eagleeye-detector-primary", "eagleeye-detector-standby", "eagleeye-router"} <= with_metrics
    rules = yaml.safe_load((ROOT / "observability" / "prometheus" / "alerts.yml").read_text())
    assert docs["PrometheusRule"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert docs["PrometheusRule"]["spec"]["groups"] == rules["groups"]
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(dashboard["data"]["eagleeye.json"]) == json.loads(
        (ROOT / "observability" / "grafana" / "dashboards" / "eagleeye.json").read_text())
    stale = subprocess.run([sys.executable, str(K8S_MONITORING / "generate.py"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert stale.returncode == 0, stale.stderr


AUTOSCALER_KINDS = {K8S_KEDA: "ScaledObject", K8S_HPA: "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("autoscaling", [K8S_KEDA, K8S_HPA], ids=lambda p: p.name)
def test_components_build_with_kustomize_together(tmp_path: Path, autoscaling: Path) -> None:
    """The base with the gpu-nodes, monitoring and one autoscaling component, as kustomize builds them
    (kubectl kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "eagleeye",
        "resources": [os.path.relpath(K8S, overlay)],
        "components": [os.path.relpath(d, overlay) for d in (K8S_GPU_NODES, K8S_MONITORING, autoscaling)]}))
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in built} >= {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                           "ServiceMonitor", "PrometheusRule", "ConfigMap",
                                           AUTOSCALER_KINDS[autoscaling]}
    for doc in built:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The overlay's namespace reaches the components' own resources too (the example overlays set it).
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"} == {"eagleeye"}
    ours = {n: d["spec"]["template"]["spec"] for n, d in deployments("gpu-nodes").items()}
    for doc in built:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            name = doc["metadata"]["name"]
            for key in ("runtimeClassName", "nodeSelector", "tolerations", "topologySpreadConstraints"):
                assert spec.get(key) == ours[name].get(key), (name, key)
    # One autoscaler for the primaries, which own no fixed count any more; the standbys keep theirs.
    by_name = {d["metadata"]["name"]: d for d in built if d["kind"] == "Deployment"}
    scalers = [d for d in built if d["kind"] == AUTOSCALER_KINDS[autoscaling]
               and d["spec"]["scaleTargetRef"]["name"] != "eagleeye-router"]
    assert [s["spec"]["scaleTargetRef"]["name"] for s in scalers] == ["eagleeye-detector-primary"]
    assert "replicas" not in by_name["eagleeye-detector-primary"]["spec"]
    assert by_name["eagleeye-detector-standby"]["spec"]["replicas"] == \
        deployments("plain")["eagleeye-detector-standby"]["spec"]["replicas"]


def test_workers_share_a_disruption_budget_and_routers_scale_on_cpu() -> None:
    docs = [d for _, d in manifests()]
    worker_labels = [d["spec"]["template"]["metadata"]["labels"] for d in docs
                     if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("eagleeye-detector")]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"
               and all(d["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels in worker_labels)]
    assert len(worker_labels) == 2 and len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "eagleeye-router"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "eagleeye-router")
    assert "replicas" not in router["spec"]  # the autoscaler owns it; a fixed count would fight it on apply
    assert router["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    for d in docs:
        if d["kind"] == "Deployment":
            spread = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert spread[0]["topologyKey"] == "topology.kubernetes.io/zone", d["metadata"]["name"]


def test_zero_hop_component_lists_every_file() -> None:
    c = component(K8S_ZERO_HOP)
    assert c["kind"] == "Component" and c["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    listed = set(c["resources"]) | {p["path"] for p in c["patches"]}
    assert listed == {p.name for p in K8S_ZERO_HOP.glob("*.yaml")} - {"kustomization.yaml"}


def test_zero_hop_routers_serve_xds_that_the_bootstrap_names_and_clients_may_reach() -> None:
    import json

    from eagleeye.client.dial import xds_bootstrap

    docs = zero_hop_manifests()
    [c] = deployments("zero-hop")["eagleeye-router"]["spec"]["template"]["spec"]["containers"]
    assert host_port(flag(c["args"], "--xds-listen") or "")[1] == XDS_PORT
    [plain] = deployments("plain")["eagleeye-router"]["spec"]["template"]["spec"]["containers"]
    assert flag(c["args"], "--listen") == flag(plain["args"], "--listen")  # the proxy stays
    assert {"name": "xds", "containerPort": XDS_PORT} in c["ports"]
    services = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}
    [port] = services["eagleeye-router-xds"]["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (XDS_PORT, "xds")
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    [boot] = [d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "eagleeye-xds-bootstrap"]
    assert json.loads(boot["data"]["bootstrap.json"]) == xds_bootstrap(
        f"eagleeye-router-xds.{namespace}.svc:{XDS_PORT}", "eagleeye-client")
    # Zero-hop clients' namespaces, and only they, reach the xDS port and the workers' gRPC port.
    labels = {name: deployments("zero-hop")[name]["spec"]["template"]["metadata"]["labels"]
              for name in ("eagleeye-router", "eagleeye-detector-primary")}
    for target, port_number in (("eagleeye-router", XDS_PORT), ("eagleeye-detector-primary", DETECTOR_PORT)):
        rules = [rule for _, d in docs if d["kind"] == "NetworkPolicy" and _selects(d, labels[target])
                 for rule in d["spec"].get("ingress", [])
                 if any(p.get("port") == port_number for p in rule.get("ports", []))]
        assert any(peer.get("namespaceSelector", {}).get("matchLabels") == ZERO_HOP_LABEL
                   for rule in rules for peer in rule.get("from", [])), (target, rules)
        if target == "eagleeye-router":
            assert all(rule.get("from") for rule in rules), "the xDS port open to every peer"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_tls_component_lists_every_patch_and_patches_every_deployment() -> None:
    component = tls_component()
    assert component["kind"] == "Component" and component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    listed = {p["path"] for p in component["patches"]}
    assert listed == {p.name for p in K8S_TLS.glob("*.yaml")} - {"kustomization.yaml"}
    patched = {yaml.safe_load((K8S_TLS / p).read_text())["metadata"]["name"] for p in listed}
    assert patched == set(deployments("plain"))


def test_tls_component_builds_with_kustomize_as_the_tests_apply_it(tmp_path: Path) -> None:
    """The tests' own patching (tls_manifests) agrees with kustomize's, where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, overlay)], "components": [os.path.relpath(K8S_TLS, overlay)]}))
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"}
    ours = deployments("tls")
    assert set(built) == set(ours)
    for name, doc in built.items():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        spec, mine = doc["spec"]["template"]["spec"], ours[name]["spec"]["template"]["spec"]
        assert spec["volumes"] == mine.get("volumes") and spec["securityContext"] == mine["securityContext"], name
        for c, m in zip(spec["containers"], mine["containers"], strict=True):
            for key in ("args", "env", "ports", "volumeMounts", "startupProbe", "livenessProbe", "readinessProbe"):
                assert c.get(key) == m.get(key), (name, key)


def test_detectors_have_a_gpu_each_never_share_a_node_and_probe_the_right_names() -> None:
    by_name = deployments("plain")
    for role in ("primary", "standby"):
        spec = by_name[f"eagleeye-detector-{role}"]["spec"]["template"]["spec"]
        [c] = spec["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "eagleeye-detector"}
        assert c["livenessProbe"]["grpc"]["service"] == "liveness"
        assert c["readinessProbe"]["grpc"]["service"] == "readiness"
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    assert any(doc["kind"] == "PodDisruptionBudget" for _, doc in manifests())


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ask_the_plaintext_health_port(variant: str) -> None:
    """kubelet's gRPC probes cannot speak TLS: every probe asks the --health-listen port, never --listen."""
    for c in containers(variant):
        main_port = host_port(flag(c["args"], "--listen") or "")[1]
        health = flag(c["args"], "--health-listen")
        assert health, (c["name"], "no --health-listen")
        health_host, health_port = host_port(health)
        assert health_host == "0.0.0.0", "kubelet probes the pod's IP"
        assert health_port == HEALTH_PORTS[main_port] and health_port != main_port
        assert {"containerPort": health_port, "name": "health"} in c["ports"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, (c["name"], probe)
            assert c[probe]["grpc"]["port"] == health_port, (c["name"], probe)


def test_tls_variant_serves_mtls_on_every_hop_with_certificates_from_required_secrets() -> None:
    for name, doc in deployments("tls").items():
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        [c] = spec["containers"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        wanted = ["--tls-cert", "--tls-key", "--tls-client-ca"]
        if name == "eagleeye-router":
            wanted += ["--backend-tls-ca", "--backend-tls-cert", "--backend-tls-key"]
        for f in wanted:
            path = flag(c["args"], f)
            assert path, (name, f)
            mount = mounts[str(Path(path).parent)]
            assert mount.get("readOnly") is True and "subPath" not in mount, (name, f)  # subPath: no rotation
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"].endswith("-tls") and secret.get("optional") is not True, (name, f)
            assert Path(path).name in ("tls.crt", "tls.key", "ca.crt")
        # Secret files readable by the service user only through its group.
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_is_optional(variant: str) -> None:
    refs = 0
    for doc in deployments(variant).values():
        spec = doc["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs += 1
                assert v["secret"].get("optional") is not True, v
        for c in spec["containers"]:
            for e in c.get("env", []) + c.get("envFrom", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef") or e.get("secretRef")
                if ref:
                    refs += 1
                    assert ref.get("optional") is not True, e
    assert refs >= (5 if variant == "tls" else 1)


def test_router_admin_api_has_its_own_port_and_service_and_a_required_token() -> None:
    router = deployments("plain")["eagleeye-router"]
    [c] = router["spec"]["template"]["spec"]["containers"]
    admin, listen = flag(c["args"], "--admin-listen"), flag(c["args"], "--listen")
    assert admin and listen and host_port(admin)[1] == ADMIN_PORT != host_port(listen)[1]
    assert {"name": "admin", "containerPort": ADMIN_PORT} in c["ports"]
    [token] = [e for e in c["env"] if e["name"] == "EAGLEEYE_ADMIN_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "eagleeye-admin" and ref["key"] == "token" and ref.get("optional") is not True
    assert "--admin-token" not in c["args"]  # never on the command line
    services = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Service"}
    admin_svc = services["eagleeye-router-admin"]["spec"]
    assert admin_svc["selector"] == {"app.kubernetes.io/name": "eagleeye-router"}
    assert [(p["port"], p["targetPort"]) for p in admin_svc["ports"]] == [(ADMIN_PORT, "admin")]
    # The client Service (the one operators expose) never carries the admin port.
    for p in services["eagleeye-router"]["spec"]["ports"]:
        assert ADMIN_PORT not in (p["port"], p.get("targetPort")) and p.get("targetPort") != "admin"


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def test_network_policy_opens_the_admin_port_only_to_labelled_namespaces() -> None:
    router_labels = deployments("plain")["eagleeye-router"]["spec"]["template"]["metadata"]["labels"]
    policies = [doc for _, doc in manifests() if doc["kind"] == "NetworkPolicy" and _selects(doc, router_labels)]
    assert policies, "no NetworkPolicy isolates the router pods"
    admitting = []
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            # A rule with no ports opens every port, the admin port included.
            opens_admin = ports is None or any(p.get("port") in (ADMIN_PORT, "admin") for p in ports)
            if not opens_admin:
                continue
            admitting.append(rule)
            peers = rule.get("from")
            assert peers, "the admin port open to every peer"
            for peer in peers:
                assert "ipBlock" not in peer, peer
                assert peer.get("namespaceSelector", {}).get("matchLabels") == ADMIN_ACCESS_LABEL, peer
                assert not peer["namespaceSelector"].get("matchExpressions"), peer
    assert admitting, "no rule admits operators to the admin port"


# ---------------------------------------------------------------------------------------------
# Pools and autoscaling (issue 21)

ROLES = ("primary", "standby")
# What a detection fleet is scaled on: the GPU's duty cycle and the frames waiting for it.
GPU_METRIC, QUEUE_METRIC = "eagleeye_gpu_utilization_ratio", "eagleeye_detector_queue_depth"
SELECTOR = re.compile(r"\b(eagleeye_\w+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def services(variant: str = "plain") -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in VARIANTS[variant]() if doc["kind"] == "Service"}


def pod_labels(variant: str, deployment: str) -> dict[str, str]:
    labels: dict[str, str] = deployments(variant)[deployment]["spec"]["template"]["metadata"]["labels"]
    return labels


def base_namespace() -> str:
    namespace: str = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    return namespace


def worker_service(role: str) -> str:
    """The Service the base's routers name for a role (its --primary or --standby)."""
    [router] = deployments("plain")["eagleeye-router"]["spec"]["template"]["spec"]["containers"]
    return host_port(flag(router["args"], f"--{role}") or "")[0].split(".")[0]


@functools.cache
def worker_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """What a worker's metrics port serves, with a GPU: each series name, its type and its own label
    names, from the worker's own instruments (DetectorMetrics) through the Prometheus exporter it uses."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from eagleeye.detector.gpu import GpuSample
    from eagleeye.detector.metrics import DetectorMetrics

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        DetectorMetrics(provider.get_meter("eagleeye"), queue_depth=lambda: 3,
                        gpu=lambda: GpuSample(50.0, 1 << 30, 16 << 30, 45.0, False, None, ()),
                        health=lambda: {"readiness": True})
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    out: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, (family.type, set()))[1].update(sample.labels)
    return {name: (kind, frozenset(labels)) for name, (kind, labels) in out.items()}


def selectors(query: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Each EagleEye series a PromQL query selects, with its label matchers (label: (operator, value))."""
    found = [(m.group(1), {k: (op, v) for k, op, v in MATCHER.findall(m.group(2))}) for m in SELECTOR.finditer(query)]
    # Every EagleEye name in the query is a selector with matchers: none selects every namespace.
    assert sorted(n for n, _ in found) == sorted(re.findall(r"\beagleeye_\w+", query)), query
    return found


def assert_selects_this_namespaces_primaries(query: str) -> set[str]:
    """A query reads gauges the worker exports, from this namespace's primaries only (the target labels
    the ServiceMonitor gives them); returns the metric names."""
    wanted = {"namespace": ("=", base_namespace()), "service": ("=", worker_service("primary"))}
    names = set()
    for name, matchers in selectors(query):
        assert name in worker_metrics(), f"{name}: the worker exports no such series ({query})"
        kind, own_labels = worker_metrics()[name]
        assert kind == "gauge", (name, kind)  # averaged over time, not a counter's rate
        # Target labels the worker's own labels would shadow (exported_service) select nothing.
        assert not own_labels & set(wanted), (name, own_labels)
        assert matchers == wanted, (query, matchers)
        names.add(name)
    return names


def scaled_object() -> dict[str, Any]:
    [doc] = [d for _, d in keda_manifests() if d["kind"] == "ScaledObject"]
    return doc


def primaries_hpa() -> dict[str, Any]:
    [doc] = [d for _, d in hpa_manifests() if d["kind"] == "HorizontalPodAutoscaler"
             and d["spec"]["scaleTargetRef"]["name"] != "eagleeye-router"]
    return doc


def adapter_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["external"]
    return rules


def adapter_names(rule: dict[str, Any]) -> tuple[str, str]:
    """(the external metric's name as the adapter exposes it, the Prometheus series it discovers)."""
    [(series, _)] = selectors(rule["seriesQuery"])
    naming = rule.get("name")
    if not naming:
        return series, series
    assert re.search(naming["matches"], series), (naming, series)
    return naming.get("as") or series, series


def adapter_query(rule: dict[str, Any], labels: dict[str, str]) -> str:
    """A rule's metricsQuery as the adapter sends it for an HPA that selects `labels` (its namespace
    included)."""
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    query = (rule["metricsQuery"].replace("<<.Series>>", adapter_names(rule)[1])
             .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "namespace"))
    assert "<<" not in query, query
    return str(query)


def quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def hpa_queries() -> dict[str, tuple[str, float]]:
    """The primaries' HPA's metrics: name -> (the query the adapter runs for it, the per-pod target)."""
    rules = {adapter_names(r)[0]: r for r in adapter_rules()}
    out = {}
    for m in primaries_hpa()["spec"]["metrics"]:
        assert m["type"] == "External", m
        metric, target = m["external"]["metric"], m["external"]["target"]
        assert metric["name"] in rules, f"{metric['name']}: no adapter rule exposes it"
        assert target["type"] == "AverageValue", target  # a total over the primaries, divided per pod
        labels = {"namespace": base_namespace(), **metric["selector"]["matchLabels"]}
        out[metric["name"]] = (adapter_query(rules[metric["name"]], labels), quantity(target["averageValue"]))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_routers_name_a_headless_service_of_the_workers_of_each_role(variant: str) -> None:
    """--primary and --standby each name a headless Service (DNS: every pod's address, a worker each, so
    the pool follows the Deployment) that selects that role's pods and no other's."""
    [router] = deployments(variant)["eagleeye-router"]["spec"]["template"]["spec"]["containers"]
    for role, other in (ROLES, ROLES[::-1]):
        target = flag(router["args"], f"--{role}")
        assert target and "," not in target, (role, target)  # one name stands for the whole pool
        host, port = host_port(target)
        name, *domain = host.split(".")
        assert not domain or domain[0] == base_namespace(), host  # a short name resolves in its own namespace
        service = services(variant)[name]["spec"]
        assert service.get("clusterIP") == "None", (name, "not headless: one virtual address for the pool")
        # Every pod, ready or not: the routers judge readiness, keep a failed worker's history (hold-down)
        # and treat a new pod as joining until its first ready (docs/router.md).
        assert service.get("publishNotReadyAddresses") is True, name
        assert service["selector"].items() <= pod_labels(variant, f"eagleeye-detector-{role}").items()
        assert not service["selector"].items() <= pod_labels(variant, f"eagleeye-detector-{other}").items()
        [svc_port] = [p for p in service["ports"] if p["port"] == port]
        [c] = deployments(variant)[f"eagleeye-detector-{role}"]["spec"]["template"]["spec"]["containers"]
        assert {"name": svc_port["targetPort"], "containerPort": port} in c["ports"], (name, svc_port)
        assert host_port(flag(c["args"], "--listen") or "")[1] == port
        # The ServiceMonitor scrapes it, which gives the series the labels the autoscalers select on.
        assert any(p["name"] == "metrics" for p in service["ports"]), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_worker_pod_reports_its_own_name_as_worker_id(variant: str) -> None:
    workers = {n: d for n, d in deployments(variant).items() if n.startswith("eagleeye-detector")}
    assert len(workers) == 2
    for name, doc in workers.items():
        [c] = doc["spec"]["template"]["spec"]["containers"]
        worker_id = flag(c["args"], "--worker-id") or ""
        reference = re.fullmatch(r"\$\((\w+)\)", worker_id)  # Kubernetes expands $(VAR) from the env
        assert reference, (name, worker_id, "the same id in every replica")
        [env] = [e for e in c["env"] if e["name"] == reference.group(1)]
        assert env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, (name, env)


def test_worker_rollouts_replace_one_pod_at_a_time_and_the_base_is_the_fleet() -> None:
    plain = deployments("plain")
    for role in ROLES:
        spec = plain[f"eagleeye-detector-{role}"]["spec"]
        # The old pod releases its GPU before the new one starts, one pod at a time (Recreate would stop
        # every worker of the role at once).
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    primaries = plain["eagleeye-detector-primary"]["spec"]["replicas"]
    standbys = plain["eagleeye-detector-standby"]["spec"]["replicas"]
    # N primaries, fewer standbys; without an autoscaler the fleet sits at the autoscalers' floor.
    assert 1 <= standbys < primaries == scaled_object()["spec"]["minReplicaCount"] == \
        primaries_hpa()["spec"]["minReplicas"]


def test_keda_scales_the_primaries_on_gauges_the_workers_export() -> None:
    doc = scaled_object()
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    spec = doc["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    assert target["name"] in deployments("keda")
    assert pod_labels("keda", target["name"])["eagleeye.io/role"] == "primary"
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    scaled: set[str] = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus", trigger
        assert trigger.get("metricType", "AverageValue") == "AverageValue"  # a total, divided per pod
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith(("http://", "https://")) and float(meta["threshold"]) > 0
        # An empty answer (Prometheus lost the workers) is an error that stops scale-down, not a zero.
        assert meta.get("ignoreNullValues") == "false", meta
        found = assert_selects_this_namespaces_primaries(meta["query"])
        assert len(found) == 1, meta["query"]
        scaled |= found
    assert scaled == {GPU_METRIC, QUEUE_METRIC}
    # Streams are long-lived: shrink more slowly than the routers (which scale on CPU).
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    [router_hpa] = [d for _, d in manifests() if d["kind"] == "HorizontalPodAutoscaler"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= \
        router_hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]


def test_hpa_scales_the_primaries_on_what_the_adapter_rules_expose() -> None:
    spec = primaries_hpa()["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "eagleeye-detector-primary"}
    assert pod_labels("hpa", spec["scaleTargetRef"]["name"])["eagleeye.io/role"] == "primary"
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["prometheus"]["url"].startswith(("http://", "https://")) and values["prometheus"]["port"]
    rules = {adapter_names(r)[0]: r for r in adapter_rules()}
    assert len(rules) == len(adapter_rules())  # each rule exposes a name of its own
    queries = hpa_queries()
    assert set(queries) == set(rules), "an adapter rule no HPA metric uses, or the other way round"
    scaled: set[str] = set()
    for name, rule in rules.items():
        [(series, discovery)] = selectors(rule["seriesQuery"])
        assert series in worker_metrics(), f"{series}: the worker exports no such series"
        # The adapter adds the asking HPA's namespace (namespace label = namespace resource), and the
        # HPA's selector; series are discovered only where those labels exist.
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"].replace(" ", "")
        [metric] = [m["external"]["metric"] for m in spec["metrics"] if m["external"]["metric"]["name"] == name]
        assert set(metric["selector"]["matchLabels"]) | {"namespace"} <= set(discovery), (name, discovery)
        found = assert_selects_this_namespaces_primaries(queries[name][0])
        assert found == {series}, (name, found)
        scaled |= found
    assert scaled == {GPU_METRIC, QUEUE_METRIC}


def test_both_autoscaling_flavours_scale_alike_and_leave_the_standbys_alone() -> None:
    keda, hpa = scaled_object()["spec"], primaries_hpa()["spec"]
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    keda_targets = {selectors(t["metadata"]["query"])[0][0]: float(t["metadata"]["threshold"])
                    for t in keda["triggers"]}
    hpa_targets = {selectors(query)[0][0]: target for query, target in hpa_queries().values()}
    assert keda_targets == hpa_targets
    for variant in ("keda", "hpa"):
        docs = [d for _, d in VARIANTS[variant]()]
        targets = sorted(d["spec"]["scaleTargetRef"]["name"] for d in docs
                         if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"))
        assert targets == ["eagleeye-detector-primary", "eagleeye-router"], (variant, targets)
        standby = deployments(variant)["eagleeye-detector-standby"]["spec"]
        assert standby["replicas"] == deployments("plain")["eagleeye-detector-standby"]["spec"]["replicas"]
        assert "replicas" not in deployments(variant)["eagleeye-detector-primary"]["spec"]


def test_autoscaling_queries_add_up_this_namespaces_primaries_under_promtool(tmp_path: Path) -> None:
    """Every query either flavour runs, evaluated by promtool over series labelled as the ServiceMonitor
    labels them: it parses, and it adds up the primaries of this namespace and nothing else (standbys,
    another namespace's workers) into one sample, as KEDA and the HPA need."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    namespace, primary, standby = base_namespace(), worker_service("primary"), worker_service("standby")
    workers = [(namespace, primary, "p-a", 0.75), (namespace, primary, "p-b", 0.5),
               (namespace, standby, "s-a", 0.125), ("elsewhere", primary, "p-c", 0.625)]
    queries = [t["metadata"]["query"] for t in scaled_object()["spec"]["triggers"]]
    queries += [query for query, _ in hpa_queries().values()]
    assert len(queries) == 4
    tests = []
    for query in queries:
        [(metric, _)] = selectors(query)
        series = [{"series": f'{metric}{{namespace="{ns}", service="{svc}", job="{svc}", pod="{pod}", '
                             f'container="detector", endpoint="metrics", instance="{pod}:9100"}}',
                   "values": f"{value}x20"} for ns, svc, pod, value in workers]
        tests.append({"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": query, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 1.25}]}]})
    spec = tmp_path / "autoscaling-queries-test.yml"
    spec.write_text(yaml.safe_dump({"tests": tests}, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# Compose

def compose_env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV and not k.startswith("EAGLEEYE_")}
    env.update(REQUIRED_ENV)
    env["DOCKER_HOST"] = "unix:///nonexistent.sock"  # no engine is needed to parse; point at none
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_compose_config(files: tuple[Path, ...], env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing: `make test` installs it (Debian package docker-compose)")
    args = [tool, *(a for f in files for a in ("-f", str(f))), "config", *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


@functools.cache
def resolved(files: tuple[Path, ...], bind: str | None = None) -> dict[str, Any]:
    """The services as docker-compose resolves them (interpolated, merged, `$$` escapes undone)."""
    out = run_compose_config(files, compose_env(EAGLEEYE_ROUTER_BIND=bind))
    assert out.returncode == 0, out.stderr
    services: dict[str, Any] = yaml.safe_load(out.stdout.replace("$$", "$"))["services"]
    return services


def argv(service: dict[str, Any]) -> list[str]:
    """The command line a service's container runs: its command, through its entrypoint if it has one."""
    command = list(service.get("command") or [])
    entrypoint = service.get("entrypoint")
    if not entrypoint:
        return command
    if entrypoint[:2] == ["/bin/sh", "-c"]:
        # Run the entrypoint script for real, with a command that prints the arguments it is given.
        out = subprocess.run([*entrypoint, "printf", r"%s\n", *command], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.splitlines()
    return [*entrypoint, *command]


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
def test_compose_file_is_valid(files: tuple[Path, ...]) -> None:
    out = run_compose_config(files, compose_env(), "-q")
    assert out.returncode == 0, out.stderr
    spec = resolved(files)
    for worker in ("detector-primary", "detector-standby"):
        assert spec["router"]["depends_on"][worker]["condition"] == "service_healthy"
    if files[0].name == "docker-compose.yml":
        gpus = [spec[w]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
                for w in ("detector-primary", "detector-standby")]
        assert gpus == [["0"], ["1"]]


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_to_start_without_the_admin_token_or_grafana_password(
        files: tuple[Path, ...], variable: str, value: str | None) -> None:
    out = run_compose_config(files, compose_env(**{variable: value}), "-q")
    assert out.returncode != 0 and variable in out.stderr, out.stderr


def _published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host IP, container port) of each published port; a port published on all interfaces has ''."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        out.append((":".join(parts[:-2]) if len(parts) == 3 else "", int(parts[-1])))
    return out


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
def test_compose_publishes_ports_on_loopback_only(files: tuple[Path, ...]) -> None:
    published = {name: _published(s) for name, s in resolved(files).items()}
    assert published["router"] and published["grafana"] and published["prometheus"]
    for name, ports in published.items():
        for host_ip, port in ports:
            assert host_ip == "127.0.0.1", (name, port, host_ip or "all interfaces")
    assert not published["detector-primary"] and not published["detector-standby"]
    # EAGLEEYE_ROUTER_BIND opens the client port only: admin, Grafana and Prometheus stay on loopback.
    opened = {name: _published(s) for name, s in resolved(files, "0.0.0.0").items()}
    assert ("0.0.0.0", ROUTER_PORT) in opened["router"] and ("127.0.0.1", ADMIN_PORT) in opened["router"]
    assert {name: p for name, p in opened.items() if name != "router"} == \
        {name: p for name, p in published.items() if name != "router"}


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
def test_compose_grafana_has_no_anonymous_admin_and_no_default_password(files: tuple[Path, ...]) -> None:
    env = resolved(files)["grafana"].get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"  # Grafana's default role is Viewer too
    # The admin password comes from the operator (the value the test gave), never admin/admin.
    assert env.get("GF_SECURITY_ADMIN_PASSWORD") == REQUIRED_ENV["GRAFANA_ADMIN_PASSWORD"] or \
        env.get("GF_SECURITY_ADMIN_PASSWORD__FILE")
    assert env.get("GF_SECURITY_ADMIN_PASSWORD") != "admin"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
def test_compose_router_serves_admin_on_its_own_port_with_a_required_token(files: tuple[Path, ...]) -> None:
    router = resolved(files)["router"]
    command = argv(router)
    admin, listen = flag(command, "--admin-listen"), flag(command, "--listen")
    assert admin and listen and host_port(admin)[1] == ADMIN_PORT != host_port(listen)[1]
    assert "--admin-token" not in command  # never on the command line
    env = router["environment"]
    assert env["EAGLEEYE_ADMIN_TOKEN"] == REQUIRED_ENV["EAGLEEYE_ADMIN_TOKEN"]
    assert ("127.0.0.1", ADMIN_PORT) in _published(router)


@pytest.mark.parametrize("files", COMPOSE_SETUPS, ids=setup_id)
def test_compose_healthchecks_ask_the_plaintext_health_port(files: tuple[Path, ...]) -> None:
    for name in ("detector-primary", "detector-standby", "router"):
        service = resolved(files)[name]
        command = argv(service)
        test = " ".join(service["healthcheck"]["test"])
        assert "grpc_health_probe" in test and "-tls" not in test, (name, test)
        probed = re.search(r"-addr=(\S+)", test)
        health = flag(command, "--health-listen")
        assert probed and health, (name, test, command)
        assert probed.group(1) == health and host_port(health)[0] == "127.0.0.1", (name, probed.group(1), health)
        main_port = host_port(flag(command, "--listen") or "")[1]
        assert host_port(health)[1] == HEALTH_PORTS[main_port] != main_port


@pytest.mark.parametrize("base", COMPOSE_BASES, ids=setup_id)
def test_compose_tls_variant_serves_mtls_with_mounted_certificates(base: tuple[Path, ...]) -> None:
    services = resolved((*base, TLS_OVERRIDE))
    plain = resolved(base)
    for name in ("detector-primary", "detector-standby", "router"):
        command = argv(services[name])
        # The override adds TLS to the base command, which it keeps (GPU or CPU flags alike).
        assert command[:len(argv(plain[name]))] == argv(plain[name]), name
        mounts = {}
        for volume in services[name].get("volumes", []):
            source, target, *mode = volume.split(":") if isinstance(volume, str) else (
                volume["source"], volume["target"], *(["ro"] if volume.get("read_only") else []))
            mounts[target] = (Path(source), mode)
        wanted = ["--tls-cert", "--tls-key", "--tls-client-ca"]
        if name == "router":
            wanted += ["--backend-tls-ca", "--backend-tls-cert", "--backend-tls-key"]
        for f in wanted:
            path = flag(command, f)
            assert path, (name, f)
            source, mode = mounts[str(Path(path).parent)]
            assert mode == ["ro"] and source.parent == COMPOSE_DIR / "certs", (name, f, source, mode)
        assert flag(command, "--tls-cert") != flag(command, "--backend-tls-cert")
    # Certificates never enter git.
    assert "certs/" in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_make_certs_issues_what_the_tls_variant_mounts(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = subprocess.run([str(COMPOSE_DIR / "make-certs.sh"), str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    sources = {Path(str(v).split(":")[0]).name for files in COMPOSE_SETUPS if TLS_OVERRIDE in files
               for s in resolved(files).values() for v in s.get("volumes", []) if "/certs/" in str(v)}
    assert sources == {"detector-primary", "detector-standby", "router", "router-backend"}
    for name in [*sources, "client"]:
        for file in ("tls.crt", "tls.key", "ca.crt"):
            assert (tmp_path / name / file).stat().st_size > 0, (name, file)
    names = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "detector-primary" / "tls.crt"), "-noout",
                            "-ext", "subjectAltName"], capture_output=True, text=True, check=True).stdout
    for dns in ("detector-primary", "eagleeye-detector-primary", "eagleeye-detector-primary.eagleeye.svc"):
        assert f"DNS:{dns}," in names or names.rstrip().endswith(f"DNS:{dns}")
    # Every worker certificate carries the one name the routers check on every worker.
    [checked] = backend_server_names()
    for worker in WORKER_SERVICES:
        names = subprocess.run(["openssl", "x509", "-in", str(tmp_path / worker / "tls.crt"), "-noout", "-ext",
                                "subjectAltName"], capture_output=True, text=True, check=True).stdout
        assert f"DNS:{checked}," in names or names.rstrip().endswith(f"DNS:{checked}"), (worker, names)


def backend_server_names() -> set[str | None]:
    """The name each TLS router (Kubernetes and every compose TLS setup) checks in workers' certificates."""
    [router] = deployments("tls")["eagleeye-router"]["spec"]["template"]["spec"]["containers"]
    names = {flag(router["args"], "--backend-tls-server-name")}
    for files in COMPOSE_SETUPS:
        if TLS_OVERRIDE in files:
            names.add(flag(argv(resolved(files)["router"]), "--backend-tls-server-name"))
    return names


def test_tls_routers_check_one_name_on_every_worker() -> None:
    """A pool's workers are dialled at their addresses, which no certificate names: every TLS router
    checks one fixed name instead, the same in Kubernetes and compose (make-certs.sh issues it)."""
    names = backend_server_names()
    assert len(names) == 1 and None not in names and "" not in names, names


@pytest.mark.parametrize("files", [s for s in COMPOSE_SETUPS if FLEET_OVERRIDE in s], ids=setup_id)
def test_compose_fleet_runs_several_containers_of_each_worker_service(files: tuple[Path, ...]) -> None:
    """`up --scale detector-primary=N` works: nothing in a worker service belongs to one container, the
    router names the services (compose's DNS answers with every container's address) and each
    container reports a worker id of its own (its host name)."""
    fleet = resolved(files)
    pair = resolved(tuple(f for f in files if f != FLEET_OVERRIDE))
    router = argv(fleet["router"])
    for role, name in zip(ROLES, WORKER_SERVICES, strict=True):
        service = fleet[name]
        assert not {"container_name", "hostname", "ports"} & set(service), (name, "one container only")
        command = argv(service)
        assert flag(command, "--worker-id") is None, (name, "the same id in every container")
        # Otherwise the command of the file it overrides: the fleet follows the CPU file, never drifts.
        base = argv(pair[name])
        i = base.index("--worker-id")
        assert command == base[:i] + base[i + 2:], name
        assert host_port(flag(router, f"--{role}") or "")[0] == name, (role, router)
    # A fleet without --scale: more primaries than standbys.
    assert fleet["detector-primary"].get("scale", 1) > fleet["detector-standby"].get("scale", 1) >= 1


def test_compose_prometheus_scrapes_every_container_of_the_worker_services(tmp_path: Path) -> None:
    """The compose Prometheus finds the workers by DNS (a static target would reach one container of a
    scaled service at a time), with the role from the service name; promtool accepts the config."""
    path = ROOT / "observability" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    for files in COMPOSE_SETUPS:
        mounted = [str(v).split(":")[0] for v in resolved(files)["prometheus"]["volumes"]]
        assert str(path) in mounted or any(Path(m).resolve() == path for m in mounted), (files, mounted)
    ports = {host_port(flag(argv(resolved(files)[name]), "--metrics-listen") or "")[1]
             for files in COMPOSE_SETUPS for name in WORKER_SERVICES}
    found = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                assert host_port(target)[0] not in WORKER_SERVICES, (job["job_name"], target)
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A" and {sd["port"]} == ports, sd
            roles = [r for r in job.get("relabel_configs", []) if r.get("target_label") == "role"]
            [rule] = roles
            assert rule.get("replacement", "$1") == "$1", rule
            for name in sd["names"]:
                match = re.fullmatch(rule["regex"], name)  # Prometheus anchors relabel regexes
                found[name] = match.group(1) if match else None
    assert {n: found.get(n) for n in WORKER_SERVICES} == dict(zip(WORKER_SERVICES, ROLES, strict=True))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    alerts = ROOT / "observability" / "prometheus" / "alerts.yml"
    config["rule_files"] = [str(alerts)]  # the file compose mounts where the config names it
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def dockerfile_stages() -> dict[str, str]:
    """compose/Dockerfile's stages by name (`FROM ... AS name`), line continuations joined."""
    text = (ROOT / "compose" / "Dockerfile").read_text().replace("\\\n", " ")
    parts = re.split(r"^(?=FROM )", text, flags=re.M)[1:]
    return {re.match(r"FROM \S+(?: AS (\S+))?", p).group(1) or "": p for p in parts}  # type: ignore[union-attr]


def test_the_dockerfile_copies_every_folder_the_package_is_built_from() -> None:
    import tomllib

    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", (ROOT / "compose" / "Dockerfile").read_text(), re.M))
    assert set(folders) <= copied, f"compose/Dockerfile does not COPY {sorted(set(folders) - copied)}"


@pytest.mark.parametrize("stage", ["router", "detector"])
def test_dockerfile_images_are_non_root_with_a_grpc_healthcheck_on_the_health_port(stage: str) -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "detector", "the worker stays the default (last) target"
    text = stages[stage]
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    healthcheck = re.search(r"^HEALTHCHECK (.+?)$", text, re.M)
    assert healthcheck and "grpc_health_probe" in healthcheck.group(1) and "--start-period=" in healthcheck.group(1)
    assert "-tls" not in healthcheck.group(1) and "${EAGLEEYE_HEALTH_ADDR}" in healthcheck.group(1)
    # The default command serves the plaintext health port the HEALTHCHECK asks.
    default_addr = re.search(r"^ENV .*?EAGLEEYE_HEALTH_ADDR=(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    cmd = yaml.safe_load(re.search(r"^CMD (\[.+?\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert cmd[0] == f"eagleeye-{stage}"
    assert flag(cmd, "--health-listen") == default_addr
    assert host_port(default_addr)[1] == HEALTH_PORTS[host_port(flag(cmd, "--listen") or "")[1]]


def test_the_router_image_is_built_without_torch() -> None:
    stages = dockerfile_stages()
    build = stages["build-router"]
    assert re.search(r"^RUN pip install /src$", build, re.M) and "torch" not in build.lower()
    assert "build-router" in stages["router"] and "build-detector" not in stages["router"]
    for files in COMPOSE_SETUPS:
        router = resolved(files)["router"]
        assert router["build"]["target"] == "router" and router["image"].startswith("eagleeye-router"), files


# ---------------------------------------------------------------------------------------------
# Every command line, parsed by the service's own parser

def command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for variant in VARIANTS:
        for c in containers(variant):
            lines.append((f"kubernetes-{variant}:{c['name']}", c["args"]))
    for files in COMPOSE_SETUPS:
        for name, service in resolved(files).items():
            command = argv(service)
            if command and command[0].startswith("eagleeye-"):
                lines.append((f"{setup_id(files)}:{name}", command))
    for name in ("router", "detector"):
        cmd = re.search(r"^CMD (\[.+?\])$", dockerfile_stages()[name], re.M).group(1)  # type: ignore[union-attr]
        lines.append((f"Dockerfile:{name}", yaml.safe_load(cmd)))
    return lines


def test_every_command_line_parses_with_the_services_flags() -> None:
    from eagleeye.detector.__main__ import build_parser as detector_parser
    from eagleeye.router.__main__ import build_parser as router_parser

    parsers = {"eagleeye-detector": detector_parser, "eagleeye-router": router_parser}
    lines = command_lines()
    assert {line[0] for _, line in lines} == set(parsers)
    for where, line in lines:
        try:
            parsers[line[0]]().parse_args(line[1:])
        except SystemExit:
            pytest.fail(f"{where}: {' '.join(line)} does not parse")


# ---------------------------------------------------------------------------------------------
# Probe names, asked of running services

def probe_names() -> dict[int, set[str]]:
    """Service names every probe asks, by the main port of the service it asks (workers 50051, router 50050)."""
    role = {DETECTOR_PORT: DETECTOR_PORT, ROUTER_PORT: ROUTER_PORT, **{h: m for m, h in HEALTH_PORTS.items()}}
    names: dict[int, set[str]] = {DETECTOR_PORT: set(), ROUTER_PORT: set()}
    for variant in VARIANTS:
        for c in containers(variant):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                grpc_probe = c[probe]["grpc"]
                names[role[grpc_probe["port"]]].add(grpc_probe.get("service", ""))
    for files in COMPOSE_SETUPS:
        for service in resolved(files).values():
            test = " ".join((service.get("healthcheck") or {}).get("test", []))
            if "grpc_health_probe" in test:
                port = int(re.search(r"-addr=[^:]+:(\d+)", test).group(1))  # type: ignore[union-attr]
                names[role[port]].add(re.search(r"-service=(\S*)", test).group(1))  # type: ignore[union-attr]
    stages = dockerfile_stages()
    for name, port in (("detector", DETECTOR_PORT), ("router", ROUTER_PORT)):
        names[port].add(re.search(r"^ENV .*?EAGLEEYE_HEALTH_SERVICE=(\S+)", stages[name], re.M).group(1))  # type: ignore[union-attr]
    return names


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster()
    try:
        c.wait_normal()
        yield c
    finally:
        c.stop()


@pytest.mark.integration
def test_every_probe_asks_a_name_the_services_serve(cluster: LocalCluster) -> None:
    names = probe_names()
    assert names[DETECTOR_PORT] >= {"liveness", "readiness"} and names[ROUTER_PORT] >= {"liveness", "readiness"}
    for address, port in ((cluster.primary_address, DETECTOR_PORT), (cluster.router_address, ROUTER_PORT)):
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for name in sorted(names[port]):
                resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING, (address, name)
