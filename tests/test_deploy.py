"""Deployment files, validated as strongly as a machine without Docker or Kubernetes allows.

Kubernetes manifests: strict schema validation for a current Kubernetes. Compose files: the real
docker-compose parser. Every health probe's service name: asked of a running worker and router with
the standard health client.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.processes import LocalCluster

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = [ROOT / "compose" / "docker-compose.yml", ROOT / "compose" / "docker-compose.cpu.yml"]
KUBERNETES_VERSION = "1.33.0"
DETECTOR_PORT, ROUTER_PORT = 50051, 50050


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


@pytest.mark.parametrize(("path", "doc"), manifests(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_manifest_is_valid_for_kubernetes_in_strict_mode(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def containers() -> list[dict[str, Any]]:
    return [c for _, doc in manifests() if doc["kind"] == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]]


def test_detectors_have_a_gpu_each_never_share_a_node_and_probe_the_right_names() -> None:
    deployments = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Deployment"}
    for role in ("primary", "standby"):
        spec = deployments[f"eagleeye-detector-{role}"]["spec"]["template"]["spec"]
        [c] = spec["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "eagleeye-detector"}
        assert c["livenessProbe"]["grpc"]["service"] == "liveness"
        assert c["readinessProbe"]["grpc"]["service"] == "readiness"
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    router = deployments["eagleeye-router"]
    assert router["spec"]["replicas"] >= 2
    assert any(doc["kind"] == "PodDisruptionBudget" for _, doc in manifests())


def probe_names() -> dict[int, set[str]]:
    """Service names every probe asks, by the port it asks (workers 50051, router 50050)."""
    names: dict[int, set[str]] = {DETECTOR_PORT: set(), ROUTER_PORT: set()}
    for c in containers():
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            grpc_probe = c[probe]["grpc"]
            names[grpc_probe["port"]].add(grpc_probe.get("service", ""))
    for path in COMPOSE:
        for service in yaml.safe_load(path.read_text())["services"].values():
            test = " ".join((service.get("healthcheck") or {}).get("test", []))
            if "grpc_health_probe" in test:
                port = int(re.search(r"-addr=[^:]+:(\d+)", test).group(1))  # type: ignore[union-attr]
                names[port].add(re.search(r"-service=(\S*)", test).group(1))  # type: ignore[union-attr]
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    names[DETECTOR_PORT].add(re.search(r"EAGLEEYE_HEALTH_SERVICE=(\S+)", dockerfile).group(1))  # type: ignore[union-attr]
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


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_file_is_valid(path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing: `make test` installs it (Debian package docker-compose)")
    # No engine is needed to parse and validate; point at none so nothing is contacted.
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    out = subprocess.run([tool, "-f", str(path), "config", "-q"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load(path.read_text())["services"]
    for worker in ("detector-primary", "detector-standby"):
        assert spec["router"]["depends_on"][worker]["condition"] == "service_healthy"
    if path.name == "docker-compose.yml":
        gpus = [spec[w]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
                for w in ("detector-primary", "detector-standby")]
        assert gpus == [["0"], ["1"]]


def test_dockerfile_is_multi_stage_non_root_with_a_grpc_healthcheck() -> None:
    text = (ROOT / "compose" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    healthcheck = re.search(r"^HEALTHCHECK (.+?)(?=^\S)", text, re.M | re.S)
    assert healthcheck and "grpc_health_probe" in healthcheck.group(1) and "--start-period=" in healthcheck.group(1)
