"""The production manifests keep the rules the services rely on (rendered by kustomize, not applied)."""

from __future__ import annotations

import json
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from flink_jobs.config import PipelineConfig
from tests.fixtures.k8s import K8S, OVERLAYS, by_name, of_kind, pod_template, rendered

BASE = K8S / "base"
SERVICES = {"gateway": ("api.gateway", 8080, "IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT"),
            "stats-api": ("api.stats", 8090, "IMGSTREAM_STATS_SHUTDOWN_TIMEOUT")}
#: The folders of k8s/base: one per deployable, plus the shared pieces.
DEPLOYABLES = {"gateway", "stats-api", "flink-pipeline", "kafka-connect", "kafka-topics", "scylla", "batch",
               "observability", "secrets", "common"}


def test_base_has_one_folder_per_deployable_and_lists_them_all():
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    folders = {p.name for p in BASE.iterdir() if p.is_dir()}
    assert set(listed) == folders == DEPLOYABLES


@pytest.mark.parametrize("folder", sorted(DEPLOYABLES))
def test_each_folder_lists_every_manifest(folder):
    kustomization = yaml.safe_load((BASE / folder / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    on_disk = {p.name for p in (BASE / folder).glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_http_service_deployment(overlay, name):
    module, port, shutdown_var = SERVICES[name]
    docs = rendered(overlay)
    pod = pod_template(by_name(docs, "Deployment", name))["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", module]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert pod["automountServiceAccountToken"] is False
    # The drain fits in the grace period: preStop sleep (load balancer deregistration), then the
    # service's own shutdown timeout for in-flight requests, then a margin to flush and exit.
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(env[shutdown_var])
    assert pod["terminationGracePeriodSeconds"] >= drain + 5
    # Both services spread over zones.
    assert any(c["topologyKey"] == "topology.kubernetes.io/zone" for c in pod["topologySpreadConstraints"])


@pytest.mark.parametrize("name", SERVICES)
def test_no_secret_or_host_is_inlined(name):
    container = pod_template(by_name(rendered("prod"), "Deployment", name))["spec"]["containers"][0]
    for var in container["env"]:
        assert not any(word in var["name"] for word in ("SECRET", "PASSWORD", "DSN", "ACCESS_KEY")), var
        assert "127.0.0.1" not in str(var.get("value", ""))
    assert any("secretRef" in source for source in container["envFrom"])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_selectors_match(overlay, name):
    docs = rendered(overlay)
    deployment = by_name(docs, "Deployment", name)
    labels = pod_template(deployment)["metadata"]["labels"]
    assert all(labels[k] == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    assert all(labels[k] == v for k, v in by_name(docs, "Service", name)["spec"]["selector"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_scaling_guard_rails(overlay, name):
    spec = by_name(rendered(overlay), "ScaledObject", name)["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        # KEDA's fallback only applies to AverageValue triggers; a missing series must be an error
        # (so the fallback count holds), not a zero that scales the service down.
        assert trigger["metricType"] == "AverageValue"
        assert trigger["metadata"]["ignoreNullValues"] == "false"
    if overlay == "prod":
        assert spec["minReplicaCount"] >= 2  # one pod down never means no pod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_are_replicated(overlay):
    topics = of_kind(rendered(overlay), "KafkaTopic")
    names = {t["spec"]["topicName"] for t in topics}
    assert {"images.uploaded", "images.dlq", "cdc.dlq", "cdc.imgstream.images", "cdc.imgstream.upload_stats"} <= names
    for topic in topics:
        assert topic["spec"]["replicas"] == 3, topic["metadata"]["name"]
        assert int(topic["spec"]["config"]["min.insync.replicas"]) == 2, topic["metadata"]["name"]


def test_flink_autoscaler_is_bounded_by_the_source_partitions():
    docs = rendered("prod")
    flink = by_name(docs, "FlinkDeployment", "imgstream-pipeline")["spec"]
    conf = flink["flinkConfiguration"]
    partitions = by_name(docs, "KafkaTopic", "images-uploaded")["spec"]["partitions"]
    assert conf["job.autoscaler.enabled"] == "true"
    assert int(conf["job.autoscaler.vertex.max-parallelism"]) == partitions
    assert int(conf["pipeline.max-parallelism"]) % partitions == 0
    assert flink["job"]["upgradeMode"] in ("savepoint", "last-state")
    assert conf["high-availability.type"] == "kubernetes"
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert conf[key].startswith("s3://"), key
    job = flink["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"].startswith("local:///opt/flink/opt/flink-python-")
    assert job["args"][job["args"].index("-pym") + 1] == "flink_jobs.pipeline"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pipeline_program_is_told_the_jobs_parallelism(overlay):
    """The program sets its parallelism over the cluster's default (the stack's ran at 1 while
    it was meant to run at 2): the pods' IMGSTREAM_FLINK_PARALLELISM must be job.parallelism."""
    flink = by_name(rendered(overlay), "FlinkDeployment", "imgstream-pipeline")["spec"]
    env = {e["name"]: e.get("value") for e in flink["podTemplate"]["spec"]["containers"][0]["env"]}
    assert env["IMGSTREAM_FLINK_PARALLELISM"] == str(flink["job"]["parallelism"])
    assert PipelineConfig.from_env(env).parallelism == flink["job"]["parallelism"]


EMR = BASE / "batch" / "emr"


def _emr_model():
    return botocore.session.get_session().get_service_model("emr-serverless")


def test_emr_application_is_a_valid_create_application_request():
    request = dict(json.loads((EMR / "application.json").read_text()), clientToken="t")
    report = ParamValidator().validate(request, _emr_model().operation_model("CreateApplication").input_shape)
    assert not report.has_errors(), report.generate_report()
    assert request["releaseLabel"] == "emr-spark-8.0.0"  # Spark 4.0.2: the newest EMR release known to ship Spark 4
    # Per-environment endpoints live on the application; secrets never (S3 comes from the job role).
    (defaults,) = [c for c in request["runtimeConfiguration"] if c["classification"] == "spark-defaults"]
    for key, value in defaults["properties"].items():
        if any(word in key for word in ("SECRET", "PASSWORD", "DSN", "ACCESS_KEY", "TOKEN")):
            assert value == "", key
    assert "spark.emr-serverless.driverEnv.IMGSTREAM_KAFKA_BOOTSTRAP" in defaults["properties"]


@pytest.mark.parametrize("path", sorted(EMR.glob("*.json")), ids=lambda p: p.stem)
def test_emr_jobs_are_valid_start_job_run_requests(path: Path):
    if path.stem == "application":
        return
    request = json.loads(path.read_text())
    # What the CronJob adds on the command line.
    request.update(applicationId="00000000000000000", executionRoleArn="arn:aws:iam::000000000000:role/x",
                   clientToken="batch-derivatives-1")
    report = ParamValidator().validate(request, _emr_model().operation_model("StartJobRun").input_shape)
    assert not report.has_errors(), report.generate_report()
    submit = request["jobDriver"]["sparkSubmit"]
    assert submit["entryPointArguments"][0] == path.stem
    assert "spark.archives=" in submit["sparkSubmitParameters"]  # the packed virtualenv
    assert submit["entryPoint"].endswith("/main.py")  # batch/main.py, as `imgstream batch submit --emr` sends it
    # EMR 8.0.0 runs Spark 4.0.2: the Kafka source jar must be that version, not the local 4.1.1.
    assert "spark-sql-kafka-0-10_2.13-4.0.2.jar" in submit["sparkSubmitParameters"]
    assert request["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"]["logUri"].startswith("s3://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_emr_job_has_a_cronjob_that_submits_it(overlay):
    docs = rendered(overlay)
    (jobs_cm,) = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("batch-emr-jobs")]
    files = set(jobs_cm["data"])
    submitted = set()
    for cron in of_kind(docs, "CronJob"):
        pod = pod_template(cron)["spec"]
        (container,) = pod["containers"]
        path = container["args"][container["args"].index("--cli-input-json") + 1]
        submitted.add(path.rsplit("/", 1)[1])
        assert "--client-token" in container["args"]  # idempotent: a retried pod starts no second run
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["emr-jobs"]["configMap"]["name"] == jobs_cm["metadata"]["name"]
    assert submitted == files == {f"{p.stem}.json" for p in EMR.glob("*.json") if p.stem != "application"}
