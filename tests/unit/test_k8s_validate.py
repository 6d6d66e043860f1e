"""Offline validation of k8s/ (make k8s-validate): both overlays render, and kubeconform v0.8.0 in
strict mode finds zero invalid resources and zero without a schema, against Kubernetes 1.33's
core schemas (PyPI kubernetes-validate) and the CRD schemas in k8s/schemas/.

Needs kubeconform in .stack/bin (`make deps` installs it); a missing tool fails, never skips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.k8s import OVERLAYS, REPO

sys.path.insert(0, str(REPO / "k8s"))
import validate  # noqa: E402  (k8s/validate.py)

#: Every kind the production set must contain (a lost folder would still "validate").
EXPECTED_KINDS = {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "NetworkPolicy", "ScaledObject",
                  "ServiceMonitor", "PodMonitor", "PrometheusRule", "FlinkDeployment", "KafkaConnect",
                  "KafkaConnector", "KafkaTopic", "ScyllaCluster", "ExternalSecret", "SecretStore", "CronJob",
                  "ConfigMap", "Namespace"}


@pytest.fixture(scope="module")
def summaries() -> dict[str, dict]:
    done = subprocess.run([sys.executable, str(REPO / "k8s" / "validate.py"), "--json"],
                          capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    return {s["overlay"]: s for s in lines}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_with_no_missing_schema(summaries, overlay):
    summary = summaries[overlay]
    assert summary["problems"] == []
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0
    assert summary["valid"] == summary["resources"] == sum(summary["kinds"].values())
    assert EXPECTED_KINDS <= set(summary["kinds"])


def _check(manifest: str) -> validate.Summary:
    return validate.kubeconform(manifest, validate.core_schema_dir())


def test_strict_mode_refuses_an_unknown_field():
    bad = ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
           "spec: {selector: {app: x}, ports: [{port: 80}], sessionAffinityy: None}\n")
    summary = _check(bad)
    assert summary.invalid == 1 and "sessionAffinityy" in " ".join(summary.problems)


def test_a_custom_resource_is_checked_against_its_crd_schema():
    bad = ("apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\n"
           "spec: {scaleTargetRef: {name: x}, triggers: [], minReplicas: 2}\n")
    assert _check(bad).invalid == 1


def test_a_kind_without_a_schema_is_an_error_not_a_pass():
    unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\nspec: {}\n"
    summary = _check(unknown)
    assert summary.errors == 1 and not summary.ok
