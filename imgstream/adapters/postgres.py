"""PostgreSQL adapter (asyncpg): the one pool factory (sized, with timeouts), single connections
for tools and tests, and a readiness probe.

Queries always bind parameters (``$1``...); nothing is ever formatted into SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncpg

from imgstream.config import PostgresConfig


@dataclass(frozen=True)
class PoolLimits:
    """Pool sizing. Defaults fit one service process on the 2-core local stack."""

    min_size: int = 1
    max_size: int = 10
    #: seconds a single statement may run before the server-side call is abandoned
    command_timeout: float = 10.0
    #: seconds to wait for a connection (PostgreSQL down means a fast, clear failure)
    connect_timeout: float = 5.0


async def create_pool(cfg: PostgresConfig, limits: PoolLimits = PoolLimits(), *,
                      reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      max_inactive_seconds: float = 300.0) -> asyncpg.Pool:
    """Open a pool to ``cfg.dsn``; the caller closes it (``await pool.close()``).

    ``reset`` replaces asyncpg's reset-on-release (four statements, one round trip per request)
    for callers that never change session state; connections idle ``max_inactive_seconds`` are
    closed, freeing server slots after a burst.
    """
    options: dict[str, Any] = {"reset": reset} if reset is not None else {}
    pool = await asyncpg.create_pool(
        str(cfg.dsn),
        min_size=limits.min_size,
        max_size=limits.max_size,
        command_timeout=limits.command_timeout,
        timeout=limits.connect_timeout,
        max_inactive_connection_lifetime=max_inactive_seconds,
        **options,
    )
    assert pool is not None  # asyncpg types it Optional; it is never None once awaited
    return pool


async def connect(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One connection to ``dsn`` (tools, the stack scripts, tests); the caller closes it."""
    return await asyncpg.connect(dsn, timeout=timeout)


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> str | None:
    """``None`` when ``SELECT 1`` succeeds within ``timeout``, else the reason (for /readyz)."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            value: Any = await conn.fetchval("SELECT 1", timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if value == 1 else f"SELECT 1 returned {value!r}"
