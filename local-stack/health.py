"""Health checks of the local stack: each one a real request to the component.

Every check returns ``None`` when healthy or a short reason string when not, and never raises.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Awaitable, Callable

from imgstream.config import StackConfig

Check = Callable[[StackConfig], Awaitable[str | None]]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _http_json(url: str, timeout: float = 3.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return json.loads(resp.read())


async def kafka(cfg: StackConfig) -> str | None:
    """A metadata request: the broker lists its topics and reports a controller."""
    from imgstream.adapters.kafka import admin_client

    async def metadata() -> None:
        async with admin_client(cfg.kafka, timeout_ms=3000) as admin:
            await admin.list_topics()

    try:
        await asyncio.wait_for(metadata(), 10)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy" with its reason
        return _reason(exc)


def _cql_query(cfg: StackConfig) -> str | None:
    from imgstream.adapters.cassandra import open_session

    try:
        cluster, session = open_session(cfg.cassandra, keyspace=False, connect_timeout=3,
                                        control_connection_timeout=3)
    except Exception as exc:  # noqa: BLE001
        return _reason(exc)
    try:
        row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
        return None if row is not None else "system.local returned no row"
    except Exception as exc:  # noqa: BLE001
        return _reason(exc)
    finally:
        cluster.shutdown()


async def cassandra(cfg: StackConfig) -> str | None:
    """A CQL query against ``system.local``."""
    return await asyncio.to_thread(_cql_query, cfg)


async def _select_one(dsn: str) -> str | None:
    from imgstream.adapters.postgres import connect

    try:
        conn = await connect(dsn, timeout=8)
    except Exception as exc:  # noqa: BLE001
        return _reason(exc)
    try:
        value = await conn.fetchval("SELECT 1", timeout=8)
        return None if value == 1 else f"SELECT 1 returned {value!r}"
    finally:
        await conn.close()


async def postgres(cfg: StackConfig) -> str | None:
    """``SELECT 1`` as the imgstream role over TCP."""
    return await _select_one(str(cfg.postgres.dsn))


async def postgres_server(dsn_admin: str) -> str | None:
    """``SELECT 1`` as the bootstrap superuser (before the imgstream role exists)."""
    return await _select_one(dsn_admin)


async def s3(cfg: StackConfig) -> str | None:
    """``ListBuckets`` with the stack's credentials (the bucket itself is created after this passes)."""
    from imgstream.adapters.s3 import S3ObjectStore

    store = S3ObjectStore(cfg.s3, max_pool_connections=1, connect_timeout=5, read_timeout=10, max_attempts=1)
    try:
        await store.start()
        await store.client.list_buckets()
        return None
    except Exception as exc:  # noqa: BLE001
        return _reason(exc)
    finally:
        await store.close()


async def connect(cfg: StackConfig) -> str | None:
    """``GET /connectors`` on the Kafka Connect REST API."""
    try:
        body = await asyncio.to_thread(_http_json, f"{cfg.connect_rest}/connectors")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return _reason(exc)
    return None if isinstance(body, list) else f"unexpected body {body!r:.80}"


async def flink_taskmanager(cfg: StackConfig, resource_id: str | None = None) -> str | None:
    """``GET /taskmanagers``: the TaskManager ``resource_id`` (any, when ``None``) is registered
    with its slots. Healthy whether or not its slots are in use: jobs restored onto a restarted
    TaskManager may take them all, and a kill test restarts it under two running jobs."""
    try:
        body = await asyncio.to_thread(_http_json, f"{cfg.flink_rest}/taskmanagers")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return _reason(exc)
    managers = body.get("taskmanagers") if isinstance(body, dict) else None
    if not isinstance(managers, list):
        return "unexpected /taskmanagers body"
    ours = [tm for tm in managers if isinstance(tm, dict) and resource_id in (None, tm.get("id"))]
    if not ours:
        if resource_id is None:
            return "no TaskManager registered yet"
        return f"TaskManager {resource_id} not registered yet ({len(managers)} others are)"
    if not any(int(tm.get("slotsNumber", 0)) >= 1 for tm in ours):
        return "TaskManager registered without task slots"
    return None


async def http_ok(url: str) -> str | None:
    """A plain ``GET`` that must answer 200 (the project's own services' /healthz)."""
    try:
        await asyncio.to_thread(_http_json, url)
        return None
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return _reason(exc)
