"""KafkaEventPublisher, topic creation and read-back against the stack's real Kafka (own topic)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from imgstream.adapters.kafka import KafkaEventPublisher, TopicSpec, end_offsets, ensure_topics, read_between
from imgstream.config import StackConfig
from imgstream.domain.errors import Unavailable
from tests.fixtures.stack import drop_topic, it_topic  # noqa: F401  (fixture)


async def test_publish_is_acknowledged_and_reads_back_in_order(stack_config: StackConfig, it_topic: str) -> None:
    start = await end_offsets(stack_config.kafka, it_topic)
    assert set(start) == {0, 1, 2}
    publisher = KafkaEventPublisher(stack_config.kafka, client_id="it-publisher")
    await publisher.start()
    try:
        await publisher.ping()
        sent = await asyncio.gather(*(
            publisher.publish(it_topic, f"key-{i % 7}".encode(), f"value-{i}".encode(), headers=[("n", str(i).encode())])
            for i in range(60)))
    finally:
        await publisher.close()
    assert all(p.topic == it_topic for p in sent)
    records = await read_between(stack_config.kafka, it_topic, start, timeout=30)
    assert sorted(r.value for r in records) == sorted(f"value-{i}".encode() for i in range(60))
    by_key: dict[bytes, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.partition)
        assert dict(record.headers)["n"] == record.value.split(b"-")[1]
    assert all(len(parts) == 1 for parts in by_key.values())  # one key, one partition: per-image order
    landed = {(r.partition, r.offset) for r in records}
    assert {(p.partition, p.offset) for p in sent} == landed  # the acknowledged offsets are real


async def test_ensure_topics_is_idempotent(stack_config: StackConfig) -> None:
    topic = f"it.ensure.{uuid.uuid4().hex[:10]}"
    try:
        assert await ensure_topics(stack_config.kafka, [TopicSpec(topic, partitions=2)]) == [topic]
        assert await ensure_topics(stack_config.kafka, [TopicSpec(topic, partitions=2)]) == []
        assert set(await end_offsets(stack_config.kafka, topic)) == {0, 1}
    finally:
        await drop_topic(stack_config, topic)


async def test_unreachable_cluster_is_unavailable(stack_config: StackConfig) -> None:
    down = KafkaEventPublisher(dataclasses.replace(stack_config.kafka, bootstrap_servers="127.0.0.1:1"))
    with pytest.raises(Unavailable):
        await down.start()
    with pytest.raises(Unavailable):
        await down.publish("t", b"k", b"v")
