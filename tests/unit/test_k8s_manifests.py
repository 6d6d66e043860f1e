"""The Kubernetes manifests keep the rules the services rely on (parsed, not applied)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

BASE = Path(__file__).resolve().parents[2] / "k8s" / "base"
SERVICES = {"gateway": ("api.gateway", 8080), "stats-api": ("api.stats", 8090)}


def _docs(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((BASE / f"{name}.yaml").read_text())}


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_probes_resources_and_security(name):
    module, port = SERVICES[name]
    docs = _docs(name)
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", module]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


@pytest.mark.parametrize("name", SERVICES)
def test_no_secret_or_host_is_inlined(name):
    container = _docs(name)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        assert not any(word in var["name"] for word in ("SECRET", "PASSWORD", "DSN", "ACCESS_KEY")), var
        assert "127.0.0.1" not in str(var.get("value", ""))
    assert {"secretRef": {"name": "imgstream-secrets"}} in container["envFrom"]


@pytest.mark.parametrize("name", SERVICES)
def test_selectors_match_and_scaling_keeps_two(name):
    docs = _docs(name)
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert docs["Service"]["spec"]["selector"] == labels
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == name
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
