"""Kafka: the :class:`EventPublisher` port, its aiokafka adapter, an in-memory fake, and helpers to
create topics and read them back (tests, tools).

This module is the only place that builds an aiokafka client: services use
:class:`KafkaEventPublisher`, tools and tests :func:`open_producer`, :func:`open_consumer` and
:func:`admin_client`, and every topic is created by :func:`ensure_topics`.

The producer is configured for no loss and no duplicates from its own retries: ``acks=all``
(the leader waits for the in-sync replicas) and ``enable_idempotence`` (the broker drops a batch
the producer re-sends after a lost acknowledgement). ``publish`` returns only once the broker has
acknowledged the record, with its partition and offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, AsyncIterator, Callable, Final, Protocol, Sequence, runtime_checkable

from imgstream.config import KafkaConfig
from imgstream.domain.errors import Unavailable

#: Producer request timeout: how long one produce request may wait for the broker. Above the
#: broker's default replica lag window, well under an HTTP client's patience.
REQUEST_TIMEOUT_MS: Final = 15_000
#: Linger: batch records produced within 5 ms into one request. Costs at most 5 ms of latency per
#: upload and saves a round trip per record under load.
LINGER_MS: Final = 5

#: Record headers as aiokafka takes them: (name, value) pairs.
Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Published:
    """Where a record landed."""

    topic: str
    partition: int
    offset: int


@runtime_checkable
class EventPublisher(Protocol):
    """What the services need to publish events."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless the cluster answers."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Published:
        """Publish one record and return once it is acknowledged."""


@dataclass(frozen=True, slots=True)
class Record:
    """A record as the in-memory publisher keeps it."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    partition: int = 0
    offset: int = 0


class MemoryEventPublisher:
    """In-memory :class:`EventPublisher` for unit tests: ``records`` in publish order.

    ``unavailable`` makes every call fail; ``fail_publishes`` fails that many upcoming publishes.
    ``partitions`` spreads keys over partitions the way a key-hashing partitioner would.
    """

    def __init__(self, partitions: int = 1) -> None:
        self.records: list[Record] = []
        self.partitions = partitions
        self.unavailable = False
        self.fail_publishes = 0
        self.started = False
        self.closed = False
        self._next: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def ping(self) -> None:
        if self.unavailable:
            raise Unavailable("event log unavailable (injected)")

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Published:
        await self.ping()
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise Unavailable("publish failed (injected)")
        await asyncio.sleep(0)
        partition = hash(key) % self.partitions
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + 1
        self.records.append(Record(topic, key, value, tuple(headers), partition, offset))
        return Published(topic, partition, offset)

    def values(self, topic: str) -> list[bytes]:
        """Values published to ``topic``, in order."""
        return [r.value for r in self.records if r.topic == topic]


@dataclass(eq=False, repr=False)
class KafkaEventPublisher:
    """:class:`EventPublisher` on a Kafka cluster (aiokafka, ``acks=all``, idempotent)."""

    config: KafkaConfig
    _: KW_ONLY
    client_id: str = "imgstream"
    linger_ms: int = LINGER_MS
    request_timeout_ms: int = REQUEST_TIMEOUT_MS
    max_request_size: int = 1_048_576
    _producer: Any = field(default=None, init=False)

    def __repr__(self) -> str:
        return f"KafkaEventPublisher(bootstrap={self.config.bootstrap_servers!r})"

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            request_timeout_ms=self.request_timeout_ms,
            max_request_size=self.max_request_size,
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise Unavailable(f"cannot reach Kafka at {self.config.bootstrap_servers}: {exc}",
                              dependency="kafka") from exc
        self._producer = producer

    async def close(self) -> None:
        """Flush what is pending and stop."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def ping(self) -> None:
        from aiokafka.errors import KafkaError

        if self._producer is None:
            raise Unavailable("Kafka producer not started", dependency="kafka")
        try:
            ok = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=5)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"Kafka metadata request failed: {exc!r}", dependency="kafka") from exc
        if ok is None or not ok.brokers():
            raise Unavailable("Kafka returned no brokers", dependency="kafka")

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Published:
        from aiokafka.errors import KafkaError

        if self._producer is None:
            raise Unavailable("Kafka producer not started", dependency="kafka")
        try:
            meta = await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers))
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"publishing to {topic} failed: {exc!r}", dependency="kafka") from exc
        return Published(meta.topic, meta.partition, meta.offset)


# --- topics and reading back ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and per-topic configs."""

    name: str
    partitions: int = 3
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def admin_client(config: KafkaConfig, *, timeout_ms: int = 30_000) -> AsyncIterator[Any]:
    """A started ``AIOKafkaAdminClient``, closed on exit (also when starting it fails)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def open_producer(config: KafkaConfig, **options: Any) -> AsyncIterator[Any]:
    """A started ``AIOKafkaProducer`` (``acks=all`` unless ``options`` say otherwise), stopped on
    exit. For tools, generators and tests; services publish through :class:`KafkaEventPublisher`."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers, **{"acks": "all", **options})
    try:  # stopped on a failed start too: else its half-open connections leak with a warning
        await producer.start()
        yield producer
    finally:
        await producer.stop()


async def list_topics(config: KafkaConfig, *, timeout_ms: int = 30_000) -> set[str]:
    """The names of the topics that exist."""
    async with admin_client(config, timeout_ms=timeout_ms) as admin:
        return set(await admin.list_topics())


async def delete_topics(config: KafkaConfig, names: Sequence[str], *, timeout_ms: int = 30_000) -> None:
    """Delete those of ``names`` that exist (idempotent)."""
    async with admin_client(config, timeout_ms=timeout_ms) as admin:
        present = [n for n in names if n in set(await admin.list_topics())]
        if present:
            await admin.delete_topics(present, timeout_ms=timeout_ms)


async def ensure_topics(config: KafkaConfig, topics: Sequence[TopicSpec], *, timeout_ms: int = 30_000) -> list[str]:
    """Create the topics that do not exist yet (idempotent). Returns the names created."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

    created: list[str] = []
    try:
        async with admin_client(config, timeout_ms=timeout_ms) as admin:
            existing = set(await admin.list_topics())
            wanted = [t for t in topics if t.name not in existing]
            if not wanted:
                return created
            response = await admin.create_topics(
                [NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=dict(t.configs)) for t in wanted],
                timeout_ms=timeout_ms,
            )
    except (KafkaError, OSError) as exc:
        raise Unavailable(f"Kafka admin request failed: {exc!r}", dependency="kafka") from exc
    for item in response.topic_errors:
        name, code = item[0], item[1]
        if code == 0:
            created.append(name)
            continue
        error = for_code(code)
        if error is not TopicAlreadyExistsError:  # lost a race with another creator: fine
            raise Unavailable(f"cannot create topic {name}: {error.__name__} {item[2:]!r}", dependency="kafka")
    return created


@contextlib.asynccontextmanager
async def open_consumer(config: KafkaConfig, *topics: str, group_id: str | None = None,
                        from_beginning: bool = True, **options: Any) -> AsyncIterator[Any]:
    """A started ``AIOKafkaConsumer`` (``read_committed``, no auto-commit), stopped on exit."""
    from aiokafka import AIOKafkaConsumer

    settings: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if from_beginning else "latest",
        "isolation_level": "read_committed",
    }
    settings.update(options)  # callers may override any default (e.g. read_uncommitted)
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=config.bootstrap_servers, **settings)
    try:  # stopped on a failed start too ("Unclosed AIOKafkaConsumer" in `make status`, Kafka down)
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def end_offsets(config: KafkaConfig, topic: str) -> dict[int, int]:
    """partition -> the offset the next record will get (the log end), for every partition."""
    from aiokafka import TopicPartition

    async with open_consumer(config) as consumer:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # topic may be new to this client
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: offset for tp, offset in ends.items()}


async def read_between(config: KafkaConfig, topic: str, start: dict[int, int], *,
                       until: Callable[[list[Any]], bool] | None = None, timeout: float = 30.0) -> list[Any]:
    """Read ``topic`` from the ``start`` offsets (partition -> offset; missing partitions from 0)
    until the log end seen when called, or until ``until(records)`` is true, or ``timeout``.

    Returns ``ConsumerRecord`` objects ordered by (partition, offset).
    """
    from aiokafka import TopicPartition

    stop = await end_offsets(config, topic) if until is None else None
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    async with open_consumer(config) as consumer:
        partitions = sorted(set(start) | set(stop or {}) | set(consumer.partitions_for_topic(topic) or set()))
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))

        def done() -> bool:
            if until is not None:
                return until(records)
            assert stop is not None
            return all(
                max([r.offset + 1 for r in records if r.partition == p] + [start.get(p, 0)]) >= end
                for p, end in stop.items()
            )

        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for items in batch.values():
                records.extend(items)
    return sorted(records, key=lambda r: (r.partition, r.offset))


#: ``config_source`` of a topic's own (dynamic) setting in DescribeConfigs v1+.
_DYNAMIC_TOPIC_CONFIG = 1


async def ensure_topic_configs(config: KafkaConfig, topic: str, wanted: dict[str, str], *,
                               timeout_ms: int = 30_000) -> bool:
    """Set ``wanted`` on an existing ``topic`` unless it already has them (idempotent); the
    topic's other own settings are kept. Returns whether anything changed."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    try:
        async with admin_client(config, timeout_ms=timeout_ms) as admin:
            (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            error_code, error_message, _, _, entries = response.resources[0]
            if error_code:
                raise Unavailable(f"cannot describe topic {topic}: {error_code} {error_message}", dependency="kafka")
            current, own = {}, {}
            for entry in entries:
                name, value = entry[0], entry[1]
                current[name] = value
                # v0: (name, value, read_only, is_default, sensitive); v1+: (..., config_source, ...)
                is_own = (not entry[3]) if len(entry) == 5 else entry[3] == _DYNAMIC_TOPIC_CONFIG
                if is_own and value is not None:
                    own[name] = value
            if all(current.get(k) == v for k, v in wanted.items()):
                return False
            # AlterConfigs replaces the topic's whole set of own settings: send the kept ones too
            altered = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                configs={**own, **wanted})])
    except (KafkaError, OSError) as exc:
        raise Unavailable(f"Kafka admin request failed: {exc!r}", dependency="kafka") from exc
    for item in (resource for reply in altered for resource in reply.resources):
        if item[0]:
            raise Unavailable(f"cannot alter topic {topic}: {item[0]} {item[1]}", dependency="kafka")
    return True


async def retained_records(config: KafkaConfig, topic: str) -> int | None:
    """How many records ``topic`` holds now (log end minus log start, summed over partitions;
    transaction markers count too), ``None`` when the topic does not exist."""
    from aiokafka import TopicPartition

    async with open_consumer(config) as consumer:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    return sum(ends[tp] - starts[tp] for tp in tps)
