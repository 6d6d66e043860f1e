"""PostgreSQL keeps the newest version of a replicated row whatever order changes arrive in
(issue 16, item 6): an older change applied after a newer one is ignored.

The statements are the JDBC sink's form (``INSERT ... ON CONFLICT (key) DO UPDATE SET col =
EXCLUDED.col``) on the real replicated tables, with keys of this test's own; the guard script is
applied first as `make up` applies it (idempotent)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from imgstream.domain.producers import synthetic

GUARD = Path(__file__).resolve().parents[2] / "connectors" / "postgres" / "30-cdc-order.sql"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
UPSERT_STATS = """
INSERT INTO public.upload_stats (window_start, producer, content_type, window_end, uploads, revision, final,
                                 cdc_op, cdc_ts)
VALUES ($1::timestamptz, $2, 'image/png', $1::timestamptz + interval '1 minute', $3, $4, $5, 'u', $6)
ON CONFLICT (window_start, producer, content_type) DO UPDATE SET
    window_end = EXCLUDED.window_end, uploads = EXCLUDED.uploads, revision = EXCLUDED.revision,
    final = EXCLUDED.final, cdc_op = EXCLUDED.cdc_op, cdc_ts = EXCLUDED.cdc_ts
"""
UPSERT_IMAGE = """
INSERT INTO public.images (image_id, producer, status, duplicate_of, cdc_op, cdc_ts) VALUES ($1, $2, $3, $4, 'u', $5)
ON CONFLICT (image_id) DO UPDATE SET producer = EXCLUDED.producer, status = EXCLUDED.status,
    duplicate_of = EXCLUDED.duplicate_of, cdc_op = EXCLUDED.cdc_op, cdc_ts = EXCLUDED.cdc_ts
"""


@pytest.fixture()
async def pg(stack_config):
    conn = await asyncpg.connect(str(stack_config.postgres.dsn))
    await conn.execute(GUARD.read_text())
    producer = synthetic(f"it-cdc-order-{uuid.uuid4().hex[:8]}")
    try:
        yield conn, producer
    finally:
        await conn.execute("DELETE FROM public.upload_stats WHERE producer = $1", producer)
        await conn.execute("DELETE FROM public.images WHERE producer = $1", producer)
        await conn.close()


async def test_an_older_revision_applied_after_a_newer_one_is_ignored(pg):
    conn, producer = pg
    newer, older = T0 + timedelta(seconds=5), T0 + timedelta(seconds=2)
    await conn.execute(UPSERT_STATS, T0, producer, 500, 3, True, newer)  # the final version arrives first
    await conn.execute(UPSERT_STATS, T0, producer, 1, 1, False, older)  # then a stale one (DLQ replay)
    row = await conn.fetchrow("SELECT uploads, revision, final, cdc_ts FROM public.upload_stats "
                              "WHERE window_start = $1 AND producer = $2", T0, producer)
    assert (row["uploads"], row["revision"], row["final"], row["cdc_ts"]) == (500, 3, True, newer)
    # a tie of the millisecond cdc_ts is broken by revision; a newer change still applies
    await conn.execute(UPSERT_STATS, T0, producer, 2, 2, False, newer)
    assert await conn.fetchval("SELECT revision FROM public.upload_stats WHERE producer = $1", producer) == 3
    await conn.execute(UPSERT_STATS, T0, producer, 501, 4, True, newer + timedelta(milliseconds=1))
    assert await conn.fetchval("SELECT uploads FROM public.upload_stats WHERE producer = $1", producer) == 501


async def test_an_older_image_verdict_does_not_replace_a_newer_one(pg):
    conn, producer = pg
    image_id = str(uuid.uuid4())
    await conn.execute(UPSERT_IMAGE, image_id, producer, "duplicate", "orig", T0 + timedelta(seconds=9))
    await conn.execute(UPSERT_IMAGE, image_id, producer, "pending", None, T0 + timedelta(seconds=1))
    row = await conn.fetchrow("SELECT status, duplicate_of FROM public.images WHERE image_id = $1", image_id)
    assert (row["status"], row["duplicate_of"]) == ("duplicate", "orig")
