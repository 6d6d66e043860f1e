"""Round-trip real rows through the local Cassandra node with the adapter."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from imgstream.adapters.cassandra import CassandraStore


@pytest.fixture()
def store(stack_config):
    with CassandraStore.connect(stack_config.cassandra) as store:
        yield store


@pytest.fixture()
def table(store):
    name = f"it_{uuid.uuid4().hex[:12]}"
    store.execute(
        # no CDC here: a CDC table needs its Kafka topic first, or the CDC agent waits on it (see docs/cdc.md)
        f"CREATE TABLE {name} (id text PRIMARY KEY, n int, at timestamp, tags list<text>)"
    )
    yield name
    store.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize("pipeline_table", ["images", "upload_stats", "duplicates"])
def test_pipeline_tables_exist_with_cdc_enabled(store, stack_config, pipeline_table):
    row = store.execute(
        "SELECT cdc FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
        [stack_config.cassandra.keyspace, pipeline_table],
    )
    assert row and row[0].cdc is True


def test_upsert_many_round_trips_and_is_idempotent(store, table):
    at = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    rows = [(f"k{i}", i, at, [f"t{i}"]) for i in range(500)]
    insert = f"INSERT INTO {table} (id, n, at, tags) VALUES (?, ?, ?, ?)"
    assert store.upsert_many(insert, rows) == 500
    assert store.upsert_many(insert, rows) == 500  # a replay changes nothing
    (count,) = store.execute(f"SELECT count(*) FROM {table}")[0]
    assert count == 500
    got = store.execute(f"SELECT id, n, at, tags FROM {table} WHERE id = ?", ["k42"])[0]
    assert (got.id, got.n, got.tags) == ("k42", 42, ["t42"])
    assert got.at.replace(tzinfo=timezone.utc) == at


async def test_execute_async_reads_every_page(store, table):
    store.upsert_many(f"INSERT INTO {table} (id, n) VALUES (?, ?)", [(f"p{i}", i) for i in range(12000)])
    rows = await store.execute_async(f"SELECT n FROM {table}")  # > one 5000-row page
    assert sorted(r.n for r in rows) == list(range(12000))


async def test_execute_async_surfaces_server_errors(store):
    with pytest.raises(Exception, match="(?i)unconfigured table|does not exist"):
        await store.execute_async("SELECT * FROM no_such_table_here")
