"""The purge of synthetic producers on the real Cassandra, and CDC carrying its deletes to PostgreSQL.

Rows of two producers of this test in every table the pipeline writes; a purge matching one of
them deletes exactly its rows (by primary key) in Cassandra, CDC deletes them in PostgreSQL, and
the other producer's rows stay in both. A second purge finds nothing. The match is this test's
producer only, so a concurrent run's synthetic rows are never touched.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from imgstream.adapters.cassandra import CassandraStore
from imgstream.adapters.postgres import connect
from imgstream.config import StackConfig
from imgstream.domain.producers import synthetic
from imgstream.ops.synthetic import TABLES, purge
from imgstream.polling import until

#: CDC from a Cassandra write to PostgreSQL (commit-log sync + poll + sink), on a loaded machine.
CDC_DEADLINE_S = 180.0


def write_rows(store: CassandraStore, producer: str, window: datetime) -> None:
    """One row per table for ``producer`` (an original, its duplicate, a window, a late event)."""
    original, copy = str(uuid.uuid4()), str(uuid.uuid4())
    store.upsert_many("INSERT INTO images (image_id, producer, sha256, status, duplicate_of, received_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      [(original, producer, "a" * 64, "accepted", None, window),
                       (copy, producer, "a" * 64, "duplicate", original, window)])
    store.execute("INSERT INTO duplicates (duplicate_of, image_id, duplicate_kind, distance, producer, received_at) "
                  "VALUES (?, ?, 'exact', 0, ?, ?)", [original, copy, producer, window])
    store.execute("INSERT INTO upload_stats (window_start, producer, content_type, window_end, uploads, final, "
                  "revision) VALUES (?, ?, 'image/png', ?, 2, true, 1)",
                  [window, producer, window + timedelta(minutes=1)])
    store.execute("INSERT INTO late_events (window_start, image_id, producer, status, received_at) "
                  "VALUES (?, ?, ?, 'accepted', ?)", [window, copy, producer, window])


async def counts(pg: Any, producer: str) -> dict[str, int]:
    return {t: await pg.fetchval(f"SELECT count(*) FROM public.{t} WHERE producer = $1", producer) for t in TABLES}


async def test_purge_deletes_exactly_the_matched_rows_and_cdc_follows(stack_config: StackConfig) -> None:
    tag = uuid.uuid4().hex[:8]
    doomed, kept = synthetic(f"it-purge-{tag}"), synthetic(f"it-keep-{tag}")
    # a minute far in the past: no real window, no effect on the newest final window
    window = datetime(2002, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=uuid.uuid4().int % 500_000)
    full = {"images": 2, "duplicates": 1, "upload_stats": 1, "late_events": 1}
    store = CassandraStore.connect(stack_config.cassandra)
    pg = await connect(str(stack_config.postgres.dsn))
    try:
        for producer in (doomed, kept):
            write_rows(store, producer, window)

        async def replicated(producer: str, want: dict[str, int]):
            got = await counts(pg, producer)
            return got if got == want else None

        for producer in (doomed, kept):
            await until(lambda: replicated(producer, full), f"{producer}'s rows in PostgreSQL", timeout=CDC_DEADLINE_S,
                        interval=1.0)

        report = await asyncio.to_thread(purge, store.session, lambda p: p == doomed)
        assert report.deleted == full and report.producers == {doomed}
        assert all(report.scanned[t] >= full[t] for t in TABLES)
        for table in TABLES:
            left = [r for r in store.execute(f"SELECT producer FROM {table}") if r.producer in (doomed, kept)]
            assert sorted(r.producer for r in left) == [kept] * full[table], table

        none = {t: 0 for t in TABLES}
        await until(lambda: replicated(doomed, none), "CDC to delete the purged rows in PostgreSQL",
                    timeout=CDC_DEADLINE_S, interval=1.0)
        assert await counts(pg, kept) == full
        again = await asyncio.to_thread(purge, store.session, lambda p: p == doomed)
        assert again.total == 0
    finally:
        await asyncio.to_thread(purge, store.session, lambda p: p in (doomed, kept))
        store.close()
        await pg.close()
