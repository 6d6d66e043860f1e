"""Change data capture in the local stack: Cassandra -> Kafka -> Kafka Connect -> PostgreSQL.

An extension module of ``components.py`` (listed in ``EXTENSION_MODULES``):

* ``COMPONENTS``: the Debezium Cassandra 5 agent (``cassandra-cdc``), a JVM beside the node that
  follows the node's ``cdc_raw`` segments (same ``cassandra.yaml``) and produces change events to
  Kafka. Its health check is the agent's own ``/health`` endpoint (its processors are running).
* ``BOOTSTRAP_HOOKS["connect"]``: once Kafka Connect is healthy, create the CDC and dead-letter
  topics, write the sink's connection file, register every ``connectors/*.json`` (checked by
  :func:`imgstream.ops.cdc.config_problems` first) with ``PUT /connectors/<name>/config`` (idempotent:
  same body, same connector), and restart a FAILED sink task: ``make up`` heals.
* ``BOOTSTRAP_HOOKS["cassandra"]``: after Cassandra applied its CQL scripts, a topic for every
  CDC-enabled table (a table created later gets its topic at the next ``up``).

Topics: ``<TOPIC_PREFIX>.<keyspace>.<table>`` for every table created ``WITH cdc = true``; the broker
does not auto-create topics, so they are created here before the agent can produce to them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import health
from imgstream.ops.cdc import DLQ_TOPIC, TOPIC_PREFIX, cdc_topic, config_problems, ensure_topics
from components import (
    BOOTSTRAP_HOOKS,
    CASSANDRA_JVM17,
    TEMPLATES,
    Component,
    Context,
    classpath,
    render,
)

#: Partitions per CDC topic: one keeps every key's changes in one ordered log, and one sink task
#: (tasks.max=1 on 2 cores) consumes them all anyway.
CDC_TOPIC_PARTITIONS = 1

#: The agent's HTTP port (/health, /metrics). Not in the brief's port table: it is the stack's own.
AGENT_HTTP_PORT = 8084
#: The agent reads commit-log segments and keeps one queue; 512 MiB is plenty and the machine is shared.
AGENT_HEAP = "512m"
#: How often the agent polls cdc_raw and the segment's _cdc.idx (ms). Latency ~ commit-log sync
#: period (2 s) + this.
AGENT_POLL_MS = 500

#: The file the sink's connection settings are read from by Connect's FileConfigProvider, relative
#: to the worker's working directory (the repo root: stackctl starts every component there).
SINK_SECRETS_FILE = ".stack/secrets/cdc-sink.properties"

#: How long the cassandra hook waits for Kafka to accept the topic creation.
TOPICS_DEADLINE_S = 180.0

CONNECTORS_DIR = "connectors"
AGENT_MAIN = "io.debezium.connector.cassandra.CassandraConnectorTask"


# --- the agent ----------------------------------------------------------------------------------

def _agent_paths(ctx: Context) -> tuple[Path, Path]:
    return ctx.paths.conf / "cassandra-cdc", ctx.paths.data / "cassandra-cdc"


def _cdc_tables(ctx: Context) -> list[tuple[str, str]]:
    """(keyspace, table) of every CDC-enabled table of the node (system_schema.tables.cdc)."""
    from cassandra.cluster import Cluster  # scylla-driver

    cfg = ctx.config.cassandra
    cluster = Cluster(list(cfg.hosts), port=cfg.port, protocol_version=5, connect_timeout=10)
    try:
        session = cluster.connect()
        rows = session.execute("SELECT keyspace_name, table_name, cdc FROM system_schema.tables", timeout=30)
        return sorted((r.keyspace_name, r.table_name) for r in rows
                      if r.cdc and not r.keyspace_name.startswith("system"))
    finally:
        cluster.shutdown()


def _agent_prepare(ctx: Context) -> None:
    conf, data = _agent_paths(ctx)
    for sub in ("offsets", "relocation"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    cfg = ctx.config
    render("cassandra-cdc-driver.conf", conf / "driver.conf", {
        "cql_host": cfg.cassandra.hosts[0], "cql_port": cfg.cassandra.port,
    })
    render("cassandra-cdc.properties", conf / "agent.properties", {
        "topic_prefix": TOPIC_PREFIX, "node_id": "local-1",
        "cassandra_yaml": ctx.paths.conf / "cassandra" / "cassandra.yaml",
        "driver_conf": conf / "driver.conf", "poll_ms": AGENT_POLL_MS, "data_dir": data,
        "http_port": AGENT_HTTP_PORT, "kafka_bootstrap": cfg.kafka.bootstrap_servers,
    })
    (conf / "logback.xml").write_text((TEMPLATES / "cassandra-cdc-logback.xml").read_text())
    _prune_archived_indexes(data / "relocation" / "archive")
    # Before the agent emits anything, every CDC table needs its topic (no broker auto-creation).
    asyncio.run(_ensure_table_topics(ctx))


async def _ensure_table_topics(ctx: Context) -> None:
    """A topic for every CDC-enabled table of the node (run again after each schema bootstrap).

    Also a hook of ``cassandra``, which does not depend on Kafka: Kafka may still be starting,
    so a refused connection is retried until ``TOPICS_DEADLINE_S``.
    """
    from aiokafka.errors import KafkaConnectionError

    tables = await asyncio.to_thread(_cdc_tables, ctx)
    topics = {cdc_topic(t, ks): CDC_TOPIC_PARTITIONS for ks, t in tables}
    deadline = time.monotonic() + TOPICS_DEADLINE_S
    while True:
        try:
            await ensure_topics(ctx.config.kafka.bootstrap_servers, topics)
            return
        except KafkaConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


def _prune_archived_indexes(archive: Path) -> None:
    """The agent deletes a processed segment but leaves its ``_cdc.idx`` (a few bytes) in the
    archive; drop those whose segment is gone so they do not pile up."""
    for idx in archive.glob("*_cdc.idx"):
        if not (archive / idx.name.replace("_cdc.idx", ".log")).exists():
            idx.unlink(missing_ok=True)


def _jvm17_module_flags() -> list[str]:
    """The ``--add-exports/--add-opens`` pairs of Cassandra 5's JVM options (client side needs them too)."""
    flags: list[str] = []
    it = iter(CASSANDRA_JVM17)
    for arg in it:
        if arg in ("--add-exports", "--add-opens"):
            flags += [arg, next(it)]
    return flags + ["--add-opens", "java.base/java.nio=ALL-UNNAMED"]


def _agent_argv(ctx: Context) -> list[str]:
    conf, data = _agent_paths(ctx)
    lib = ctx.paths.lib / "cassandra-cdc"
    if not any(lib.glob("debezium-connector-cassandra-5-*.jar")):
        raise RuntimeError(f"Debezium Cassandra agent jars missing in {lib}: run `make jars`")
    return [ctx.java, "-Xms128m", f"-Xmx{AGENT_HEAP}", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
            *_jvm17_module_flags(),
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.storagedir={ctx.paths.data / 'cassandra'}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp", classpath(lib), AGENT_MAIN, str(conf / "agent.properties")]


async def _agent_health(ctx: Context) -> str | None:
    """The agent's ``/health``: 200 only while its commit-log processors run."""
    return await health.http_ok(f"http://127.0.0.1:{AGENT_HTTP_PORT}/health")


# --- Kafka Connect: topics, connection file, connectors ------------------------------------------

def connector_files(root: Path) -> list[Path]:
    """The connectors the local stack registers: ``connectors/*.json`` (not ``production/``)."""
    return sorted((root / CONNECTORS_DIR).glob("*.json"))


def _write_sink_secrets(ctx: Context) -> None:
    """The JDBC sink's connection settings, read by reference (``${file:...}``), mode 0600."""
    from urllib.parse import urlsplit

    dsn = urlsplit(str(ctx.config.postgres.dsn))
    path = ctx.paths.root / SINK_SECRETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"connection.url=jdbc:postgresql://{dsn.hostname}:{dsn.port or 5432}{dsn.path}\n"
            f"connection.username={dsn.username or 'imgstream'}\n"
            f"connection.password={dsn.password or ''}\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback only
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def register_connector(connect_rest: str, name: str, config: dict[str, Any]) -> None:
    """``PUT /connectors/<name>/config``: creates or updates, idempotently. Raises on a refusal."""
    status, body = _http("PUT", f"{connect_rest}/connectors/{name}/config", config)
    if status not in (200, 201):
        raise RuntimeError(f"Kafka Connect refused connector {name}: HTTP {status}: {body}")


def _topics_of(config: dict[str, Any]) -> list[str]:
    return [t.strip() for t in str(config.get("topics", "")).split(",") if t.strip()]


async def _connect_bootstrap(ctx: Context) -> None:
    files = connector_files(ctx.paths.root)
    if not files:
        return
    _write_sink_secrets(ctx)
    topics = {DLQ_TOPIC: 1}
    connectors = []
    for path in files:
        config = json.loads(path.read_text())
        name = path.stem
        problems = config_problems(name, config)
        if problems:
            raise RuntimeError(f"{path}: " + "; ".join(problems))
        topics.update({t: CDC_TOPIC_PARTITIONS for t in _topics_of(config)})
        if config.get("errors.deadletterqueue.topic.name"):
            topics[config["errors.deadletterqueue.topic.name"]] = 1
        connectors.append((name, config))
    await ensure_topics(ctx.config.kafka.bootstrap_servers, topics)
    for name, config in connectors:
        await asyncio.to_thread(register_connector, ctx.config.connect_rest, name, config)
        await asyncio.to_thread(restart_failed_tasks, ctx.config.connect_rest, name)


def restart_failed_tasks(connect_rest: str, name: str) -> bool:
    """``make up`` heals: restart a connector's FAILED tasks (Connect never does it by itself)."""
    status, body = _http("GET", f"{connect_rest}/connectors/{name}/status")
    if status != 200 or not isinstance(body, dict):
        return False
    states = [body.get("connector", {}).get("state")] + [t.get("state") for t in body.get("tasks", [])]
    if "FAILED" not in states:
        return False
    code, answer = _http("POST", f"{connect_rest}/connectors/{name}/restart?includeTasks=true&onlyFailed=true")
    if code not in (200, 202, 204):
        raise RuntimeError(f"restarting failed tasks of {name}: HTTP {code}: {answer}")
    return True


COMPONENTS: tuple[Component, ...] = (
    Component("cassandra-cdc", (AGENT_HTTP_PORT,), f"http://127.0.0.1:{AGENT_HTTP_PORT}/health",
              AGENT_HEAP, _agent_argv, _agent_health, _agent_prepare,
              depends=("cassandra", "kafka"), start_timeout=180),
)

BOOTSTRAP_HOOKS.setdefault("connect", []).append(_connect_bootstrap)
# After Cassandra's bootstrap applied the CQL scripts (new CDC tables), their topics must exist
# before the Flink job writes them, whether or not the agent restarts.
BOOTSTRAP_HOOKS.setdefault("cassandra", []).append(_ensure_table_topics)
