"""Kafka Connect (distributed worker) and what it runs: once it is healthy, the CDC and
dead-letter topics are created, the JDBC sink's connection file written, and every
``connectors/*.json`` (checked by :func:`imgstream.ops.cdc.config_problems` first) registered with
``PUT /connectors/<name>/config`` (idempotent: same body, same connector); a FAILED task is
restarted, so ``make up`` heals.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imgstream.adapters.kafka import TopicSpec, ensure_topics
from imgstream.ops.cdc import CDC_TOPIC_PARTITIONS, DLQ_TOPIC, config_problems

import health
from component import PORTS, TEMPLATES, Component, Context, classpath, render

CONNECT_HEAP = "1g"

#: The file the sink's connection settings are read from by Connect's FileConfigProvider, relative
#: to the worker's working directory (the repo root: stackctl starts every component there).
SINK_SECRETS_FILE = ".stack/secrets/cdc-sink.properties"

CONNECTORS_DIR = "connectors"


def prepare(ctx: Context) -> None:
    conf = ctx.paths.conf / "connect"
    plugins = ctx.paths.lib / "connect-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    render("connect-worker.properties", conf / "worker.properties", {
        "kafka_port": PORTS["kafka"], "connect_port": PORTS["connect"], "plugin_path": plugins,
    })
    shutil.copy(TEMPLATES / "kafka-log4j2.properties", conf / "log4j2.properties")


def argv(ctx: Context) -> list[str]:
    conf = ctx.paths.conf / "connect"
    return [ctx.java, "-Xms256m", f"-Xmx{CONNECT_HEAP}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-Duser.timezone=UTC",  # the JDBC sink writes zone-less timestamps: make them UTC everywhere
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            "-cp", classpath(ctx.paths.lib / "kafka"),
            "org.apache.kafka.connect.cli.ConnectDistributed", str(conf / "worker.properties")]


async def check(ctx: Context) -> str | None:
    return await health.connect(ctx.config)


# --- connectors ----------------------------------------------------------------------------------

def connector_files(root: Path) -> list[Path]:
    """The connectors the local stack registers: ``connectors/*.json`` (not ``production/``)."""
    return sorted((root / CONNECTORS_DIR).glob("*.json"))


def _write_sink_secrets(ctx: Context) -> None:
    """The JDBC sink's connection settings, read by reference (``${file:...}``), mode 0600."""
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


def _topics_of(config: dict[str, Any]) -> list[str]:
    return [t.strip() for t in str(config.get("topics", "")).split(",") if t.strip()]


async def bootstrap(ctx: Context) -> None:
    """Topics, the sink's connection file, then every connector registered (and healed)."""
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
    await ensure_topics(ctx.config.kafka, [TopicSpec(name, partitions) for name, partitions in topics.items()])
    for name, config in connectors:
        await asyncio.to_thread(register_connector, ctx.config.connect_rest, name, config)
        await asyncio.to_thread(restart_failed_tasks, ctx.config.connect_rest, name)


COMPONENT = Component(
    "connect", (PORTS["connect"],), f"http://127.0.0.1:{PORTS['connect']}", CONNECT_HEAP, argv, check, prepare,
    bootstrap, depends=("kafka",), start_timeout=180,
)
