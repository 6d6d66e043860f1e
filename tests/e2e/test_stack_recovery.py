"""A killed component is reported by `status` and brought back by `up` with its data intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from imgstream.adapters.kafka import TopicSpec, delete_topics, ensure_topics, open_consumer, open_producer


def _stackctl(repo_root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(repo_root / "local-stack" / "stackctl.py"), *args],
                          capture_output=True, text=True, timeout=600)


def _pid(repo_root, name: str) -> int:
    return int((repo_root / ".stack" / "run" / f"{name}.pid").read_text().split()[0])


async def test_kill_9_kafka_then_up_keeps_the_data(repo_root, stack_config):
    topic = f"recovery-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack_config.kafka, [TopicSpec(topic, 1)])
    async with open_producer(stack_config.kafka) as producer:
        await producer.send_and_wait(topic, b"written-before-the-crash")

    old = _pid(repo_root, "kafka")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{old}") and time.monotonic() < deadline:
        time.sleep(0.1)

    status = _stackctl(repo_root, "status")
    assert status.returncode == 3
    kafka_line = next(line for line in status.stdout.splitlines() if line.startswith("kafka "))
    assert "down" in kafka_line

    up = _stackctl(repo_root, "up")
    assert up.returncode == 0, up.stdout[-3000:]
    assert _pid(repo_root, "kafka") != old
    assert "started  kafka" in up.stdout
    assert "started  cassandra" not in up.stdout  # nothing running is started twice

    try:
        async with open_consumer(stack_config.kafka, topic) as consumer:
            record = await consumer.getone()
            assert record.value == b"written-before-the-crash"
    finally:
        await delete_topics(stack_config.kafka, [topic])
