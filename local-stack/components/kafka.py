"""Kafka (KRaft, broker + controller in one JVM): storage formatted once, the design's topics
created once it answers a metadata request."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from typing import Callable

from imgstream.adapters.kafka import TopicSpec, ensure_topic_configs, ensure_topics

import health
from component import PORTS, TEMPLATES, Component, Context, classpath, render

#: Topics the design needs: name -> partitions. The upload topic is keyed by image_id.
TOPICS: dict[str, int] = {
    "images.uploaded": 3,
    "images.dlq": 1,
    "images.deleted": 3,  # deletions (DELETE /v1/images/{id}), keyed by image_id
}

# JVM heaps sized for 2 cores / 24 GiB shared by six JVMs and the Python services.
KAFKA_HEAP = "1g"


def kafka_uuid(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never starting with ``-``, like Kafka's own ``Uuid.randomUuid``: the storage tool's parser
    takes ``-t -Abc...`` for an option, and a fresh stack failed to format (1 start in 64).
    """
    while True:
        cid = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def prepare(ctx: Context) -> None:
    """Render the broker's properties and log config; format the storage on first start."""
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
         "kafka.tools.StorageTool", "format", "--standalone", "-t", kafka_uuid(), "-c", str(props)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")


def argv(ctx: Context) -> list[str]:
    conf = ctx.paths.conf / "kafka"
    return [ctx.java, f"-Xms{KAFKA_HEAP}", f"-Xmx{KAFKA_HEAP}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            "-cp", classpath(ctx.paths.lib / "kafka"), "kafka.Kafka", str(conf / "server.properties")]


#: The upload topic's records carry the broker's append time: the pipeline bounds a gateway's
#: ``received_at`` by it (imgstream/domain/clock.py), so it must not be the gateway's own clock.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "images.uploaded": {"message.timestamp.type": "LogAppendTime"},
}


async def bootstrap(ctx: Context) -> None:
    """Create the design's topics (the broker does not auto-create them), with their settings
    (also on a topic that exists already)."""
    await ensure_topics(ctx.config.kafka, [TopicSpec(name, partitions) for name, partitions in TOPICS.items()])
    for name, configs in TOPIC_CONFIGS.items():
        if await ensure_topic_configs(ctx.config.kafka, name, configs):
            print(f"  kafka    {name}: set {configs}", flush=True)


async def check(ctx: Context) -> str | None:
    return await health.kafka(ctx.config)


COMPONENT = Component(
    "kafka", (PORTS["kafka"], PORTS["kafka_controller"]), f"127.0.0.1:{PORTS['kafka']}", KAFKA_HEAP,
    argv, check, prepare, bootstrap, start_timeout=120,
)
