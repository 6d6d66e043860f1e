"""The Debezium Cassandra 5 agent (``cassandra-cdc``): a JVM beside the node that follows the
node's ``cdc_raw`` segments (same ``cassandra.yaml``) and produces change events to Kafka.

Its health check is the agent's own ``/health`` endpoint (its processors are running). Topics:
``<TOPIC_PREFIX>.<keyspace>.<table>`` for every table created ``WITH cdc = true``; the broker does
not auto-create topics, so they are created here before the agent can produce to them (and again
after every schema bootstrap of Cassandra: see ``stack.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from imgstream.adapters.kafka import TopicSpec, ensure_topics
from imgstream.domain.errors import Unavailable
from imgstream.ops.cdc import CDC_TOPIC_PARTITIONS, TOPIC_PREFIX, cdc_topic
from imgstream.polling import until

import health
from component import TEMPLATES, Component, Context, classpath, render
from components.cassandra import CASSANDRA_JVM17

#: The agent's HTTP port (/health, /metrics). Not in the brief's port table: it is the stack's own.
AGENT_HTTP_PORT = 8084
#: The agent reads commit-log segments and keeps one queue; 512 MiB is plenty and the machine is shared.
AGENT_HEAP = "512m"
#: How often the agent polls cdc_raw and the segment's _cdc.idx (ms). Latency ~ commit-log sync
#: period (500 ms) + this + QUEUE_POLL_MS (docs/cdc.md: measured side by side).
AGENT_POLL_MS = 100
#: How long the agent's queue processor gathers events before producing them (Debezium's
#: ``poll.interval.ms``, default 1000): the last hop's share of the CDC latency at low rates.
QUEUE_POLL_MS = 100
#: How long creating the table topics waits for Kafka to accept connections.
TOPICS_DEADLINE_S = 180.0

AGENT_MAIN = "io.debezium.connector.cassandra.CassandraConnectorTask"


def _agent_paths(ctx: Context) -> tuple[Path, Path]:
    return ctx.paths.conf / "cassandra-cdc", ctx.paths.data / "cassandra-cdc"


def _cdc_tables(ctx: Context) -> list[tuple[str, str]]:
    """(keyspace, table) of every CDC-enabled table of the node (system_schema.tables.cdc)."""
    from imgstream.adapters.cassandra import open_session

    cluster, session = open_session(ctx.config.cassandra, keyspace=False)
    try:
        rows = session.execute("SELECT keyspace_name, table_name, cdc FROM system_schema.tables", timeout=30)
        return sorted((r.keyspace_name, r.table_name) for r in rows
                      if r.cdc and not r.keyspace_name.startswith("system"))
    finally:
        cluster.shutdown()


def _unreachable(exc: Unavailable) -> bool:
    """Kafka refused the connection (still starting), as opposed to refusing the request."""
    from aiokafka.errors import KafkaConnectionError

    return isinstance(exc.__cause__, (KafkaConnectionError, OSError))


async def ensure_table_topics(ctx: Context) -> None:
    """A topic for every CDC-enabled table of the node (run again after each schema bootstrap).

    Also run after ``cassandra``'s bootstrap, which does not depend on Kafka: Kafka may still be
    starting, so a refused connection is retried until ``TOPICS_DEADLINE_S``.
    """
    tables = await asyncio.to_thread(_cdc_tables, ctx)
    topics = [TopicSpec(cdc_topic(t, ks), CDC_TOPIC_PARTITIONS) for ks, t in tables]

    async def created() -> bool:
        try:
            await ensure_topics(ctx.config.kafka, topics)
        except Unavailable as exc:
            if not _unreachable(exc):
                raise
            return False
        return True

    await until(created, "Kafka accepts connections to create the CDC topics", timeout=TOPICS_DEADLINE_S,
                interval=1.0)


def _prune_archived_indexes(archive: Path) -> None:
    """The agent deletes a processed segment but leaves its ``_cdc.idx`` (a few bytes) in the
    archive; drop those whose segment is gone so they do not pile up."""
    for idx in archive.glob("*_cdc.idx"):
        if not (archive / idx.name.replace("_cdc.idx", ".log")).exists():
            idx.unlink(missing_ok=True)


def prepare(ctx: Context) -> None:
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
        "driver_conf": conf / "driver.conf", "poll_ms": AGENT_POLL_MS, "queue_poll_ms": QUEUE_POLL_MS, "data_dir": data,
        "http_port": AGENT_HTTP_PORT, "kafka_bootstrap": cfg.kafka.bootstrap_servers,
    })
    (conf / "logback.xml").write_text((TEMPLATES / "cassandra-cdc-logback.xml").read_text())
    _prune_archived_indexes(data / "relocation" / "archive")
    # Before the agent emits anything, every CDC table needs its topic (no broker auto-creation).
    asyncio.run(ensure_table_topics(ctx))


def _jvm17_module_flags() -> list[str]:
    """The ``--add-exports/--add-opens`` pairs of Cassandra 5's JVM options (client side needs them too)."""
    flags: list[str] = []
    it = iter(CASSANDRA_JVM17)
    for arg in it:
        if arg in ("--add-exports", "--add-opens"):
            flags += [arg, next(it)]
    return flags + ["--add-opens", "java.base/java.nio=ALL-UNNAMED"]


def argv(ctx: Context) -> list[str]:
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


async def check(ctx: Context) -> str | None:
    """The agent's ``/health``: 200 only while its commit-log processors run."""
    return await health.http_ok(f"http://127.0.0.1:{AGENT_HTTP_PORT}/health")


COMPONENT = Component(
    "cassandra-cdc", (AGENT_HTTP_PORT,), f"http://127.0.0.1:{AGENT_HTTP_PORT}/health", AGENT_HEAP, argv, check,
    prepare, depends=("cassandra", "kafka"), start_timeout=180,
)
