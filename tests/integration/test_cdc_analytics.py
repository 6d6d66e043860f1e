"""The analyst surface in PostgreSQL: documented views exist, example queries run, the role is read-only."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from api.stats.queries.freshness import freshness_entry, freshness_sql
from api.stats.times import as_utc
from imgstream.adapters.postgres import connect
from imgstream.ops.cdc import TABLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
VIEWS = ["images", "upload_stats", "upload_stats_hourly", "upload_stats_daily", "duplicates", "late_events",
         "freshness"]


def _examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture
async def analyst(stack_config):
    conn = await connect(str(stack_config.postgres.dsn).replace("imgstream@", "analyst@", 1))
    yield conn
    await conn.close()


def test_the_doc_has_examples():
    assert len(_examples()) >= 5


@pytest.mark.parametrize("sql", _examples(), ids=lambda s: s.split("\n")[0][:50])
async def test_documented_example_runs_as_analyst(analyst, sql):
    await analyst.fetch(sql)  # raises on any error


async def test_every_documented_view_exists_and_each_doc_column_is_real(analyst):
    text = DOC.read_text()
    for view in VIEWS:
        assert f"`analytics.{view}`" in text, view
        columns = {r["column_name"] for r in await analyst.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'analytics' AND table_name = $1",
            view)}
        assert columns, f"analytics.{view} missing"
    images = {r["column_name"] for r in await analyst.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'analytics' AND table_name = 'images'")}
    table = text.split("## `analytics.images`")[1].split("##")[0]
    documented = {c for cell in re.findall(r"^\| (`[^|]+`) \|", table, re.M) for c in re.findall(r"`(\w+)`", cell)}
    assert documented == images


async def test_analyst_cannot_write(analyst):
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await analyst.execute("INSERT INTO public.images (image_id) VALUES ('not-allowed')")


async def test_freshness_lists_every_replicated_table(analyst):
    # the stats API's own freshness query, run as the analyst role
    now = datetime.now(timezone.utc)
    rows = await analyst.fetch(freshness_sql().text)
    assert sorted(r["table_name"] for r in rows) == sorted(TABLES)
    for r in rows:
        entry = freshness_entry(r, now)
        assert (entry["newest_change_at"] is None) == (entry["lag_seconds"] is None)
        if r["newest_change_at"] is not None:
            # same clock: a change is never (much) in the future
            assert as_utc(r["newest_change_at"]) <= now + timedelta(seconds=5)
        assert ("final_until" in entry) == (r["table_name"] == "upload_stats")
