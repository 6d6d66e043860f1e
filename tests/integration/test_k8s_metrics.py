"""Every metric the production manifests query (KEDA triggers, PrometheusRules, Grafana
dashboards) really exists: the running gateway's and stats API's /metrics, the running Flink job's
metrics (REST, mapped to the Prometheus reporter's names), or a stock exporter's documented names.

A renamed metric in api/ or a typo in k8s/ fails here, instead of an autoscaler or an alert that
silently reads nothing in production.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from imgstream.polling import until_sync
from tests.fixtures.k8s import OVERLAYS, metric_names, promql_expressions, rendered

GATEWAY = "http://127.0.0.1:8080"
STATS = "http://127.0.0.1:8090"
PIPELINE_JOB = "imgstream-pipeline"

#: kafka-exporter (github.com/danielqsj/kafka_exporter, image danielqsj/kafka-exporter:v1.9.0 in
#: k8s/base/observability): the names its collector builds (kafka_exporter.go, namespace "kafka").
#: No exporter runs on the local stack, so these are listed, not scraped.
KAFKA_EXPORTER = frozenset({
    "kafka_brokers",
    "kafka_topic_partitions",
    "kafka_topic_partition_current_offset",
    "kafka_topic_partition_oldest_offset",
    "kafka_topic_partition_in_sync_replica",
    "kafka_topic_partition_leader",
    "kafka_topic_partition_leader_is_preferred",
    "kafka_topic_partition_replicas",
    "kafka_topic_partition_under_replicated_partition",
    "kafka_consumergroup_current_offset",
    "kafka_consumergroup_current_offset_sum",
    "kafka_consumergroup_lag",
    "kafka_consumergroup_lag_sum",
    "kafka_consumergroup_members",
})
#: Flink's Prometheus reporter names a metric <logical scope>_<name> with every character outside
#: [a-zA-Z0-9:_] replaced by "_" (PrometheusReporter); these are the scopes the manifests use,
#: each checked against what the running job reports through the REST API.
FLINK_SCOPES = ("flink_jobmanager_job_", "flink_taskmanager_job_task_operator_", "flink_taskmanager_job_task_")


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return resp.read().decode()


def _get(url: str) -> Any:
    return json.loads(_text(url))


def exposed_names(text: str) -> set[str]:
    """Sample names of a Prometheus text exposition, plus the series each declared family yields
    even before its first sample (a labelled histogram with no observation yet still declares
    its _bucket/_sum/_count)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.add(family)
            if kind in ("histogram", "summary"):
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def _prometheus_name(metric: str) -> str:
    return re.sub(r"[^a-zA-Z0-9:_]", "_", metric)


#: How long to wait for a pipeline job whose tasks all run (other tests restart TaskManagers and
#: submit jobs of their own; a job between restarts reports no task metrics).
FLINK_DEADLINE_S = 240


def _running_pipeline(rest: str) -> tuple[str, list[dict[str, Any]]] | None:
    """A pipeline job (``imgstream-pipeline`` first, else any job built by flink_jobs.pipeline)
    whose tasks all run and report metrics: its id and vertices."""
    jobs = [j for j in _get(f"{rest}/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
    jobs.sort(key=lambda j: j["name"] != PIPELINE_JOB)
    for job in jobs:
        vertices = _get(f"{rest}/jobs/{job['jid']}")["vertices"]
        if not any(v["name"].startswith("Source: raw_uploads") for v in vertices):
            continue
        if all(v["status"] == "RUNNING" for v in vertices) and _get(
                f"{rest}/jobs/{job['jid']}/vertices/{vertices[0]['id']}/metrics"):
            return job["jid"], vertices
    return None


@pytest.fixture(scope="module")
def flink_names(stack_config) -> set[str]:
    """The running pipeline job's metrics under the Prometheus reporter's names."""
    rest = stack_config.flink_rest
    found = until_sync(lambda: _running_pipeline(rest),
                       f"a pipeline job with all tasks RUNNING on {rest} (`make up` submits it)",
                       timeout=FLINK_DEADLINE_S, interval=2.0)
    jid, vertices = found
    names = {f"flink_jobmanager_job_{_prometheus_name(m['id'])}" for m in _get(f"{rest}/jobs/{jid}/metrics")}
    for vertex in vertices:
        for metric in _get(f"{rest}/jobs/{jid}/vertices/{vertex['id']}/metrics"):
            _subtask, _, rest_id = metric["id"].partition(".")
            if "." in rest_id:  # <operator>.<metric...>: an operator metric (operator names hold no dots)
                names.add(f"flink_taskmanager_job_task_operator_{_prometheus_name(rest_id.split('.', 1)[1])}")
            else:
                names.add(f"flink_taskmanager_job_task_{_prometheus_name(rest_id)}")
    names |= {f"flink_jobmanager_{_prometheus_name(m['id'])}" for m in _get(f"{rest}/jobmanager/metrics")}
    names |= {f"flink_taskmanager_{_prometheus_name(m['id'])}" for m in _get(f"{rest}/taskmanagers/metrics")}
    return names


@pytest.fixture(scope="module")
def known_names(flink_names: set[str]) -> dict[str, set[str]]:
    return {
        "gateway /metrics": exposed_names(_text(f"{GATEWAY}/metrics")),
        "stats API /metrics": exposed_names(_text(f"{STATS}/metrics")),
        "Flink REST (reporter names)": flink_names,
        "kafka-exporter (listed)": set(KAFKA_EXPORTER),
    }


def test_the_services_expose_what_autoscaling_needs(known_names):
    assert "imgstream_gateway_requests_in_flight" in known_names["gateway /metrics"]
    assert "imgstream_gateway_received_bytes_total" in known_names["gateway /metrics"]
    assert "imgstream_stats_requests_total" in known_names["stats API /metrics"]
    assert "flink_jobmanager_job_numberOfFailedCheckpoints" in known_names["Flink REST (reporter names)"]


def test_the_parser_finds_metric_names_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{route!~"/a|/b", job="g"}[5m]))) > 0.5 '
            'and on (job) delta(sum(y_total offset 1h)[10m:1m]) > 0 or vector(0)')
    assert metric_names(expr) == {"x_bucket", "y_total"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_queried_metric_exists(overlay, known_names):
    every = set().union(*known_names.values())
    unknown: dict[str, set[str]] = {}
    queried = 0
    for where, expr in promql_expressions(rendered(overlay)):
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        queried += 1
        missing = names - every
        if missing:
            unknown[where] = missing
    assert queried >= 20, "the manifests lost their triggers, rules or dashboards"
    assert not unknown, f"metrics nobody exposes: {unknown}"


def test_an_unknown_name_is_caught(known_names):
    every = set().union(*known_names.values())
    assert metric_names("sum(rate(imgstream_gateway_uploads_total[1m]))") - every == {"imgstream_gateway_uploads_total"}
