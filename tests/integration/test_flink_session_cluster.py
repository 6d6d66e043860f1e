"""Submit a PyFlink job to the running session cluster and check what it wrote to Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

import pyflink
from imgstream.adapters.kafka import TopicSpec, delete_topics, ensure_topics, open_consumer, open_producer

JOB = Path(__file__).parent / "jobs" / "kafka_probe.py"
N = 200


def _overview(rest: str) -> dict:
    with urllib.request.urlopen(f"{rest}/overview", timeout=5) as resp:
        return json.loads(resp.read())


def test_cluster_has_a_taskmanager_with_free_slots(stack_config):
    body = _overview(stack_config.flink_rest)
    assert body["taskmanagers"] >= 1
    assert body["slots-available"] >= 1


async def test_pyflink_job_reads_kafka_on_the_session_cluster(stack_config, stack_env, repo_root):
    bootstrap = stack_config.kafka.bootstrap_servers
    src, dst = f"probe-in-{uuid.uuid4().hex[:8]}", f"probe-out-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack_config.kafka, [TopicSpec(src, 2), TopicSpec(dst, 1)])
    try:
        async with open_producer(stack_config.kafka) as producer:
            for i in range(N):
                await producer.send(src, f"m{i}".encode())
            await producer.flush()

        jar = stack_env["IMGSTREAM_FLINK_KAFKA_JAR"]
        assert jar and Path(jar).exists(), "Kafka connector jar not resolved: run `make jars`"
        flink = Path(pyflink.__file__).parent / "bin" / "flink"
        env = dict(os.environ, FLINK_CONF_DIR=str(repo_root / ".stack" / "conf" / "flink"),
                   PYFLINK_CLIENT_EXECUTABLE=sys.executable)
        run = subprocess.run(["bash", str(flink), "run", "-j", jar, "-py", str(JOB), bootstrap, src, dst],
                             capture_output=True, text=True, timeout=600, env=env)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Job has been submitted with JobID" in run.stdout

        async with open_consumer(stack_config.kafka, dst) as consumer:
            got: list[str] = []
            batch = await consumer.getmany(timeout_ms=10000)
            while batch:
                got.extend(r.value.decode() for records in batch.values() for r in records)
                batch = await consumer.getmany(timeout_ms=2000)
        assert sorted(got) == sorted(f"M{i}!" for i in range(N))
    finally:
        await delete_topics(stack_config.kafka, [src, dst])
