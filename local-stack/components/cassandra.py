"""Cassandra 5 (one node, CDC enabled): the keyspace and every CQL script applied once it
answers a query."""

from __future__ import annotations

import asyncio
import shutil

import health
from component import PORTS, TEMPLATES, Component, Context, classpath, render

CASSANDRA_HEAP = "1g"
# Cassandra 5's conf/jvm17-server.options (JPMS part): Cassandra reaches into JDK internals.
CASSANDRA_JVM17 = """
-XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
-XX:MaxGCPauseMillis=300 -Djdk.attach.allowAttachSelf=true
--add-exports java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports java.sql/java.sql=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED
--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED
--add-opens java.base/java.lang.reflect=ALL-UNNAMED --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
--add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED
-Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true
-Dio.netty.allocator.maxOrder=11
""".split()

#: CQL scripts applied (idempotently: CREATE ... IF NOT EXISTS) after the keyspace exists.
CQL_SCRIPTS = ("flink_jobs/schema.cql",)


def prepare(ctx: Context) -> None:
    data = ctx.paths.data / "cassandra"
    conf = ctx.paths.conf / "cassandra"
    for sub in ("data", "commitlog", "hints", "saved_caches", "cdc_raw"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    render("cassandra.yaml", conf / "cassandra.yaml", {
        "data_dir": data, "storage_port": PORTS["cassandra_storage"], "cql_port": PORTS["cql"],
    })
    shutil.copy(TEMPLATES / "cassandra-logback.xml", conf / "logback.xml")


def argv(ctx: Context) -> list[str]:
    conf = ctx.paths.conf / "cassandra"
    lib = ctx.paths.lib / "cassandra"
    jamm = sorted(lib.glob("jamm-*.jar"))
    if not jamm:
        raise RuntimeError(f"jamm agent jar missing in {lib}: run `make jars`")
    return [ctx.java, f"-Xms{CASSANDRA_HEAP}", f"-Xmx{CASSANDRA_HEAP}", *CASSANDRA_JVM17,
            f"-javaagent:{jamm[-1]}", "-Djava.net.preferIPv4Stack=true",
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}", "-Dcassandra-foreground=yes",
            f"-Dcassandra.storagedir={ctx.paths.data / 'cassandra'}",
            f"-Dcassandra.logdir={ctx.paths.logs}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp", classpath(conf, lib), "org.apache.cassandra.service.CassandraDaemon"]


def cql_statements(text: str) -> list[str]:
    """Split a CQL script on ``;`` at line ends, dropping ``--``/``//`` comment lines."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith(("--", "//"))]
    statements = (s.strip().rstrip(";").strip() for s in "\n".join(lines).split(";\n"))
    return [s for s in statements if s]


def _apply(ctx: Context) -> None:
    from imgstream.adapters.cassandra import open_session

    cfg = ctx.config.cassandra
    cluster, session = open_session(cfg, keyspace=False)
    try:
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {cfg.keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}", timeout=60)
        for script in CQL_SCRIPTS:
            path = ctx.paths.root / script
            if path.exists():
                session.set_keyspace(cfg.keyspace)
                for statement in cql_statements(path.read_text()):
                    session.execute(statement, timeout=60)
    finally:
        cluster.shutdown()


async def bootstrap(ctx: Context) -> None:
    """The keyspace (SimpleStrategy, RF 1) and the CQL scripts, idempotently."""
    await asyncio.to_thread(_apply, ctx)


async def check(ctx: Context) -> str | None:
    return await health.cassandra(ctx.config)


COMPONENT = Component(
    "cassandra", (PORTS["cql"], PORTS["cassandra_storage"]), f"cql://127.0.0.1:{PORTS['cql']}", CASSANDRA_HEAP,
    argv, check, prepare, bootstrap, start_timeout=240,
)
