"""The batch service's CDC tables (derivatives, gc_log) reach PostgreSQL through the existing chain
(Cassandra CDC agent -> Kafka -> JDBC sink), including their deletes."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

import asyncpg

from imgstream.adapters.cassandra import open_session
from imgstream.config import StackConfig

#: The chain's latency is a few seconds (commit-log sync + agent poll + sink flush); a restarting
#: Connect worker can take a minute.
DEADLINE_S = 120


async def _count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def _wait(dsn: str, sql: str, arg: str, expected: int) -> int:
    deadline = time.monotonic() + DEADLINE_S
    seen = -1
    while time.monotonic() < deadline:
        seen = await _count(dsn, sql, arg)
        if seen == expected:
            return seen
        await asyncio.sleep(0.5)
    return seen


async def test_derivatives_and_gc_log_replicate_with_deletes(stack_config: StackConfig) -> None:
    run = f"it-cdc-{uuid.uuid4().hex[:10]}"
    sha = uuid.uuid4().hex * 2
    cluster, session = open_session(stack_config.cassandra)
    dsn = str(stack_config.postgres.dsn)
    try:
        now = datetime.now(timezone.utc)
        for preset in ("thumb", "small"):
            session.execute("INSERT INTO derivatives (sha256, ladder, preset, format, width, height, size, storage_key, "
                            "created_at, run_id) VALUES (%s, 'it', %s, 'webp', 10, 8, 123, %s, %s, %s)",
                            (sha, preset, f"derived/it/{preset}/{sha[:2]}/{sha}.webp", now, run))
        session.execute("INSERT INTO gc_log (run_id, storage_key, action, reason, size, sha256, mode, at) "
                        "VALUES (%s, 'k', 'candidate', 'orphan', 1, %s, 'dry-run', %s)", (run, sha, now))
        views = "SELECT count(*) FROM analytics.derivatives WHERE sha256 = $1 AND width = 10 AND size = 123"
        assert await _wait(dsn, views, sha, 2) == 2
        assert await _wait(dsn, "SELECT count(*) FROM analytics.gc_log WHERE run_id = $1 AND action = 'candidate'",
                           run, 1) == 1
        session.execute("DELETE FROM derivatives WHERE sha256 = %s AND ladder = 'it' AND preset = 'thumb' "
                        "AND format = 'webp'", (sha,))
        assert await _wait(dsn, "SELECT count(*) FROM public.derivatives WHERE sha256 = $1", sha, 1) == 1
    finally:
        session.execute("DELETE FROM derivatives WHERE sha256 = %s", (sha,))
        session.execute("DELETE FROM gc_log WHERE run_id = %s", (run,))
        cluster.shutdown()
