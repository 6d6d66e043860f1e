"""The KafkaConnectors in k8s/ are connectors/*.json, the files the local stack registers: one
source of truth, with only the moves Strimzi requires (k8s/connectors.py says which)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fixtures.k8s import REPO, by_name, of_kind, rendered

sys.path.insert(0, str(REPO / "k8s"))
import connectors as gen  # noqa: E402  (k8s/connectors.py, a tool beside the manifests)

SOURCES = gen.source_files()


def test_every_connector_file_is_generated_and_the_output_is_fresh():
    assert [p.relative_to(REPO).as_posix() for p in SOURCES] == [
        "connectors/cdc-postgres-sink.json", "connectors/production/scylla-cdc-source.json"]
    assert gen.main(["--check"]) == 0, "run .venv/bin/python k8s/connectors.py"


def _expected_config(source: dict[str, str]) -> dict[str, str]:
    expected = {k: v for k, v in source.items() if k not in ("name", "connector.class", "tasks.max")}
    expected.update(gen.PRODUCTION_SETTINGS.get(source["name"], {}))
    return {k: v.replace("${file:.stack/secrets/", "${file:/etc/imgstream/secrets/") for k, v in expected.items()}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_rendered_connector_equals_the_json(path: Path):
    source = json.loads(path.read_text())
    resource = by_name(rendered("prod"), "KafkaConnector", source["name"])
    spec = resource["spec"]
    assert spec["class"] == source["connector.class"]
    assert spec["config"] == _expected_config(source)
    assert not {"name", "connector.class", "tasks.max"} & set(spec["config"])
    assert resource["metadata"]["labels"]["strimzi.io/cluster"] == by_name(rendered("prod"), "KafkaConnect", gen.CONNECT_CLUSTER)["metadata"]["name"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_tasks_max_is_a_field_from_the_json(path: Path):
    source = json.loads(path.read_text())
    generated = gen.connector_resource(source)
    assert generated["spec"]["tasksMax"] == int(source["tasks.max"])
    assert isinstance(generated["spec"]["tasksMax"], int)


def test_production_settings_only_name_existing_keys():
    for name, settings in gen.PRODUCTION_SETTINGS.items():
        (path,) = [p for p in SOURCES if json.loads(p.read_text())["name"] == name]
        assert set(settings) <= set(json.loads(path.read_text()))
    with pytest.raises(ValueError, match="does not have"):
        gen.connector_resource({"name": "cdc-postgres-sink", "connector.class": "x", "tasks.max": "1"})


def test_secrets_stay_references_and_their_files_are_mounted():
    docs = rendered("prod")
    connect = by_name(docs, "KafkaConnect", gen.CONNECT_CLUSTER)["spec"]
    mounts = {m["mountPath"]: m["name"] for m in connect["template"]["connectContainer"]["volumeMounts"]}
    volumes = {v["name"]: v for v in connect["template"]["pod"]["volumes"]}
    secret_name = volumes[mounts[gen.SECRETS_DIR]]["secret"]["secretName"]
    external = by_name(docs, "ExternalSecret", secret_name)["spec"]["target"]["template"]["data"]
    for connector in of_kind(docs, "KafkaConnector"):
        for key, value in connector["spec"]["config"].items():
            if any(word in key for word in ("password", "user", "connection.url")):
                assert value.startswith(("${file:", "${env:")), (connector["metadata"]["name"], key)
            if value.startswith("${file:"):
                file_path, _, _ = value[len("${file:"):].rpartition(":")
                assert file_path.startswith(gen.SECRETS_DIR + "/")
                assert file_path.rsplit("/", 1)[1] in external, value  # the ExternalSecret renders that file
    # The env provider's variables are set on the workers.
    env = {e["name"] for e in connect["template"]["connectContainer"]["env"]}
    assert {"IMGSTREAM_SCYLLA_CONTACT_POINTS", "IMGSTREAM_SCYLLA_LOCAL_DC"} <= env
    assert connect["config"]["config.providers"] == "file,env"
    assert by_name(docs, "KafkaConnect", gen.CONNECT_CLUSTER)["metadata"]["annotations"][
        "strimzi.io/use-connector-resources"] == "true"
