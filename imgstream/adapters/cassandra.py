"""Cassandra / ScyllaDB adapter (scylla-driver): sessions, cached prepared statements, upserts.

Thin on purpose: it knows nothing of imgstream's tables. The Flink sink and the tests use it
synchronously (Flink's Python workers are synchronous); async callers get awaitable wrappers
around the driver's own futures, so no thread is blocked per request.
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


class CassandraStore:
    """One cluster connection bound to a keyspace, with a cache of prepared statements."""

    def __init__(self, cluster: Cluster, session: Session) -> None:
        self._cluster = cluster
        self.session = session
        self._prepared: dict[str, PreparedStatement] = {}

    @classmethod
    def connect(cls, cfg: CassandraConfig, *, keyspace: bool = True, connect_timeout: float = 10.0) -> "CassandraStore":
        """Connect to the cluster (and ``USE`` the configured keyspace unless ``keyspace=False``)."""
        cluster = Cluster(
            list(cfg.hosts),
            port=cfg.port,
            protocol_version=5,
            connect_timeout=connect_timeout,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()))
            },
        )
        session = cluster.connect(cfg.keyspace if keyspace else None)
        return cls(cluster, session)

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
