"""Cassandra / ScyllaDB adapter (scylla-driver): the one place that builds a ``Cluster``.

:func:`new_cluster` makes the driver's cluster object with the platform's defaults (protocol v5,
token-aware routing); :func:`open_session` connects it. :class:`CassandraStore` adds cached
prepared statements and concurrent upserts for tools, the stack scripts and tests. The Flink
sink builds its own statements and batches on a session from :func:`open_session`.

Thin on purpose: it knows nothing of imgstream's tables. Callers are synchronous (Flink's Python
workers, Spark executors, the CLI); async callers get awaitable wrappers around the driver's own
futures, so no thread is blocked per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Sequence

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, ResponseFuture, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement

from imgstream.config import CassandraConfig

#: Requests in flight per ``upsert_many`` call: enough to keep one local node busy without
#: overrunning its native-transport queue on a 2-core machine.
MAX_CONCURRENT_WRITES = 64


def new_cluster(cfg: CassandraConfig, *, connect_timeout: float = 10.0, retry_policy: Any = None,
                request_timeout: float | None = None, **options: Any) -> Cluster:
    """A driver ``Cluster`` for ``cfg`` (not yet connected). ``retry_policy`` and
    ``request_timeout`` go into the default execution profile (the driver refuses the legacy
    cluster-wide settings once profiles are used); ``options`` are passed to the driver
    (``compression``, ...) over the defaults here."""
    profile: dict[str, Any] = {"load_balancing_policy": TokenAwarePolicy(DCAwareRoundRobinPolicy())}
    if retry_policy is not None:
        profile["retry_policy"] = retry_policy
    if request_timeout is not None:
        profile["request_timeout"] = request_timeout
    settings: dict[str, Any] = {
        "port": cfg.port,
        "protocol_version": 5,
        "connect_timeout": connect_timeout,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: ExecutionProfile(**profile)},
    }
    settings.update(options)
    return Cluster(list(cfg.hosts), **settings)


def open_session(cfg: CassandraConfig, *, keyspace: bool = True, connect_timeout: float = 10.0,
                 **options: Any) -> tuple[Cluster, Session]:
    """Connect (and ``USE`` the configured keyspace unless ``keyspace=False``). The caller shuts
    the cluster down (``cluster.shutdown()``)."""
    cluster = new_cluster(cfg, connect_timeout=connect_timeout, **options)
    try:
        session = cluster.connect(cfg.keyspace if keyspace else None)
    except Exception:
        cluster.shutdown()
        raise
    return cluster, session


class CassandraStore:
    """One cluster connection bound to a keyspace, with a cache of prepared statements."""

    def __init__(self, cluster: Cluster, session: Session) -> None:
        self._cluster = cluster
        self.session = session
        self._prepared: dict[str, PreparedStatement] = {}

    @classmethod
    def connect(cls, cfg: CassandraConfig, *, keyspace: bool = True, connect_timeout: float = 10.0) -> "CassandraStore":
        """Connect to the cluster (and ``USE`` the configured keyspace unless ``keyspace=False``)."""
        return cls(*open_session(cfg, keyspace=keyspace, connect_timeout=connect_timeout))

    def close(self) -> None:
        self._cluster.shutdown()

    def __enter__(self) -> "CassandraStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, cql: str) -> PreparedStatement:
        """Prepare ``cql`` once per store; later calls return the cached statement."""
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self.session.prepare(cql)
            self._prepared[cql] = stmt
        return stmt

    def execute(self, cql: str, params: Sequence[Any] | None = None, *, timeout: float = 30.0) -> list[Any]:
        """Run one statement (prepared when it has parameters) and return all rows."""
        if params is None:
            return list(self.session.execute(cql, timeout=timeout))
        return list(self.session.execute(self.prepare(cql), params, timeout=timeout))

    def upsert_many(self, cql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Write ``rows`` with one prepared statement, concurrently; raise on the first failure.

        Upserts by primary key are idempotent, so a retry after a partial failure is safe.
        """
        stmt = self.prepare(cql)
        results = execute_concurrent_with_args(
            self.session, stmt, list(rows), concurrency=MAX_CONCURRENT_WRITES, raise_on_first_error=True
        )
        return len(results)

    async def execute_async(self, cql: str, params: Sequence[Any] | None = None, *, timeout: float = 30.0) -> list[Any]:
        """Awaitable :meth:`execute`, bridged from the driver's callback future."""
        query: Any = cql if params is None else self.prepare(cql)
        future = self.session.execute_async(query, params, timeout=timeout)
        return await _wrap(future)


def _wrap(future: ResponseFuture) -> "asyncio.Future[list[Any]]":
    loop = asyncio.get_running_loop()
    result: asyncio.Future[list[Any]] = loop.create_future()
    rows: list[Any] = []

    def on_page(page: Any) -> None:
        rows.extend(page)
        if future.has_more_pages:
            future.start_fetching_next_page()
        else:
            loop.call_soon_threadsafe(_set, result, rows)

    def on_error(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_fail, result, exc)

    future.add_callbacks(on_page, on_error)
    return result


def _set(fut: "asyncio.Future[list[Any]]", rows: list[Any]) -> None:
    if not fut.done():
        fut.set_result(rows)


def _fail(fut: "asyncio.Future[list[Any]]", exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
