"""A throw-away CDC probe table: prove the Cassandra -> Kafka -> Kafka Connect -> PostgreSQL chain.

Used by the CDC tests and ``bench/cdc_latency.py``; also handy by hand after an incident.
A probe is a Cassandra table ``WITH cdc = true`` whose topic is created first (the broker does not
auto-create topics), that the sink (``topics.regex`` over ``cdc.imgstream.*``) replicates into a
PostgreSQL table of the same name, which the sink creates.

Lifecycle, each step a poll with a deadline:

* :meth:`CdcProbe.create` also *arms* the probe: the agent learns a new table's schema from the
  driver's schema events, so writes in the first moments after ``CREATE TABLE`` are skipped by it;
  a sentinel row is rewritten until PostgreSQL has it, then deleted.
* :meth:`CdcProbe.drop` waits until the sink has consumed and committed everything of the probe's
  topic before dropping the PostgreSQL table: dropping it under in-flight records fails the sink
  task (a ``relation does not exist`` is not an errant record).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from imgstream.adapters.kafka import TopicSpec, admin_client, delete_topics, end_offsets, ensure_topics
from imgstream.config import KafkaConfig
from imgstream.ops.cdc import CDC_TOPIC_PARTITIONS, cdc_topic
from imgstream.ops.cdc_reconcile import Diff, cassandra_rows, compare, postgres_rows
from imgstream.polling import PollTimeout, until

#: The sink's consumer group (Kafka Connect names it ``connect-<connector>``).
SINK_GROUP = "connect-cdc-postgres-sink"
#: How long one change may take end to end before a probe gives up (the aim is p99 < 15 s; a new
#: topic is found by the sink's consumer within its metadata refresh, 5 s).
CHANGE_DEADLINE_S = 60.0


@dataclass
class CdcProbe:
    """One probe table: ``columns`` (name -> CQL type), ``key`` its primary key (first = partition)."""

    store: Any          # imgstream.adapters.cassandra.CassandraStore
    pg: Any             # asyncpg.Connection
    kafka: KafkaConfig
    table: str
    columns: Mapping[str, str]
    key: Sequence[str]

    @property
    def topic(self) -> str:
        return cdc_topic(self.table)

    @property
    def values(self) -> list[str]:
        return [c for c in self.columns if c not in self.key]

    def insert_cql(self) -> str:
        names = list(self.columns)
        return f"INSERT INTO {self.table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

    def write(self, rows: Sequence[Sequence[Any]]) -> int:
        """Upsert whole rows (values in ``columns`` order)."""
        return self.store.upsert_many(self.insert_cql(), rows)

    async def create(self, sentinel: Sequence[Any], deadline_s: float = CHANGE_DEADLINE_S) -> None:
        """Topic, table, then arm with ``sentinel`` (a whole row, deleted again once replicated)."""
        await ensure_topics(self.kafka, [TopicSpec(self.topic, CDC_TOPIC_PARTITIONS)])
        cols = ", ".join(f"{name} {cql}" for name, cql in self.columns.items())
        pk = f"(({self.key[0]}){''.join(', ' + k for k in self.key[1:])})"
        await asyncio.to_thread(self.store.execute, f"CREATE TABLE {self.table} ({cols}, PRIMARY KEY {pk}) "
                                "WITH cdc = true", None, timeout=60)
        where = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(self.key))
        key_values = list(sentinel[: len(self.key)])

        async def sentinel_replicated() -> bool:
            self.write([sentinel])
            try:
                return bool(await self.pg.fetchval(f"SELECT count(*) FROM {self.table} WHERE {where}", *key_values))
            except Exception as exc:  # asyncpg.UndefinedTableError until the sink created the table
                if type(exc).__name__ != "UndefinedTableError":
                    raise
                return False

        await until(sentinel_replicated, f"{self.table}: the CDC chain picks up the new table",
                    timeout=deadline_s, interval=1.0)
        cql_where = " AND ".join(f"{k} = ?" for k in self.key)
        self.store.execute(f"DELETE FROM {self.table} WHERE {cql_where}", key_values)
        await self.wait_equal(deadline_s)

    def source(self) -> dict:
        return cassandra_rows(self.store, self.table, self.key, self.values)

    async def replica(self) -> dict:
        return await postgres_rows(self.pg, self.table, self.key, self.values)

    async def diff(self) -> Diff:
        return compare(await asyncio.to_thread(self.source), await self.replica())

    async def wait_equal(self, deadline_s: float = CHANGE_DEADLINE_S) -> Diff:
        """Poll until PostgreSQL holds exactly Cassandra's rows; raise :class:`PollTimeout` with the diff."""
        source = await asyncio.to_thread(self.source)
        last: list[Diff] = []

        async def equal() -> bool:
            last[:] = [compare(source, await self.replica())]
            return last[0].equal

        try:
            await until(equal, f"{self.table} replicated", timeout=deadline_s)
        except PollTimeout:
            raise PollTimeout(f"{self.table}: {last[0].summary() if last else 'never compared'}") from None
        return last[0]

    async def sink_lag(self) -> int:
        """Records of the probe's topic the sink has not committed yet."""
        from aiokafka import TopicPartition

        tp = TopicPartition(self.topic, 0)
        end = (await end_offsets(self.kafka, self.topic)).get(0, 0)
        async with admin_client(self.kafka) as admin:
            committed = await admin.list_consumer_group_offsets(SINK_GROUP, partitions=[tp])
        meta = committed.get(tp)
        return end - (meta.offset if meta is not None and meta.offset >= 0 else 0)

    async def drop(self, deadline_s: float = CHANGE_DEADLINE_S) -> None:
        """Drop the Cassandra table; once the sink is idle on the topic, the topic and the replica."""
        await asyncio.to_thread(self.store.execute, f"DROP TABLE IF EXISTS {self.table}", None, timeout=60)

        async def idle() -> bool:
            return await self.sink_lag() == 0

        try:
            await until(idle, f"{self.table}: the sink consumed its topic", timeout=deadline_s)
        finally:
            await delete_topics(self.kafka, [self.topic])
        await self.pg.execute(f'DROP TABLE IF EXISTS public."{self.table}"')
