"""HTTP layer of the stats API: routes, auth, answers with freshness and caching headers, health, metrics.

The app is built from explicit dependencies (:func:`create_app`): a config, a PostgreSQL pool
(asyncpg, or any object with the same ``acquire()``/``release()``/``fetch()`` shape, which is how unit tests
run it without a database) and a token verifier. The pool belongs to the caller (the entry point
opens and closes it).

Every data endpoint does the same four things: verify the token (which fixes the
:class:`~api.stats.params.Scope`), parse the parameters strictly into a query object, run its
bound SQL against the ``analytics`` views, and answer JSON carrying the data's freshness, a weak
``ETag`` over the data and a ``Cache-Control`` that lets clients keep answers about closed
windows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlencode

import asyncpg
import orjson
from aiohttp import hdrs, web

from api.common.httpkit import check, errors_middleware, healthz, metrics_response, observe_middleware, readiness
from imgstream.domain.errors import Unavailable
from imgstream.domain.producers import is_synthetic
from imgstream.domain.tokens import ROLE_PRODUCER, Principal, TokenVerifier, bearer_token

from api.stats.config import INCLUDE_SYNTHETIC_SETTING, MAX_BODY_BYTES, StatsConfig
from api.stats.metrics import StatsMetrics
from api.stats.openapi import openapi_document
from api.stats.params import Scope, query_params
from api.stats.queries.duplicates import DuplicatesQuery
from api.stats.queries.freshness import FRESHNESS_TABLES, freshness_entry, freshness_sql
from api.stats.queries.image import TERMINAL_STATUS, ImageQuery
from api.stats.queries.summary import SummaryQuery
from api.stats.queries.top import TopQuery
from api.stats.queries.uploads import UploadsQuery
from api.stats.queries.usage import UsageQuery
from api.stats.sql import V_DUPLICATES, V_FRESHNESS, V_IMAGES, V_STATS, Sql
from api.stats.times import format_time

log = logging.getLogger("imgstream.stats")

#: Who made the request (set once the token is verified), for the request log.
PRINCIPAL = web.RequestKey("principal", Principal)
#: Whether the request's principal is a synthetic producer (a test's or benchmark's): its own rows
#: are hidden by the analytics views from everyone else, so its statements run with the views'
#: switch on. Its producer scope still limits it to its own rows. A context variable: each
#: request runs in a task of its own.
_SYNTHETIC_PRINCIPAL: ContextVar[bool] = ContextVar("synthetic_principal", default=False)
#: Verified tokens remembered at most (~200 bytes each): far more than the clients of one process.
_VERIFIED_TOKENS = 10_000
#: How long /readyz waits for PostgreSQL before calling it unreachable.
_READY_TIMEOUT = 3.0
#: The objects /readyz requires: without them every data endpoint would fail.
_REQUIRED_RELATIONS = (V_STATS, V_IMAGES, V_DUPLICATES, V_FRESHNESS)


class Connection(Protocol):
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...


class Pool(Protocol):
    """What the app needs of an ``asyncpg.Pool``."""

    def acquire(self) -> Awaitable[Connection]: ...

    async def release(self, connection: Connection) -> None: ...


def _dumps(value: Any) -> bytes:
    """JSON; datetimes as RFC 3339 UTC with a ``Z`` (``OPT_UTC_Z``)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def weak_etag(encoded: bytes) -> str:
    """A weak validator over the encoded data of an answer (its freshness excluded: two answers
    with the same data and a different "measured at" are semantically the same representation)."""
    return 'W/"' + hashlib.sha256(encoded).hexdigest()[:32] + '"'


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison: ``W/"x"`` matches ``"x"`` and ``W/"x"``."""
    if not header:
        return False
    opaque = etag.removeprefix("W/")
    return any(tag.strip() == "*" or tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


class Freshness:
    """How far behind each replicated table is, measured at most every ``ttl`` seconds and shared
    by all requests in between (one query in flight at a time)."""

    def __init__(self, run: Callable[[Sql], Awaitable[list[Any]]], ttl: float, metrics: StatsMetrics,
                 clock: Callable[[], datetime], monotonic: Callable[[], float] = time.monotonic) -> None:
        self._run = run
        self.ttl = ttl
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._value: dict[str, Any] | None = None
        #: Every minute window ending at or before this is final (None: none is yet).
        self.final_until: datetime | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    def _current(self) -> dict[str, Any] | None:
        return self._value if self._monotonic() - self._at < self.ttl else None

    async def get(self) -> dict[str, Any]:
        value = self._current()
        if value is not None:
            return value
        async with self._lock:
            value = self._current()
            if value is None:
                value = self.measure(await self._run(freshness_sql()))
                self._value, self._at = value, self._monotonic()
            return value

    def measure(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        now = self._clock()
        tables: dict[str, Any] = {}
        for row in rows:
            entry = freshness_entry(row, now)
            tables[entry.pop("table")] = entry
            if entry["lag_seconds"] is not None:
                self._metrics.lag.labels(row["table_name"]).set(entry["lag_seconds"])
            if row["table_name"] == "upload_stats":
                self.final_until = row["final_until"]
        return {"measured_at": format_time(now), "tables": tables}


class StatsApi:
    """State and handlers of one stats API app."""

    def __init__(self, config: StatsConfig, pool: Pool, keyring: TokenVerifier, *, metrics: StatsMetrics,
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.pool = pool
        self.keyring = keyring
        self.metrics = metrics
        self.clock = clock
        self.freshness = Freshness(self.fetch, config.freshness_ttl, metrics, clock)
        self.draining = False
        self._verified: dict[str, Principal] = {}
        self._verified_ring: object = None

    async def on_shutdown(self, app: web.Application) -> None:
        self.draining = True  # fail /readyz first, so no new requests are routed here
        log.info("stats API draining")

    # -- plumbing -----------------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Scope:
        principal = self.verify(bearer_token(request.headers.get(hdrs.AUTHORIZATION)))
        request[PRINCIPAL] = principal
        _SYNTHETIC_PRINCIPAL.set(principal.role == ROLE_PRODUCER and is_synthetic(principal.name))
        return Scope.of(principal)

    def verify(self, token: str) -> Principal:
        """The token's principal. Verified tokens are remembered (keyed by the whole token, expiry
        checked on every use) until the key ring changes, so a dashboard polling with one token
        pays the HMAC and JSON decoding once; a rotation or retirement clears the memory."""
        ring = getattr(self.keyring, "ring", self.keyring)  # ReloadingKeyRing: the ring now in force
        if ring is not self._verified_ring:
            self._verified.clear()
            self._verified_ring = ring
        now = time.time()
        principal = self._verified.get(token)
        if principal is None or principal.expires_at <= now:
            principal = ring.verify(token, now=now)
            if len(self._verified) >= _VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[token] = principal
        return principal

    async def fetch(self, sql: Sql) -> list[Any]:
        """Run one bound statement (see :meth:`fetch_all`)."""
        return (await self.fetch_all(sql))[0]

    async def fetch_all(self, *statements: Sql) -> list[list[Any]]:
        """Run bound statements in order on one pooled connection; PostgreSQL trouble becomes a 503
        (``Retry-After``). One connection per request, whatever it reads, keeps the pool's size
        the bound on concurrent work. Statements are bounded by the pool's ``command_timeout``
        (and the session's ``statement_timeout``); the wait for a free connection by
        ``acquire_timeout``, under ``asyncio.timeout`` (no extra task per request)."""
        name = statements[0].name
        started = time.perf_counter()
        try:
            waiting = asyncio.timeout(self.config.acquire_timeout)
            try:
                async with waiting:
                    conn = await self.pool.acquire()
            except TimeoutError:
                if not waiting.expired():
                    raise  # the pool's own (connect) timeout, not the wait for a free connection
                self.metrics.query_errors.labels(name, "saturated").inc()
                raise Unavailable(f"no PostgreSQL connection free within {self.config.acquire_timeout:g} s "
                                  f"({self.config.pool_max} in use); retry", reason="saturated") from None
            synthetic = _SYNTHETIC_PRINCIPAL.get() and not self.config.include_synthetic
            try:
                if synthetic:
                    await conn.fetch("SELECT set_config($1, 'on', false)", INCLUDE_SYNTHETIC_SETTING)
                results = []
                for sql in statements:
                    name = sql.name
                    results.append(await conn.fetch(sql.text, *sql.args))
                if synthetic:  # back to the pool as it came (asyncpg's RESET ALL on release also would)
                    await conn.fetch("SELECT set_config($1, 'off', false)", INCLUDE_SYNTHETIC_SETTING)
                return results
            finally:
                await self.pool.release(conn)
        except (TimeoutError, asyncpg.QueryCanceledError):
            self.metrics.query_errors.labels(name, "timeout").inc()
            raise Unavailable(f"PostgreSQL did not answer within {self.config.statement_timeout:g} s; retry",
                              reason="timeout") from None
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError, asyncpg.UndefinedColumnError) as exc:
            self.metrics.query_errors.labels(name, "schema").inc()
            log.error("analytics schema missing or out of date", extra={"query": name, "error": str(exc)})
            raise Unavailable("the analytics views are missing or out of date (apply connectors/postgres/*.sql)",
                              reason="schema") from None
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.InterfaceError) as exc:
            self.metrics.query_errors.labels(name, "connection").inc()
            raise Unavailable(f"PostgreSQL unreachable: {type(exc).__name__}", reason="connection") from None
        finally:
            self.metrics.query(statements[0].name, time.perf_counter() - started)

    async def answer(self, request: web.Request, data: dict[str, Any], freshness: dict[str, Any],
                     tables: Sequence[str], *, closed: bool) -> web.StreamResponse:
        """JSON ``data`` plus its freshness, with ``ETag`` and ``Cache-Control``; ``304`` when the
        client already holds this data."""
        encoded = _dumps(data)  # once: the ETag is over these bytes, the body extends them
        etag = weak_etag(encoded)
        headers = {
            hdrs.ETAG: etag,
            hdrs.CACHE_CONTROL: f"private, max-age={self.config.closed_max_age}" if closed else "private, no-cache",
            hdrs.VARY: "Authorization",
        }
        if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
            self.metrics.not_modified.inc()
            return web.Response(status=304, headers=headers)
        fresh = {"measured_at": freshness["measured_at"],
                 "tables": {t: freshness["tables"].get(t) for t in tables}}
        # data is a non-empty JSON object: append the freshness member before its closing brace
        body = b"".join((encoded[:-1], b',"freshness":', _dumps(fresh), b"}"))
        return web.Response(body=body, content_type="application/json", headers=headers)

    def closed(self, end: datetime) -> bool:
        """Whether every window ending at or before ``end`` is final (so an answer about them never
        changes again): the newest final window, as of the last freshness measurement, ends at or
        after ``end``."""
        until = self.freshness.final_until
        return until is not None and end <= until

    # -- data endpoints -----------------------------------------------------------------------------

    async def uploads(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        query = UploadsQuery.parse(request.query.items(), scope, self.clock())
        freshness = await self.freshness.get()  # cached: no I/O on most requests
        rows = await self.fetch(query.sql())
        page, more = rows[: query.limit], len(rows) > query.limit
        windows = [query.window(r) for r in page]
        cursor = query.cursor_after(page[-1]) if more else None
        data = {
            **query.range.to_json(), "interval": query.interval.value, "group_by": list(query.group_by),
            "producer": query.producer, "content_type": query.content_type, "windows": windows,
            "next_cursor": cursor,
            "next": f"{request.path}?{urlencode(query.next_params(cursor))}" if cursor else None,
        }
        closed = all(w["final"] for w in windows) and self.closed(query.range.end)
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["uploads"], closed=closed)

    async def summary(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        query = SummaryQuery.parse(request.query.items(), scope, self.clock())
        freshness = await self.freshness.get()  # cached: no I/O on most requests
        rows = await self.fetch(query.sql())
        totals = query.result(rows[0])
        data = {**query.range.to_json(), "producer": query.producer, "content_type": query.content_type, **totals}
        closed = totals["final"] and self.closed(query.range.end)
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["summary"], closed=closed)

    async def top(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        query = TopQuery.parse(request.query.items(), scope, self.clock())
        freshness = await self.freshness.get()  # cached: no I/O on most requests
        rows = await self.fetch(query.sql())
        data = {**query.range.to_json(), "by": query.by, "dimension": query.dimension, "producer": query.producer,
                "content_type": query.content_type, "limit": query.limit, "top": query.result(rows)}
        closed = self.closed(query.range.end)
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["top"], closed=closed)

    async def usage(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        query = UsageQuery.parse(request.match_info["producer"], request.query.items(), scope, self.clock())
        freshness = await self.freshness.get()
        rows, images = await self.fetch_all(query.sql(), query.images_sql())
        result = query.result(rows, images[0] if images else None)
        data = {**query.range.to_json(), **result}
        closed = result["final"] is not False and self.closed(query.range.end)
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["usage"], closed=closed)

    async def duplicates(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        query = DuplicatesQuery.parse(request.query.items(), scope, self.clock())
        freshness = await self.freshness.get()
        rows, counts = await self.fetch_all(query.sql(), query.count_sql())
        page, more = rows[: query.limit], len(rows) > query.limit
        cursor = query.cursor_after(page[-1]) if more else None
        count = counts[0]
        data = {
            **query.range.to_json(), "kind": query.kind, "producer": query.producer,
            "duplicate_of": query.duplicate_of,
            "total": int(count["total"]), "exact": int(count["exact"]), "near": int(count["near"]),
            "duplicates": [query.item(r) for r in page], "next_cursor": cursor,
            "next": f"{request.path}?{urlencode(query.next_params(cursor))}" if cursor else None,
        }
        # Never "closed": an event too late for its window still gets its verdict (and may be a
        # duplicate received inside an old range), so a listing can grow after its windows closed.
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["duplicates"], closed=False)

    async def image(self, request: web.Request) -> web.StreamResponse:
        scope = self.authenticate(request)
        # A producer token finds only its own images: another producer's answers like an unknown id.
        query = ImageQuery.parse(request.match_info["image_id"], request.query.items(), scope.producer)
        freshness = await self.freshness.get()  # cached: no I/O on most requests
        rows = await self.fetch(query.sql())
        row = rows[0] if rows else None
        data = query.result(row)
        # Only a deleted image never changes again: any other may be deleted, or gain derivatives
        # from the next batch run, and "pending" changes any moment (ETags still give 304s).
        closed = data["status"] == TERMINAL_STATUS
        return await self.answer(request, data, freshness, FRESHNESS_TABLES["image"], closed=closed)

    async def freshness_endpoint(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        query_params(request.query.items(), ())
        freshness = await self.freshness.get()
        return await self.answer(request, {"tables": freshness["tables"]}, freshness, tuple(freshness["tables"]),
                                 closed=False)

    # -- operations ---------------------------------------------------------------------------------

    healthz = staticmethod(healthz)

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        return readiness({"postgres": await check(self._missing_relations, _READY_TIMEOUT)}, draining=self.draining)

    async def _missing_relations(self) -> str | None:
        """``None`` when PostgreSQL answers and the analytics views the API reads exist."""
        sql = Sql("readyz", "SELECT array_agg(name) FILTER (WHERE to_regclass(name) IS NULL) AS missing "
                               "FROM unnest($1::text[]) AS name", (list(_REQUIRED_RELATIONS),))
        missing = (await self.fetch(sql))[0]["missing"]
        return f"missing: {', '.join(missing)}" if missing else None

    async def metrics_endpoint(self, request: web.Request) -> web.StreamResponse:
        for state, getter in (("open", "get_size"), ("idle", "get_idle_size"), ("max", "get_max_size")):
            if hasattr(self.pool, getter):
                self.metrics.pool_size.labels(state).set(getattr(self.pool, getter)())
        return metrics_response(self.metrics.registry)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi_document(self.config))


STATS: web.AppKey[StatsApi] = web.AppKey("stats", StatsApi)

#: (method, path, handler name): the routes, in the order /openapi.json lists them.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/v1/images/{image_id}", "image"),
    ("GET", "/v1/stats/uploads", "uploads"),
    ("GET", "/v1/stats/summary", "summary"),
    ("GET", "/v1/stats/top", "top"),
    ("GET", "/v1/duplicates", "duplicates"),
    ("GET", "/v1/usage/{producer}", "usage"),
    ("GET", "/v1/freshness", "freshness_endpoint"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics_endpoint"),
    ("GET", "/openapi.json", "openapi"),
)


def create_app(config: StatsConfig, pool: Pool, keyring: TokenVerifier | None = None, *,
               metrics: StatsMetrics | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> web.Application:
    """Build the stats API over ``pool`` (not closed by the app).

    ``keyring`` verifies bearer tokens (default: the key file of ``config``, re-read on
    rotation); ``clock`` is "now" for default ranges, freshness and closed windows.
    """
    if keyring is None:
        from imgstream.domain.tokens import ReloadingKeyRing

        keyring = ReloadingKeyRing(config.keys_file)
    metrics = metrics or StatsMetrics()
    api = StatsApi(config, pool, keyring, metrics=metrics, clock=clock)

    def log_fields(request: web.Request, route: str) -> dict[str, Any]:
        principal = request.get(PRINCIPAL)
        return {"route": route, "principal": principal.name if principal else None,
                "role": principal.role if principal else None}

    observe = observe_middleware(metrics, log, log_fields=log_fields)
    app = web.Application(middlewares=[observe, errors_middleware(log)], client_max_size=MAX_BODY_BYTES)
    app[STATS] = api
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, getattr(api, handler))
    app.on_shutdown.append(api.on_shutdown)
    return app


def server_options(config: StatsConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` / ``aiohttp.test_utils.TestServer``."""
    return {"shutdown_timeout": config.shutdown_timeout, "access_log": None}

