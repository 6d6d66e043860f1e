"""Heartbeats: a tiny process that writes the current time into every partition of the
upload topic twice a second, so the pipeline's event time advances while no one uploads.

    python -m flink_jobs.heartbeat [--interval-ms=500] [--topic=images.uploaded]

Why in-band: the job's watermark comes only from records in the topic. A wall-clock ticker
inside the job would race a backlog after a restart (jumping the watermark past records not
yet replayed, turning them into too-late events); a heartbeat in the partition is replayed in
its place, after the records before it. Consumers of the topic recognise heartbeats by
``event_type == "stream.heartbeat"`` (see ``imgstream.domain.cleaning.HEARTBEAT_TYPE``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from datetime import datetime, timezone
from typing import Callable

from imgstream.adapters.kafka import open_producer
from imgstream.config import KafkaConfig
from imgstream.domain.cleaning import heartbeat_value
from imgstream.domain.events import TOPIC_UPLOADED

log = logging.getLogger("imgstream.heartbeat")

#: The beat bounds how long after a partition's last upload its watermark waits (plus the
#: out-of-orderness bound): a verdict of a quiet partition's image waits up to one beat more.
#: 500 ms (was 1 s, issue 17); Kafka absorbs this trivially (a few bytes per partition).
DEFAULT_INTERVAL_MS = 500


async def beat_once(producer: object, topic: str, partitions: list[int], origin: str,
                    at: datetime | None = None) -> None:  # fmt: skip
    """Send one heartbeat (``at``, default now) into each partition and wait for the acks."""
    value = heartbeat_value(at or datetime.now(timezone.utc), origin)
    sends = [await producer.send(topic, value, partition=p) for p in partitions]  # type: ignore[attr-defined]
    await asyncio.gather(*sends)


async def run(config: KafkaConfig, topic: str, interval_ms: int, stop: asyncio.Event, origin: str = "heartbeat",
              clock: Callable[[], datetime] | None = None) -> int:  # fmt: skip
    """Beat until ``stop`` is set; returns the number of beats. Partitions are re-read each beat.
    Each beat carries ``clock()`` (default: now) - a test replaying a planned stream passes the
    plan's clock, so no beat ever gets ahead of a planned event still to come."""
    beats = 0
    async with open_producer(config, linger_ms=0) as producer:  # acks=all
        while not stop.is_set():
            partitions = sorted(await producer.partitions_for(topic))
            await beat_once(producer, topic, partitions, origin, clock() if clock else None)
            beats += 1
            try:
                await asyncio.wait_for(stop.wait(), interval_ms / 1000)
            except asyncio.TimeoutError:
                pass  # next beat
    return beats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", default=TOPIC_UPLOADED)
    parser.add_argument("--interval-ms", type=int, default=DEFAULT_INTERVAL_MS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = KafkaConfig.from_env()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("beating into %s every %d ms via %s", args.topic, args.interval_ms, config.bootstrap_servers)
        beats = await run(config, args.topic, args.interval_ms, stop)
        log.info("stopped after %d beats", beats)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
