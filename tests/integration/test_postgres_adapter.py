"""Round-trip real rows through the local PostgreSQL with the adapter; check the roles."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import asyncpg
import pytest

from imgstream.adapters.postgres import PoolLimits, connect, create_pool, ping
from imgstream.config import PostgresConfig


@pytest.fixture()
async def pool(stack_config):
    pool = await create_pool(stack_config.postgres, PoolLimits(max_size=4))
    yield pool
    await pool.close()


async def test_round_trip_with_bound_parameters(pool):
    table = f"it_{uuid.uuid4().hex[:12]}"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, n int)")
        try:
            hostile = "x'); DROP TABLE pg_class; --"
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(hostile, 1), ("b", 2)])
            assert await conn.fetchval(f"SELECT n FROM {table} WHERE id = $1", hostile) == 1
            assert await conn.fetchval(f"SELECT sum(n) FROM {table}") == 3
        finally:
            await conn.execute(f"DROP TABLE {table}")


async def test_ping_ok_and_unreachable(pool):
    assert await ping(pool) is None
    with pytest.raises((OSError, asyncpg.PostgresError, TimeoutError)):
        await create_pool(PostgresConfig(dsn="postgresql://imgstream@127.0.0.1:1/imgstream"),  # type: ignore[arg-type]
                          PoolLimits(connect_timeout=1))


async def test_analyst_role_is_read_only(stack_config):
    dsn = str(stack_config.postgres.dsn).replace("imgstream@", "analyst@", 1)
    conn = await connect(dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        with pytest.raises(asyncpg.PostgresError, match="read-only"):
            await conn.execute("CREATE TABLE analytics.should_fail (x int)")
    finally:
        await conn.close()


def test_psql_connects_over_loopback_without_password():
    psql = shutil.which("psql")
    assert psql, "psql client missing"
    out = subprocess.run([psql, "-h", "127.0.0.1", "-U", "imgstream", "-w", "-tAc", "SELECT current_database()",
                          "imgstream"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imgstream"
