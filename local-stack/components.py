"""The components of the local stack: how each is configured, started, checked and bootstrapped.

Each :class:`Component` is data: the ports it binds, a ``prepare`` step (render configs, format
storage), the command that runs it in the foreground, a real health check, and an idempotent
``bootstrap`` (topics, keyspace, bucket, roles) run once it is healthy.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import health
from imgstream.config import StackConfig, load_env_file

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "conf"

PORTS = {
    "gateway": 8080,
    "flink_rest": 8081,
    "flink_rpc": 6123,
    "connect": 8083,
    "stats_api": 8090,
    "s3": 9000,
    "kafka": 9092,
    "kafka_controller": 9093,
    "cql": 9042,
    "cassandra_storage": 7000,
    "postgres": 5432,
}

#: Topics the design needs: name -> partitions. The upload topic is keyed by image_id.
TOPICS: dict[str, int] = {
    "images.uploaded": 3,
    "images.dlq": 1,
}

# JVM heaps sized for 2 cores / 24 GiB shared by six JVMs and the Python services.
KAFKA_HEAP = "1g"
CONNECT_HEAP = "1g"
CASSANDRA_HEAP = "1g"
S3PROXY_HEAP = "512m"
FLINK_JM_PROCESS = "1200m"
FLINK_TM_PROCESS = "4g"
FLINK_TM_METASPACE = "768m"
#: The pipeline takes two slots (``clean`` and ``decide`` each get a Python worker); a test or
#: bench job beside it takes up to two more, and a cancelled job frees its slots a little later.
FLINK_TM_SLOTS = 6
#: Variables a component must not inherit from whoever runs stackctl: JVM option overrides, and
#: what PyFlink's in-process (loopback) Python worker writes into its host's environment - a
#: TaskManager started with PYTHON_LOOPBACK_SERVER_ADDRESS runs every Python worker inside that
#: process (found when a test restarted the TaskManager after a mini-cluster test had run).
INHERITED_ENV_DROPPED = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "PYTHON_LOOPBACK_SERVER_ADDRESS", "_PYTHON_WORKING_DIR")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
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


@dataclass(frozen=True)
class Paths:
    """Layout of the ignored state folder (``.stack/``)."""

    root: Path
    state: Path

    @classmethod
    def for_repo(cls, root: Path) -> "Paths":
        return cls(root=root, state=root / ".stack")

    @property
    def lib(self) -> Path:
        return self.state / "lib"

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def conf(self) -> Path:
        return self.state / "conf"

    @property
    def secrets(self) -> Path:
        return self.state / "secrets"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    @property
    def venv_python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"


def java17() -> str:
    """The Java 17 binary: every JVM of the stack runs on it."""
    candidates = [os.environ.get("JAVA17_HOME", ""), "/usr/lib/jvm/java-17-openjdk-amd64",
                  os.environ.get("JAVA_HOME", "")]
    for home in candidates:
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise SystemExit("no Java found: install openjdk-17-jdk-headless")
    return found


def pyflink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def render(template: str, target: Path, values: dict[str, object]) -> Path:
    """Fill ``${name}`` placeholders; an unknown name is an error, not a silent blank."""
    text = (TEMPLATES / template).read_text()

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template}: no value for ${{{key}}}")
        return str(values[key])

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(re.sub(r"\$\{([a-z_][a-z0-9_]*)\}", sub, text))
    return target


def classpath(*dirs: Path) -> str:
    parts: list[str] = []
    for d in dirs:
        if d.is_dir() and not any(d.glob("*.jar")):
            parts.append(str(d))  # a conf dir
        elif d.is_dir():
            parts.append(str(d / "*"))
        else:
            parts.append(str(d))
    return ":".join(parts)


@dataclass
class Context:
    """Everything a component needs to prepare and start: paths, secrets, endpoints."""

    paths: Paths
    s3_secret: str
    java: str = field(default_factory=java17)

    @property
    def pg_admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{PORTS['postgres']}/postgres"

    def env_values(self) -> dict[str, str]:
        """What ``.stack/env`` holds: how services, tests and the CLI reach the stack."""
        p = self.paths
        return {
            "IMGSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{PORTS['kafka']}",
            "IMGSTREAM_S3_ENDPOINT": f"http://127.0.0.1:{PORTS['s3']}",
            "IMGSTREAM_S3_BUCKET": "imgstream-images",
            "IMGSTREAM_S3_ACCESS_KEY": "imgstream",
            "IMGSTREAM_S3_SECRET_KEY": self.s3_secret,
            "IMGSTREAM_S3_REGION": "us-east-1",
            "IMGSTREAM_CASSANDRA_HOSTS": "127.0.0.1",
            "IMGSTREAM_CASSANDRA_PORT": str(PORTS["cql"]),
            "IMGSTREAM_CASSANDRA_KEYSPACE": "imgstream",
            "IMGSTREAM_PG_DSN": f"postgresql://imgstream@127.0.0.1:{PORTS['postgres']}/imgstream",
            "IMGSTREAM_FLINK_REST": f"http://127.0.0.1:{PORTS['flink_rest']}",
            "IMGSTREAM_CONNECT_REST": f"http://127.0.0.1:{PORTS['connect']}",
            "IMGSTREAM_GATEWAY_URL": f"http://127.0.0.1:{PORTS['gateway']}",
            "IMGSTREAM_STATS_URL": f"http://127.0.0.1:{PORTS['stats_api']}",
            "IMGSTREAM_FLINK_KAFKA_JAR": str(next(iter(sorted((p.lib / "flink").glob("flink-sql-connector-kafka-*.jar"))), "")),
            "IMGSTREAM_STATE_DIR": str(p.state),
            "IMGSTREAM_TOKEN_KEYS_FILE": str(p.secrets / "token-keys.json"),
        }

    @property
    def config(self) -> StackConfig:
        return StackConfig.from_env(self.env_values())

    @classmethod
    def load(cls, paths: Paths) -> "Context":
        """Create the secrets on first use (mode 0600) and write ``.stack/env``."""
        paths.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.secrets, 0o700)
        secret_file = paths.secrets / "s3-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(20))
            os.chmod(secret_file, 0o600)
        ctx = cls(paths=paths, s3_secret=secret_file.read_text().strip())
        return ctx

    def write_env_file(self) -> None:
        env_file = self.paths.env_file
        env_file.write_text("# written by local-stack/stackctl.py; how to reach the local stack\n"
                            + "".join(f"{k}={v}\n" for k, v in self.env_values().items()))
        os.chmod(env_file, 0o600)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_ENV_DROPPED)}
        env.update(self.env_values())
        env["JAVA_HOME"] = str(Path(self.java).parent.parent)
        env["PATH"] = f"{self.paths.root / '.venv' / 'bin'}:{Path(self.java).parent}:{env.get('PATH', '')}"
        return env


@dataclass(frozen=True)
class Component:
    """One process of the stack."""

    name: str
    ports: tuple[int, ...]
    url: str
    heap: str
    argv: Callable[[Context], list[str]]
    health: Callable[[Context], Awaitable[str | None]]
    prepare: Callable[[Context], None] = lambda ctx: None
    bootstrap: Callable[[Context], Awaitable[None]] | None = None
    depends: tuple[str, ...] = ()
    start_timeout: float = 120.0
    run_as: str | None = None
    extra_env: Callable[[Context], dict[str, str]] = lambda ctx: {}

    def data_dir(self, ctx: Context) -> Path:
        return ctx.paths.data / self.name

    def conf_dir(self, ctx: Context) -> Path:
        return ctx.paths.conf / self.name


# --- Kafka ----------------------------------------------------------------------------------------

def _kafka_uuid(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never starting with ``-``, like Kafka's own ``Uuid.randomUuid``: the storage tool's parser
    takes ``-t -Abc...`` for an option, and a fresh stack failed to format (1 start in 64).
    """
    while True:
        cid = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_prepare(ctx: Context) -> None:
    data = ctx.paths.data / "kafka"
    conf = ctx.paths.conf / "kafka"
    props = render("kafka-server.properties", conf / "server.properties", {
        "kafka_port": PORTS["kafka"], "kafka_controller_port": PORTS["kafka_controller"], "data_dir": data,
    })
    shutil.copy(TEMPLATES / "kafka-log4j2.properties", conf / "log4j2.properties")
    if (data / "meta.properties").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [ctx.java, "-Xmx256m", "-cp", classpath(ctx.paths.lib / "kafka"),
         f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
         "kafka.tools.StorageTool", "format", "--standalone", "-t", _kafka_uuid(), "-c", str(props)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")


def _kafka_argv(ctx: Context) -> list[str]:
    conf = ctx.paths.conf / "kafka"
    return [ctx.java, f"-Xms{KAFKA_HEAP}", f"-Xmx{KAFKA_HEAP}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            "-cp", classpath(ctx.paths.lib / "kafka"), "kafka.Kafka", str(conf / "server.properties")]


async def _kafka_bootstrap(ctx: Context) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.config.kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(name, partitions, 1) for name, partitions in TOPICS.items() if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


# --- Kafka Connect -------------------------------------------------------------------------------

def _connect_prepare(ctx: Context) -> None:
    conf = ctx.paths.conf / "connect"
    plugins = ctx.paths.lib / "connect-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    render("connect-worker.properties", conf / "worker.properties", {
        "kafka_port": PORTS["kafka"], "connect_port": PORTS["connect"], "plugin_path": plugins,
    })
    shutil.copy(TEMPLATES / "kafka-log4j2.properties", conf / "log4j2.properties")


def _connect_argv(ctx: Context) -> list[str]:
    conf = ctx.paths.conf / "connect"
    return [ctx.java, "-Xms256m", f"-Xmx{CONNECT_HEAP}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-Duser.timezone=UTC",  # the JDBC sink writes zone-less timestamps: make them UTC everywhere
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            "-cp", classpath(ctx.paths.lib / "kafka"),
            "org.apache.kafka.connect.cli.ConnectDistributed", str(conf / "worker.properties")]


# --- Cassandra -----------------------------------------------------------------------------------

def _cassandra_prepare(ctx: Context) -> None:
    data = ctx.paths.data / "cassandra"
    conf = ctx.paths.conf / "cassandra"
    for sub in ("data", "commitlog", "hints", "saved_caches", "cdc_raw"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    render("cassandra.yaml", conf / "cassandra.yaml", {
        "data_dir": data, "storage_port": PORTS["cassandra_storage"], "cql_port": PORTS["cql"],
    })
    shutil.copy(TEMPLATES / "cassandra-logback.xml", conf / "logback.xml")


def _cassandra_argv(ctx: Context) -> list[str]:
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


#: CQL scripts applied (idempotently: CREATE ... IF NOT EXISTS) after the keyspace exists.
CQL_SCRIPTS = ("flink_jobs/schema.cql",)


def _cassandra_apply(ctx: Context) -> None:
    from cassandra.cluster import Cluster

    cfg = ctx.config.cassandra
    cluster = Cluster(list(cfg.hosts), port=cfg.port, protocol_version=5, connect_timeout=10)
    try:
        session = cluster.connect()
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


async def _cassandra_bootstrap(ctx: Context) -> None:
    await asyncio.to_thread(_cassandra_apply, ctx)


# --- PostgreSQL ----------------------------------------------------------------------------------

PG_USER = "postgres"  # Debian's postgresql package creates it; postgres refuses to run as root


def _pg_run_as() -> str | None:
    return PG_USER if os.geteuid() == 0 else None


def _pg_prepare(ctx: Context) -> None:
    data = ctx.paths.data / "postgres"
    sock = ctx.paths.run / "postgres"
    sock.mkdir(parents=True, exist_ok=True)
    user = _pg_run_as()
    if user:
        shutil.chown(sock, user)
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(data, user)
    os.chmod(data, 0o700)
    result = subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--locale=C.UTF-8"],
        capture_output=True, text=True, timeout=300, user=user, cwd="/tmp",
    )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
    # Loopback trust: the local stack only (the brief's `psql -h 127.0.0.1 -U imgstream imgstream`).
    (data / "pg_hba.conf").write_text(
        "# written by the imgstream local stack: loopback only, trust (never in production)\n"
        "local all all trust\n"
        "host  all all 127.0.0.1/32 trust\n"
        "host  all all ::1/128 trust\n")
    if user:
        shutil.chown(data / "pg_hba.conf", user)


def _pg_argv(ctx: Context) -> list[str]:
    return [str(PG_BIN / "postgres"), "-D", str(ctx.paths.data / "postgres"),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={PORTS['postgres']}",
            "-c", f"unix_socket_directories={ctx.paths.run / 'postgres'}",
            "-c", "shared_buffers=256MB", "-c", "max_connections=200",
            "-c", "logging_collector=off", "-c", "log_min_messages=warning",
            "-c", "wal_level=logical"]


#: SQL applied after the roles exist (idempotent scripts), in order, as the imgstream role.
PG_SCRIPTS_DIR = "connectors/postgres"


async def _pg_bootstrap(ctx: Context) -> None:
    import asyncpg

    admin = await asyncpg.connect(ctx.pg_admin_dsn, timeout=10)
    try:
        for role, attrs in (("imgstream", "LOGIN"), ("analyst", "LOGIN")):
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await admin.execute(f'CREATE ROLE "{role}" {attrs}')
        await admin.execute("ALTER ROLE analyst SET default_transaction_read_only = on")
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = 'imgstream'"):
            await admin.execute('CREATE DATABASE imgstream OWNER imgstream')
    finally:
        await admin.close()
    db = await asyncpg.connect(str(ctx.config.postgres.dsn), timeout=10)
    try:
        await db.execute("""
            CREATE SCHEMA IF NOT EXISTS analytics AUTHORIZATION imgstream;
            GRANT CONNECT ON DATABASE imgstream TO analyst;
            GRANT USAGE ON SCHEMA public, analytics TO analyst;
            GRANT SELECT ON ALL TABLES IN SCHEMA public, analytics TO analyst;
            ALTER DEFAULT PRIVILEGES FOR ROLE imgstream IN SCHEMA public, analytics GRANT SELECT ON TABLES TO analyst;
        """)
        scripts = sorted((ctx.paths.root / PG_SCRIPTS_DIR).glob("*.sql"))
        for script in scripts:
            await db.execute(script.read_text())
    finally:
        await db.close()


async def _pg_health(ctx: Context) -> str | None:
    return await health.postgres_server(ctx.pg_admin_dsn)


# --- S3 (s3proxy) ----------------------------------------------------------------------------------

def _s3_prepare(ctx: Context) -> None:
    data = ctx.paths.data / "s3"
    data.mkdir(parents=True, exist_ok=True)
    conf = render("s3proxy.conf", ctx.paths.conf / "s3" / "s3proxy.conf", {
        "s3_port": PORTS["s3"], "s3_access_key": "imgstream", "s3_secret_key": ctx.s3_secret, "data_dir": data,
    })
    os.chmod(conf, 0o600)


def _s3_argv(ctx: Context) -> list[str]:
    jars = sorted((ctx.paths.lib / "s3proxy").glob("s3proxy-*.jar"))
    if not jars:
        raise RuntimeError("s3proxy jar missing: run `make jars`")
    return [ctx.java, f"-Xmx{S3PROXY_HEAP}", "-XX:+UseSerialGC", "-jar", str(jars[-1]),
            "--properties", str(ctx.paths.conf / "s3" / "s3proxy.conf")]


async def _s3_bootstrap(ctx: Context) -> None:
    from aiobotocore.session import get_session
    from botocore.config import Config

    cfg = ctx.config.s3
    config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    async with get_session().create_client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, aws_access_key_id=str(cfg.access_key),
        aws_secret_access_key=str(cfg.secret_key), config=config,
    ) as client:
        names = {b["Name"] for b in (await client.list_buckets()).get("Buckets", [])}
        if cfg.bucket not in names:
            await client.create_bucket(Bucket=cfg.bucket)


# --- Flink session cluster -------------------------------------------------------------------------

def _flink_prepare(ctx: Context) -> None:
    import yaml

    home = pyflink_home()
    conf = ctx.paths.conf / "flink"
    conf.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((home / "conf" / "config.yaml").read_text())
    data = ctx.paths.data / "flink"
    for sub in ("checkpoints", "savepoints", "ha", "tmp", "web-upload"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    overrides = {
        "jobmanager": {"bind-host": "127.0.0.1", "rpc": {"address": "127.0.0.1", "port": PORTS["flink_rpc"]},
                       "memory": {"process": {"size": FLINK_JM_PROCESS}}},
        "taskmanager": {"bind-host": "127.0.0.1", "host": "127.0.0.1", "numberOfTaskSlots": FLINK_TM_SLOTS,
                        # every submitted job loads its jars (Kafka connector, PyFlink) into a
                        # fresh class loader; the 256m default ran out after ~40 submissions
                        "memory": {"process": {"size": FLINK_TM_PROCESS},
                                   "jvm-metaspace": {"size": FLINK_TM_METASPACE}}},
        "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": PORTS["flink_rest"]},
        "execution": {"checkpointing": {"dir": f"file://{data / 'checkpoints'}",
                                        "savepoint-dir": f"file://{data / 'savepoints'}",
                                        "externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
                                        "num-retained": 3}},
        "state": {"backend": {"type": "rocksdb"}},
        "restart-strategy": {"type": "exponential-delay"},
        "io": {"tmp": {"dirs": str(data / "tmp")}},
        "web": {"upload": {"dir": str(data / "web-upload")}},
        "python": {"executable": str(ctx.paths.venv_python), "client": {"executable": str(ctx.paths.venv_python)}},
    }
    merged = _deep_merge(base, overrides)
    (conf / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    for name in ("log4j-console.properties", "log4j-cli.properties", "log4j.properties", "logback-console.xml"):
        shutil.copy(home / "conf" / name, conf / name)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _flink_env(ctx: Context) -> dict[str, str]:
    (ctx.paths.logs / "flink").mkdir(parents=True, exist_ok=True)
    return {"FLINK_CONF_DIR": str(ctx.paths.conf / "flink"), "FLINK_LOG_DIR": str(ctx.paths.logs / "flink"),
            "FLINK_PID_DIR": str(ctx.paths.run / "flink"), "FLINK_IDENT_STRING": "imgstream"}


def _flink_jm_argv(ctx: Context) -> list[str]:
    return ["bash", str(pyflink_home() / "bin" / "jobmanager.sh"), "start-foreground"]


def _flink_tm_argv(ctx: Context) -> list[str]:
    return ["bash", str(pyflink_home() / "bin" / "taskmanager.sh"), "start-foreground"]


async def _flink_jm_health(ctx: Context) -> str | None:
    return await health.http_ok(f"{ctx.config.flink_rest}/overview")


# --- the table -------------------------------------------------------------------------------------

CORE: tuple[Component, ...] = (
    Component("postgres", (PORTS["postgres"],), f"postgresql://imgstream@127.0.0.1:{PORTS['postgres']}/imgstream",
              "shared_buffers 256MB", _pg_argv, _pg_health, _pg_prepare, _pg_bootstrap,
              start_timeout=60, run_as=_pg_run_as()),
    Component("s3", (PORTS["s3"],), f"http://127.0.0.1:{PORTS['s3']}", S3PROXY_HEAP, _s3_argv,
              lambda ctx: health.s3(ctx.config), _s3_prepare, _s3_bootstrap, start_timeout=90),
    Component("kafka", (PORTS["kafka"], PORTS["kafka_controller"]), f"127.0.0.1:{PORTS['kafka']}", KAFKA_HEAP,
              _kafka_argv, lambda ctx: health.kafka(ctx.config), _kafka_prepare, _kafka_bootstrap,
              start_timeout=120),
    Component("cassandra", (PORTS["cql"], PORTS["cassandra_storage"]), f"cql://127.0.0.1:{PORTS['cql']}",
              CASSANDRA_HEAP, _cassandra_argv, lambda ctx: health.cassandra(ctx.config), _cassandra_prepare,
              _cassandra_bootstrap, start_timeout=240),
    Component("flink-jobmanager", (PORTS["flink_rest"], PORTS["flink_rpc"]), f"http://127.0.0.1:{PORTS['flink_rest']}",
              FLINK_JM_PROCESS, _flink_jm_argv, _flink_jm_health, _flink_prepare, start_timeout=150,
              extra_env=_flink_env),
    Component("flink-taskmanager", (), "(registers with the JobManager)", FLINK_TM_PROCESS, _flink_tm_argv,
              lambda ctx: health.flink(ctx.config), depends=("flink-jobmanager",), start_timeout=150,
              extra_env=_flink_env),
    Component("connect", (PORTS["connect"],), f"http://127.0.0.1:{PORTS['connect']}", CONNECT_HEAP, _connect_argv,
              lambda ctx: health.connect(ctx.config), _connect_prepare, depends=("kafka",), start_timeout=180),
)

#: Extra idempotent steps run after a component's own bootstrap, by component name (extension
#: modules append to it: e.g. registering connectors once Kafka Connect is healthy).
BOOTSTRAP_HOOKS: dict[str, list[Callable[[Context], Awaitable[None]]]] = {}

#: Steps run before a running component is stopped by ``make down`` (e.g. savepoint the jobs).
STOP_HOOKS: dict[str, list[Callable[[Context], None]]] = {}

#: Modules beside this one that add components (each defines ``COMPONENTS: tuple[Component, ...]``),
#: in start-table order. Imported at the end of this module: they import names defined above.
EXTENSION_MODULES = ("cdc", "services")


def _extensions() -> tuple[Component, ...]:
    import importlib

    extra: list[Component] = []
    for name in EXTENSION_MODULES:
        if (HERE / f"{name}.py").exists():
            extra.extend(importlib.import_module(name).COMPONENTS)
    return tuple(extra)


COMPONENTS: tuple[Component, ...] = CORE + _extensions()
BY_NAME = {c.name: c for c in COMPONENTS}
