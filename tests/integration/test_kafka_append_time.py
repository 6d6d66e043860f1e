"""The upload topic stamps records with the broker's append time (issue 16, item 5): the
pipeline bounds ``received_at`` by it, so it must not be a producer's (a gateway's) clock."""

from __future__ import annotations

import time

from imgstream.adapters.kafka import ensure_topic_configs, open_consumer, open_producer
from imgstream.config import StackConfig
from tests.fixtures.stack import it_topic  # noqa: F401  (fixture)

HOUR_MS = 3_600_000
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


async def test_append_time_replaces_a_producers_clock_and_is_set_idempotently(stack_config: StackConfig,
                                                                               it_topic: str) -> None:
    assert await ensure_topic_configs(stack_config.kafka, it_topic, {"retention.ms": "7200000"})
    assert await ensure_topic_configs(stack_config.kafka, it_topic, APPEND_TIME)
    assert not await ensure_topic_configs(stack_config.kafka, it_topic, APPEND_TIME)  # already set
    assert not await ensure_topic_configs(stack_config.kafka, it_topic, {"retention.ms": "7200000"})  # kept

    skewed = int(time.time() * 1000) + 3 * HOUR_MS  # a producer whose clock is 3 h ahead
    async with open_producer(stack_config.kafka) as producer:
        await producer.send_and_wait(it_topic, b"v", key=b"k", timestamp_ms=skewed)
    before_read = int(time.time() * 1000)
    records = []
    deadline = time.monotonic() + 30
    async with open_consumer(stack_config.kafka, it_topic) as consumer:
        while not records and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=2_000)
            records = [r for rs in batch.values() for r in rs]
    (record,) = records
    assert record.timestamp <= before_read < skewed - HOUR_MS  # the broker's clock, not the producer's
