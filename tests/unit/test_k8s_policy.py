"""Policies over the rendered production YAML (both overlays), for every workload, not only the
ones written today:

- every container has CPU and memory requests and limits, probes, and the restricted security
  context (non-root, read-only root filesystem, no privilege escalation, all capabilities
  dropped, seccomp RuntimeDefault); pods do not mount an API token they do not use;
- no image is unpinned (`latest` or no tag);
- every workload has a PodDisruptionBudget and is selected by a NetworkPolicy of its own;
- every autoscaler targets a workload that exists and scales on a non-resource metric.

Operator-managed workloads (FlinkDeployment, KafkaConnect, ScyllaCluster) are checked where
their resources put the same settings; the exceptions are named below with their reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.k8s import (OPERATOR_WORKLOADS, OVERLAYS, native_workloads, of_kind, operator_pod_labels,
                                pod_template, rendered, selects)

#: Run-to-completion pods (CronJob -> Job) have no probes: a liveness probe cannot tell "still
#: submitting" from "hung" better than the Job's activeDeadlineSeconds, which bounds them instead.
NO_PROBES = ("CronJob", "Job")
#: Pods whose eviction needs no budget: a CronJob's pod is retried by its Job (backoffLimit).
NO_PDB = ("CronJob", "Job")
#: The Scylla Operator writes a PodDisruptionBudget for every ScyllaCluster itself (one node at a
#: time), and a second budget on the same pods would make evictions fail; its pods' security
#: context is the operator's (it needs the "baseline" profile, see common/namespace.yaml).
OPERATOR_MANAGED_PDB = ("ScyllaCluster",)
#: Flink native Kubernetes: the JobManager creates TaskManager pods and HA ConfigMaps through the
#: API, so its pods keep their service account token (RBAC in flink-pipeline/rbac.yaml).
NEEDS_API_TOKEN = ("FlinkDeployment",)


def _all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def _restricted(container_sc: dict[str, Any], pod_sc: dict[str, Any]) -> list[str]:
    problems = []
    if not (container_sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        problems.append("runAsNonRoot")
    if container_sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem")
    if container_sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation false")
    if "ALL" not in (container_sc.get("capabilities") or {}).get("drop", []):
        problems.append("capabilities.drop [ALL]")
    seccomp = (container_sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append("seccompProfile RuntimeDefault")
    return problems


def _resources_complete(resources: dict[str, Any]) -> bool:
    return all(k in (resources.get(part) or {}) for part in ("requests", "limits") for k in ("cpu", "memory"))


def _workload_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_native_containers_have_resources_probes_and_security_context(overlay):
    problems: dict[str, list[str]] = {}
    workloads = native_workloads(rendered(overlay))
    assert {w["kind"] for w in workloads} >= {"Deployment", "CronJob"}
    for workload in workloads:
        spec = pod_template(workload)["spec"]
        pod_sc = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.setdefault(_workload_id(workload), []).append("automountServiceAccountToken false")
        for container in _all_containers(spec):
            where = f"{_workload_id(workload)}/{container['name']}"
            found = []
            if not _resources_complete(container.get("resources") or {}):
                found.append("cpu+memory requests and limits")
            if workload["kind"] not in NO_PROBES:
                found += [p for p in ("readinessProbe", "livenessProbe") if p not in container]
            found += _restricted(container.get("securityContext") or {}, pod_sc)
            if found:
                problems[where] = found
    assert not problems, problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_flink_pods_are_sized_probed_and_restricted(overlay):
    (flink,) = of_kind(rendered(overlay), "FlinkDeployment")
    spec = flink["spec"]
    for role in ("jobManager", "taskManager"):
        resource = spec[role]["resource"]
        assert resource["cpu"] > 0 and resource["memory"], role  # the operator sets requests = limits from it
        (main,) = spec[role]["podTemplate"]["spec"]["containers"]
        assert main["name"] == "flink-main-container"
        assert {"readinessProbe", "livenessProbe"} <= set(main), role
    template = spec["podTemplate"]["spec"]
    (main,) = template["containers"]
    assert main["name"] == "flink-main-container"
    assert _restricted(main["securityContext"], template["securityContext"]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connect_pods_are_sized_probed_and_restricted(overlay):
    (connect,) = of_kind(rendered(overlay), "KafkaConnect")
    spec = connect["spec"]
    assert _resources_complete(spec["resources"])
    assert {"livenessProbe", "readinessProbe"} <= set(spec)
    template = spec["template"]
    assert _restricted(template["connectContainer"]["securityContext"], template["pod"]["securityContext"]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scylla_nodes_are_sized(overlay):
    (scylla,) = of_kind(rendered(overlay), "ScyllaCluster")
    for rack in scylla["spec"]["datacenter"]["racks"]:
        assert _resources_complete(rack["resources"]), rack["name"]
        # Guaranteed QoS: Scylla pins a shard per core and wants all of its memory.
        assert rack["resources"]["requests"] == rack["resources"]["limits"], rack["name"]


def _images(docs) -> list[tuple[str, str]]:
    found = []
    for workload in native_workloads(docs):
        for container in _all_containers(pod_template(workload)["spec"]):
            found.append((_workload_id(workload), container["image"]))
    for doc in docs:
        if doc["kind"] in ("FlinkDeployment", "KafkaConnect"):
            found.append((_workload_id(doc), doc["spec"]["image"]))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_image_is_unpinned(overlay):
    images = _images(rendered(overlay))
    assert len(images) >= 7
    for where, image in images:
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert name and "/" not in tag, f"{where}: {image} has no tag"
        assert tag not in ("latest", ""), f"{where}: {image}"


def _pdb_covers(pdbs, labels) -> bool:
    return any(selects(p["spec"]["selector"], labels) for p in pdbs)


def _policy_covers(policies, labels) -> bool:
    # The namespace-wide baseline (default-deny, DNS) selects every pod; "targeted" means a policy
    # that names this workload's pods.
    return any(p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels) for p in policies)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_disruption_budget_and_a_network_policy(overlay):
    docs = rendered(overlay)
    pdbs, policies = of_kind(docs, "PodDisruptionBudget"), of_kind(docs, "NetworkPolicy")
    assert any(not p["spec"]["podSelector"] and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               for p in policies), "the namespace's default-deny policy is missing"
    missing: list[str] = []
    for workload in native_workloads(docs):
        labels = pod_template(workload)["metadata"]["labels"]
        if workload["kind"] not in NO_PDB and not _pdb_covers(pdbs, labels):
            missing.append(f"{_workload_id(workload)}: PodDisruptionBudget")
        if not _policy_covers(policies, labels):
            missing.append(f"{_workload_id(workload)}: NetworkPolicy")
    operator_workloads = [d for d in docs if d["kind"] in OPERATOR_WORKLOADS]
    assert {d["kind"] for d in operator_workloads} == set(OPERATOR_WORKLOADS)
    for workload in operator_workloads:
        for labels in operator_pod_labels(workload):
            budget = _pdb_covers(pdbs, labels) or (
                workload["kind"] == "KafkaConnect" and "podDisruptionBudget" in workload["spec"]["template"])
            if not budget and workload["kind"] not in OPERATOR_MANAGED_PDB:
                missing.append(f"{_workload_id(workload)} {labels}: PodDisruptionBudget")
            if not _policy_covers(policies, labels):
                missing.append(f"{_workload_id(workload)} {labels}: NetworkPolicy")
    assert not missing, missing


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_target_existing_workloads_on_application_metrics(overlay):
    docs = rendered(overlay)
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs}
    scalers = of_kind(docs, "ScaledObject") + of_kind(docs, "HorizontalPodAutoscaler")
    assert len(scalers) >= 2
    for scaler in scalers:
        target = scaler["spec"]["scaleTargetRef"]
        assert (target.get("kind", "Deployment"), target["name"]) in workloads, scaler["metadata"]["name"]
        if scaler["kind"] == "ScaledObject":
            kinds = {t["type"] for t in scaler["spec"]["triggers"]}
            assert kinds and not kinds & {"cpu", "memory"}, scaler["metadata"]["name"]
        else:
            assert all(m["type"] != "Resource" for m in scaler["spec"]["metrics"]), scaler["metadata"]["name"]


def test_the_policies_catch_what_they_claim():
    """A deployment stripped of its guards fails each check (the tests above can fail)."""
    pod_sc: dict[str, Any] = {}
    assert set(_restricted({}, pod_sc)) == {"runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation false",
                                            "capabilities.drop [ALL]", "seccompProfile RuntimeDefault"}
    assert not _resources_complete({"requests": {"cpu": "1", "memory": "1Gi"}})
    assert not _pdb_covers([{"spec": {"selector": {"matchLabels": {"app": "other"}}}}], {"app": "gateway"})
    assert not _policy_covers([{"spec": {"podSelector": {}}}], {"app": "gateway"})
