"""What every component module of the local stack shares: the :class:`Component` record, the
:class:`Context` it is prepared and started with, the state folder's :class:`Paths`, the port
table, and small helpers (config templates, JVM class paths, the Java 17 binary).

Each module of ``components/`` describes one component with these; ``stack.py`` lists them in
start order. This module imports none of them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from imgstream.config import StackConfig

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

#: Variables a component must not inherit from whoever runs stackctl: JVM option overrides, and
#: what PyFlink's in-process (loopback) Python worker writes into its host's environment - a
#: TaskManager started with PYTHON_LOOPBACK_SERVER_ADDRESS runs every Python worker inside that
#: process (found when a test restarted the TaskManager after a mini-cluster test had run).
INHERITED_ENV_DROPPED = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "PYTHON_LOOPBACK_SERVER_ADDRESS", "_PYTHON_WORKING_DIR")


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
    """A JVM class path: a folder of jars as ``folder/*``, a conf folder (no jars) or a file as is."""
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


#: A step run once a component is healthy (idempotent: it runs at every ``make up``).
Bootstrap = Callable[[Context], Awaitable[None]]
#: A step run before a running component is stopped by ``make down``.
StopStep = Callable[[Context], None]


def _nothing(ctx: Context) -> None:
    """The default ``prepare``: nothing to render or format."""


def _no_env(ctx: Context) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Component:
    """One process of the stack."""

    name: str
    ports: tuple[int, ...]
    url: str
    heap: str
    argv: Callable[[Context], list[str]]
    health: Callable[[Context], Awaitable[str | None]]
    prepare: Callable[[Context], None] = _nothing
    bootstrap: Bootstrap | None = None
    depends: tuple[str, ...] = ()
    start_timeout: float = 120.0
    run_as: str | None = None
    extra_env: Callable[[Context], dict[str, str]] = _no_env

    def data_dir(self, ctx: Context) -> Path:
        return ctx.paths.data / self.name

    def conf_dir(self, ctx: Context) -> Path:
        return ctx.paths.conf / self.name
