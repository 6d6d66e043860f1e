"""bench/capacity.py's plan and the production manifests agree: the numbers in k8s/ are the ones
the capacity model derives from the measured per-core figures (change one, the other must follow)."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.k8s import REPO, by_name, rendered

sys.path.insert(0, str(REPO / "bench"))
import capacity  # noqa: E402  (bench/capacity.py)

DESIGN = capacity.plan()  # 1,000 uploads/s, 10 % ~5 MB, 200 stats requests/s


def _trigger(docs, scaler: str, name: str) -> float:
    (trigger,) = [t for t in by_name(docs, "ScaledObject", scaler)["spec"]["triggers"] if t["name"] == name]
    return float(trigger["metadata"]["threshold"])


def test_design_load_plan():
    assert DESIGN.partitions == 12
    assert DESIGN.gateway_pods >= 3 and DESIGN.stats_pods >= 2
    assert DESIGN.parallelism >= 1
    assert DESIGN.tm_slots == 2 * DESIGN.parallelism  # clean + writer, and decide's slot group
    assert DESIGN.monthly_total == sum(DESIGN.monthly_usd.values())


def test_more_load_never_needs_less():
    low, high = capacity.plan(500), capacity.plan(2000)
    for field in ("gateway_pods", "parallelism", "sink_tasks", "tm_slots", "ingest_mb_per_s"):
        assert getattr(high, field) >= getattr(low, field), field
    assert high.monthly_total > low.monthly_total
    assert capacity.plan(large_share=1.0).gateway_pods > capacity.plan(large_share=0.0).gateway_pods


def test_keda_targets_are_the_models():
    docs = rendered("prod")
    assert _trigger(docs, "gateway", "uploads-in-flight") == DESIGN.gateway_in_flight_target
    assert _trigger(docs, "gateway", "upload-bytes-per-second") == pytest.approx(DESIGN.gateway_bytes_target, rel=0.02)
    assert _trigger(docs, "stats-api", "requests-per-second") == DESIGN.stats_rps_target


def test_prod_bounds_carry_the_design_load():
    docs = rendered("prod")
    gateway = by_name(docs, "ScaledObject", "gateway")["spec"]
    assert gateway["fallback"]["replicas"] >= DESIGN.gateway_pods  # blind, it still carries 1,000 uploads/s
    assert gateway["maxReplicaCount"] >= capacity.plan(large_share=1.0).gateway_pods
    stats = by_name(docs, "ScaledObject", "stats-api")["spec"]
    assert stats["fallback"]["replicas"] >= DESIGN.stats_pods
    assert by_name(docs, "KafkaTopic", "images-uploaded")["spec"]["partitions"] == DESIGN.partitions
    flink = by_name(docs, "FlinkDeployment", "imgstream-pipeline")["spec"]
    assert int(flink["flinkConfiguration"]["taskmanager.numberOfTaskSlots"]) == capacity.TM_SLOTS
    assert flink["taskManager"]["resource"]["cpu"] == capacity.TM_CORES
    assert flink["job"]["parallelism"] == DESIGN.parallelism  # the start; the autoscaler moves it by load
    assert by_name(docs, "KafkaConnect", "imgstream-connect")["spec"]["replicas"] >= DESIGN.connect_workers
    assert by_name(docs, "KafkaConnector", "cdc-postgres-sink")["spec"]["tasksMax"] >= DESIGN.sink_tasks
    racks = by_name(docs, "ScyllaCluster", "imgstream-scylla")["spec"]["datacenter"]["racks"]
    assert sum(r["members"] for r in racks) >= DESIGN.scylla_nodes
    gateway_pod = by_name(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway_pod["resources"]["requests"]["cpu"] == str(capacity.GATEWAY_POD_CORES)


def test_the_dedup_index_is_sized_by_its_retention_and_counted_in_the_bill():
    from imgstream.domain.dedup import DEFAULT_EXACT_TTL_MS, DEFAULT_NEAR_TTL_MS, DedupPolicy
    from imgstream.domain.sharding import DEFAULT_NEAR_SPLIT_BITS, ShardPlan

    assert capacity.INDEX_RETENTION_S * 1000 == DEFAULT_NEAR_TTL_MS == DEFAULT_EXACT_TTL_MS
    assert capacity.NEAR_SHARDS == ShardPlan.for_policy(DedupPolicy(), near_split_bits=DEFAULT_NEAR_SPLIT_BITS).near_shards
    low, high = capacity.plan(100), capacity.plan(1000)
    assert high.index_events == 10 * low.index_events == 1000 * capacity.INDEX_RETENTION_S
    assert high.index_state_gb == round(high.index_events * capacity.MEASURED["index_state_bytes"][0] / 1e9)
    assert 9 * low.taskmanagers_for_index < high.taskmanagers_for_index <= 10 * low.taskmanagers_for_index
    # the bill prices the larger of the CPU's and the index's TaskManagers
    vcpu = next(k for k in high.monthly_usd if k.startswith("EKS workers"))
    assert int(vcpu.split("(")[1].split()[0]) >= high.taskmanagers_for_index * capacity.TM_CORES
    report = capacity.report(high)
    assert "does NOT fit" in report  # a near shard's part at 1,000 uploads/s: the report says so
