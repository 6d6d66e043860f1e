"""Every connector config in connectors/ parses and follows the rules; the CDC wiring is consistent."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from imgstream.ops.cdc import DLQ_TOPIC, JDBC_SINK_CLASS, SCYLLA_SOURCE_CLASS, TABLES, TOPIC_PREFIX, cdc_topic, config_problems

REPO = Path(__file__).resolve().parents[2]
CONNECTORS = REPO / "connectors"
ALL_CONFIGS = sorted(CONNECTORS.rglob("*.json"))
SMT_SERVICES = (REPO / "local-stack/jvm/connect-plugins/src/main/resources/META-INF/services"
                / "org.apache.kafka.connect.transforms.Transformation")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_is_a_local_sink_and_a_production_source():
    kinds = {_load(p)["connector.class"]: p.relative_to(CONNECTORS).as_posix() for p in ALL_CONFIGS}
    assert kinds[JDBC_SINK_CLASS] == "cdc-postgres-sink.json"
    assert kinds[SCYLLA_SOURCE_CLASS] == "production/scylla-cdc-source.json"


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.relative_to(CONNECTORS).as_posix())
def test_config_follows_the_rules(path):
    assert config_problems(path.stem, _load(path)) == []


def test_the_rules_catch_literal_hosts_and_secrets():
    sink = _load(CONNECTORS / "cdc-postgres-sink.json")
    bad = dict(sink, **{"connection.url": "jdbc:postgresql://127.0.0.1:5432/imgstream",
                        "connection.password": "hunter2"})
    problems = " ".join(config_problems("cdc-postgres-sink", bad))
    assert "connection.url" in problems and "connection.password" in problems
    assert config_problems("cdc-postgres-sink", dict(sink, **{"some.note": "see db.example.com:5432"}))
    assert config_problems("cdc-postgres-sink", dict(sink, **{"delete.enabled": "false"}))
    assert config_problems("cdc-postgres-sink", dict(sink, **{"tasks.max": 1}))  # REST bodies are strings
    assert config_problems("other-name", sink)  # name must match the file


def test_sink_reads_every_replicated_table_topic_and_routes_rows_to_their_tables():
    sink = _load(CONNECTORS / "cdc-postgres-sink.json")
    topics = re.compile(sink["topics.regex"])
    for table in TABLES:
        assert topics.fullmatch(cdc_topic(table))
        router = re.compile(sink["transforms.table.regex"])
        assert router.fullmatch(cdc_topic(table)).expand(sink["transforms.table.replacement"].replace("$", "\\")) == table
    assert not topics.fullmatch(DLQ_TOPIC)  # the sink never re-reads its own dead letters
    assert sink["errors.deadletterqueue.topic.name"] == DLQ_TOPIC


def test_sink_transforms_are_shipped():
    sink = _load(CONNECTORS / "cdc-postgres-sink.json")
    ours = {line.strip() for line in SMT_SERVICES.read_text().splitlines() if line.strip()}
    for alias in sink["transforms"].split(","):
        cls = sink[f"transforms.{alias}.type"]
        assert cls.startswith("org.apache.kafka.connect.transforms.") or cls in ours, cls
        if cls in ours:
            java = REPO / "local-stack/jvm/connect-plugins/src/main/java" / (cls.replace(".", "/") + ".java")
            assert java.exists()


def test_production_source_produces_the_same_topics_and_row_shape():
    source = _load(CONNECTORS / "production" / "scylla-cdc-source.json")
    sink = _load(CONNECTORS / "cdc-postgres-sink.json")
    assert source["topic.prefix"] == TOPIC_PREFIX
    tables = source["scylla.table.names"].split(",")
    assert sorted(tables) == sorted(f"imgstream.{t}" for t in TABLES)
    # flat rows with the same metadata columns the local sink SMT adds
    added = dict(pair.split(":") for pair in source["transforms.row.add.fields"].split(","))
    assert set(added.values()) == {sink["transforms.row.op.field"], sink["transforms.row.timestamp.field"]}
    assert source["transforms.row.delete.tombstone.handling.mode"] == "tombstone"  # deletes by key


def test_postgres_tables_exist_for_every_replicated_table_with_its_cassandra_columns():
    # the pipeline's tables are in 10-replicated.sql, the batch service's in 30-batch.sql
    sql = "\n".join(p.read_text() for p in sorted((CONNECTORS / "postgres").glob("*.sql")))
    cql_path = REPO / "flink_jobs" / "schema.cql"
    if not cql_path.exists():
        pytest.fail("flink_jobs/schema.cql is missing: the replicated tables mirror it")
    cql = cql_path.read_text()
    for table in TABLES:
        pg = re.search(rf"CREATE TABLE IF NOT EXISTS public\.{table} \((.*?)\n\);", sql, re.S)
        cass = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\)", cql, re.S)
        assert pg and cass, table
        pg_cols = {ln.split()[0] for ln in pg.group(1).splitlines() if ln.strip() and not ln.strip().startswith("PRIMARY")}
        cass_cols = {ln.split()[0] for ln in cass.group(1).splitlines() if ln.strip() and not ln.strip().startswith("PRIMARY")}
        assert cass_cols <= pg_cols, (table, cass_cols - pg_cols)
        assert {"cdc_op", "cdc_ts", "cdc_applied_at"} <= pg_cols


def test_freshness_lists_every_replicated_table():
    sql = (CONNECTORS / "postgres" / "40-freshness.sql").read_text()
    listed = re.search(r"FROM \(VALUES (.*?)\)\s+AS t\(table_name\)", sql, re.S)
    assert listed, "analytics.freshness() lists its tables in one VALUES list"
    assert re.findall(r"\('(\w+)'\)", listed.group(1)) == list(TABLES)
    for table in TABLES:  # and reads each one's newest change
        assert re.search(rf"SELECT '{table}', cdc_ts, cdc_applied_at FROM public\.{table}\b", sql), table


def test_agent_component_is_declared_with_real_health_and_dependencies():
    sys.path.insert(0, str(REPO / "local-stack"))
    import component  # noqa: E402
    import stack  # noqa: E402
    from components import connect  # noqa: E402

    agent = stack.BY_NAME["cassandra-cdc"]
    assert set(agent.depends) == {"cassandra", "kafka"}
    assert not set(agent.ports) & set(component.PORTS.values())
    assert agent.heap == "512m"
    assert stack.BY_NAME["connect"].bootstrap is connect.bootstrap  # registers the connectors once healthy
