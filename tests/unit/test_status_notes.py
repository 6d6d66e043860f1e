"""`make status` names the dead-letter topics and their size (issue 16, item 6): a CDC change
PostgreSQL did not apply must not stay silent."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "local-stack"))

import component  # noqa: E402
import status_notes  # noqa: E402


def test_status_lines_count_each_dead_letter_topic_and_flag_a_non_empty_one(tmp_path, monkeypatch):
    counts = {"images.dlq": 0, "cdc.dlq": 3}

    async def retained(config, topic):
        if topic not in counts:
            raise OSError("unreachable")
        return counts[topic]

    import imgstream.adapters.kafka as kafka

    monkeypatch.setattr(kafka, "retained_records", retained)
    ctx = component.Context(paths=component.Paths.for_repo(tmp_path), s3_secret="s", java="/bin/true")
    lines = status_notes.lines(ctx)
    (cdc,) = [line for line in lines if "cdc.dlq" in line]
    (pipeline,) = [line for line in lines if "images.dlq" in line]
    assert "3 record(s)" in cdc and "not empty" in cdc and "docs/cdc.md" in cdc
    assert "0 record(s)" in pipeline and "not empty" not in pipeline
    counts.pop("cdc.dlq")  # Kafka cannot answer: said so, never an exception
    assert any("cdc.dlq" in line and "unknown" in line for line in status_notes.lines(ctx))


def test_kafka_down_leaves_no_half_started_client_behind(recwarn):
    """`make status` with Kafka down printed "Unclosed AIOKafkaConsumer": a client whose start()
    failed was never stopped. Port 1 on loopback refuses at once."""
    import asyncio
    import gc

    import pytest

    from imgstream.adapters.kafka import open_consumer, open_producer
    from imgstream.config import KafkaConfig

    down = KafkaConfig("127.0.0.1:1")

    async def both():
        for opener in (open_consumer, open_producer):
            with pytest.raises(Exception, match="127.0.0.1"):
                async with opener(down):
                    raise AssertionError("started against a closed port")

    asyncio.run(both())
    gc.collect()
    assert not [w for w in recwarn if "Unclosed" in str(w.message)]
