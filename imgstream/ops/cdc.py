"""Change data capture naming and the rules every connector config must follow.

Changes of the Cassandra tables created ``WITH cdc = true`` reach Kafka as one topic per table
(``cdc.<keyspace>.<table>``: the Debezium Cassandra agent locally, ScyllaDB's CDC source connector
in production) and PostgreSQL through the Debezium JDBC sink. This module holds what the stack,
the tests and the benchmarks share: topic names, the dead-letter topic, and the checks on
``connectors/**/*.json`` (no literal hosts or secrets, the keys each kind of connector needs).
Topics are created with :func:`imgstream.adapters.kafka.ensure_topics` (the broker does not
auto-create them, and the Cassandra agent fails its send when a table's topic is missing, so every
CDC topic is created before its table is written).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

#: Topic prefix of change events: the agent's and ScyllaDB's ``topic.prefix``.
TOPIC_PREFIX = "cdc"
#: Partitions per CDC topic: one keeps every key's changes in one ordered log, and one sink task
#: (tasks.max=1 on 2 cores) consumes them all anyway.
CDC_TOPIC_PARTITIONS = 1
#: Records the sink cannot apply go here, with the reason in ``__connect.errors.*`` headers.
DLQ_TOPIC = "cdc.dlq"
#: The replicated tables (Cassandra keyspace ``imgstream`` -> PostgreSQL schema ``public``): the
#: pipeline's four, then the batch service's (``derivatives``, and the GC's audit ``gc_log``).
KEYSPACE = "imgstream"
TABLES: tuple[str, ...] = ("images", "duplicates", "upload_stats", "late_events", "derivatives", "gc_log")

JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
SCYLLA_SOURCE_CLASS = "com.scylladb.cdc.debezium.connector.ScyllaConnector"

#: Keys whose values are hosts, credentials or URLs: they must be config-provider references.
SECRET_KEYS = re.compile(
    r"(^|\.)(connection\.(url|username|password)|password|user|username|"
    r"scylla\.cluster\.ip\.addresses|bootstrap\.servers|ssl\..*(password|location))$"
)
#: A config-provider reference: ``${file:PATH:KEY}`` or ``${env:NAME}`` (the worker's providers).
PROVIDER_REF = re.compile(r"^\$\{(file:[^:}]+:[^}]+|env:[A-Za-z_][A-Za-z0-9_]*)\}$")
#: Literal network locations that must never appear in a connector file.
LITERAL_HOST = re.compile(
    r"(\b\d{1,3}(\.\d{1,3}){3}\b|\blocalhost\b|jdbc:[a-z]+://|\b[a-z0-9-]+\.[a-z]{2,}:\d{2,5}\b)", re.I
)

SINK_REQUIRED = {
    "insert.mode": "upsert",
    "primary.key.mode": "record_key",
    "delete.enabled": "true",
    "errors.tolerance": "all",
    "errors.deadletterqueue.topic.name": DLQ_TOPIC,
    "errors.deadletterqueue.context.headers.enable": "true",
}


def cdc_topic(table: str, keyspace: str = KEYSPACE) -> str:
    """The change-event topic of one table."""
    return f"{TOPIC_PREFIX}.{keyspace}.{table}"


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        return [item for k, v in value.items() for item in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _strings(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, str) else [(path, str(value))]


def config_problems(name: str, config: Mapping[str, Any]) -> list[str]:
    """What is wrong with one connector config (the body of ``PUT /connectors/<name>/config``).

    An empty list means the config follows the rules: string values only (the REST API's
    format), its ``name`` (if any) matches, no literal host/URL anywhere, secrets and hosts only
    by config-provider reference, and the keys its connector class needs.
    """
    problems: list[str] = []
    if config.get("name", name) != name:
        problems.append(f"name {config.get('name')!r} differs from the file name {name!r}")
    for key, value in config.items():
        if not isinstance(value, str):
            problems.append(f"{key}: values must be strings, got {type(value).__name__}")
    for key, value in _strings(dict(config)):
        if SECRET_KEYS.search(key) and not PROVIDER_REF.match(value):
            problems.append(f"{key}: must be a ${{file:...}} or ${{env:...}} reference, not a literal")
        elif LITERAL_HOST.search(value) and not PROVIDER_REF.match(value):
            problems.append(f"{key}: literal host or URL {value!r}")
    cls = config.get("connector.class")
    if cls == JDBC_SINK_CLASS:
        for key, wanted in SINK_REQUIRED.items():
            if str(config.get(key, "")).lower() != wanted:
                problems.append(f"{key} must be {wanted!r} (got {config.get(key)!r})")
        if not (config.get("topics") or config.get("topics.regex")):
            problems.append("a sink needs topics or topics.regex")
        for key in ("connection.url", "connection.username", "connection.password"):
            if key not in config:
                problems.append(f"{key} missing")
    elif cls == SCYLLA_SOURCE_CLASS:
        if config.get("topic.prefix") != TOPIC_PREFIX:
            problems.append(f"topic.prefix must be {TOPIC_PREFIX!r}: the sink reads {TOPIC_PREFIX}.<keyspace>.<table>")
        for key in ("scylla.cluster.ip.addresses", "scylla.table.names", "transforms"):
            if key not in config:
                problems.append(f"{key} missing")
    else:
        problems.append(f"unknown connector.class {cls!r}")
    return problems
