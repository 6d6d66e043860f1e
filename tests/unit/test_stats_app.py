"""The stats API app on a fake pool: auth and scope, strict parameters (nothing reaches the
database on a 400/401/403), answers with freshness, ETag/Cache-Control/304, errors, health,
metrics, logs, and an OpenAPI document that matches the registered routes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.stats.app import ROUTES, STATS, create_app, etag_matches, server_options, weak_etag
from api.stats.config import StatsConfig, with_session_settings
from api.stats.queries.duplicates import DuplicatesQuery
from api.stats.queries.image import ImageQuery
from api.stats.queries.summary import SummaryQuery
from api.stats.queries.top import TopQuery
from api.stats.queries.uploads import UploadsQuery
from api.stats.queries.usage import UsageQuery
from api.stats.sql import MEASURES
from api.common.httpkit import JsonFormatter
from imgstream.domain.tokens import KeyRing

NOW = datetime(2026, 11, 26, 12, 0, 30, tzinfo=timezone.utc)
IMAGE_ID = "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"
UNKNOWN_ID = "5e0d1c8a-9a51-4c1b-8f0e-2b7a4c6d9e13"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def stats_row(start: datetime, final: bool = True, **values: Any) -> dict[str, Any]:
    return {"window_start": start, **{m: 0 for m in MEASURES}, "final": final, **values}


@dataclass
class FakePool:
    """Answers statements by the first registered pattern found in their text; records every call."""

    answers: list[tuple[str, Callable[[tuple[Any, ...]], list[dict[str, Any]]]]] = field(default_factory=list)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    fail: BaseException | None = None
    final_until: datetime | None = utc(2026, 11, 26, 11, 55)

    def on(self, pattern: str, rows: list[dict[str, Any]] | Callable[[tuple[Any, ...]], list[dict[str, Any]]]) -> None:
        self.answers.insert(0, (pattern, rows if callable(rows) else (lambda args, rows=rows: rows)))

    def data_calls(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [c for c in self.calls if "analytics.freshness" not in c[0] and "to_regclass" not in c[0]]

    hang: bool = False
    released: int = 0

    async def acquire(self) -> "FakePool":
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        return self

    async def release(self, conn: "FakePool") -> None:
        self.released += 1

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[dict[str, Any]]:
        self.calls.append((query, args))
        if "analytics.freshness" in query:
            return [{"table_name": t, "newest_change_at": NOW - timedelta(seconds=3),
                     "newest_applied_at": NOW - timedelta(seconds=2),
                     "final_until": self.final_until if t == "upload_stats" else None}
                    for t in ("duplicates", "images", "late_events", "upload_stats")]
        if "to_regclass" in query:
            return [{"missing": None}]
        for pattern, answer in self.answers:
            if pattern in query:
                return answer(args)
        # Like PostgreSQL: an aggregate without GROUP BY always returns one row.
        if "GROUP BY" not in query and "AS producers" in query:
            return [{**{m: 0 for m in MEASURES}, "final": True, "producers": 0}]
        if "count(*) AS total" in query:
            return [{"total": 0, "exact": 0, "near": 0}]
        if "min(received_at)" in query:
            return [{"first_upload_at": None, "last_upload_at": None}]
        return []

    def get_size(self) -> int:
        return 3

    def get_idle_size(self) -> int:
        return 2

    def get_max_size(self) -> int:
        return 10


@dataclass
class Api:
    client: TestClient
    pool: FakePool
    ring: KeyRing

    def auth(self, name: str = "alice", role: str = "producer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ring.issue(name, role)}"}

    def analyst(self) -> dict[str, str]:
        return self.auth("ana", "analyst")

    async def get(self, path: str, headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any, Any]:
        response = await self.client.get(path, headers=headers, params=params or None)
        text = await response.text()
        return response.status, (json.loads(text) if text else None), response.headers


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    config = StatsConfig(freshness_ttl=60.0)
    pool = FakePool()
    ring = KeyRing.generate()
    app = create_app(config, pool, ring, clock=lambda: NOW)
    async with TestClient(TestServer(app, **server_options(config))) as client:
        yield Api(client, pool, ring)


# --- auth and scope ----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic YWxpY2U6cHc="},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": "Bearer isv1.kx.e30.AAAA"},
])
async def test_401_without_a_valid_token(api: Api, headers: dict[str, str]) -> None:
    for path in ("/v1/stats/uploads", "/v1/stats/summary", "/v1/stats/top", "/v1/duplicates", "/v1/usage/alice",
                 f"/v1/images/{IMAGE_ID}", "/v1/freshness"):
        status, body, response_headers = await api.get(path, headers)
        assert status == 401 and body["error"]["code"] == "unauthorized", (path, body)
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert api.pool.calls == []


async def test_tokens_of_another_key_ring_are_refused(api: Api) -> None:
    foreign = KeyRing.generate().issue("ana", "analyst")
    status, body, _ = await api.get("/v1/stats/summary", {"Authorization": f"Bearer {foreign}"})
    assert status == 401 and api.pool.calls == []


@pytest.mark.parametrize("path, params", [
    ("/v1/stats/uploads", {"producer": "bob"}),
    ("/v1/stats/summary", {"producer": "bob"}),
    ("/v1/duplicates", {"producer": "bob"}),
    ("/v1/usage/bob", {}),
    ("/v1/stats/top", {}),
    ("/v1/stats/top", {"dimension": "content_type", "producer": "bob"}),
])
async def test_a_producer_never_reads_another_producer(api: Api, path: str, params: dict[str, str]) -> None:
    status, body, _ = await api.get(path, api.auth("alice"), **params)
    assert status == 403 and body["error"]["code"] == "forbidden" and body["error"]["field"]
    assert api.pool.data_calls() == []


async def test_producer_queries_always_carry_the_producer(api: Api) -> None:
    for path in ("/v1/stats/uploads", "/v1/stats/summary", "/v1/duplicates", "/v1/usage/alice"):
        api.pool.calls.clear()
        status, _, _ = await api.get(path, api.auth("alice"))
        assert status == 200
        calls = api.pool.data_calls()
        assert calls and all("producer = $" in text and "alice" in args for text, args in calls), path


async def test_image_of_another_producer_answers_like_an_unknown_id(api: Api) -> None:
    row = {c: None for c in ImageQuery.COLUMNS} | {"image_id": IMAGE_ID, "producer": "bob", "status": "accepted",
                                                      "received_at": utc(2026, 11, 26, 11)}

    def owned_by_bob(args: tuple) -> list:
        return [row] if len(args) == 1 or args[1] == "bob" else []

    api.pool.on("FROM analytics.images", owned_by_bob)
    other = await api.get(f"/v1/images/{IMAGE_ID}", api.auth("alice"))
    unknown = await api.get(f"/v1/images/{UNKNOWN_ID}", api.auth("alice"))
    assert other[0] == unknown[0] == 200
    assert other[1]["status"] == unknown[1]["status"] == "pending" and "bob" not in json.dumps(other[1])
    assert {**other[1], "image_id": UNKNOWN_ID} == unknown[1]  # the same answer but for the id asked
    same = ("Cache-Control", "Content-Type")
    assert {h: other[2][h] for h in same} == {h: unknown[2][h] for h in same}
    assert api.pool.data_calls()[0][1] == (IMAGE_ID, "alice")  # the database does the filtering
    status, body, headers = await api.get(f"/v1/images/{IMAGE_ID}", api.auth("bob"))
    assert status == 200 and body["status"] == "accepted" and body["producer"] == "bob"
    # an accepted image may still be deleted or gain derivatives: revalidated, never cached blind
    assert headers["Cache-Control"] == "private, no-cache"
    assert body["derivatives"] == []  # none made yet: an empty list, not a missing field
    status, body, _ = await api.get(f"/v1/images/{IMAGE_ID}", api.analyst())
    assert status == 200 and body["status"] == "accepted"


async def test_image_lists_its_derivatives_and_a_deleted_image_is_final(api: Api) -> None:
    made = [{"preset": "thumb", "format": "webp", "width": 256, "height": 171, "size": 5120,
             "storage_key": "derived/l1/thumb/ab/x.webp", "ladder": "l1"},
            {"preset": "small", "format": "jpeg", "width": 1024, "height": 683, "size": 90000,
             "storage_key": "derived/l1/small/ab/x.jpg"}]
    row = {c: None for c in ImageQuery.COLUMNS} | {"image_id": IMAGE_ID, "producer": "bob", "status": "accepted",
                                                      "derivatives": json.dumps(made)}
    api.pool.on("FROM analytics.images", [row])
    status, body, headers = await api.get(f"/v1/images/{IMAGE_ID}", api.auth("bob"))
    assert status == 200
    # exactly the documented fields, in the database's order (ladder, preset, format)
    assert body["derivatives"] == [{k: d[k] for k in ("preset", "format", "width", "height", "size", "storage_key")}
                                   for d in made]
    text = api.pool.data_calls()[0][0]
    assert "analytics.derivatives" in text and "d.sha256 = i.sha256" in text
    row.update(status="deleted", derivatives="[]")
    status, body, headers = await api.get(f"/v1/images/{IMAGE_ID}", api.auth("bob"))
    assert status == 200 and body["status"] == "deleted" and body["derivatives"] == []
    assert headers["Cache-Control"] == "private, max-age=300"  # deleted is final
    assert set(body["freshness"]["tables"]) == {"images", "derivatives"}


async def test_unknown_image_is_pending_and_not_cacheable(api: Api) -> None:
    status, body, headers = await api.get(f"/v1/images/{IMAGE_ID.upper()}", api.auth("alice"))
    assert status == 200 and body["status"] == "pending" and body["image_id"] == IMAGE_ID
    assert headers["Cache-Control"] == "private, no-cache"
    assert api.pool.data_calls()[0][1] == (IMAGE_ID, "alice")


# --- strict parameters: 400, and the database never sees them -----------------------------------


@pytest.mark.parametrize("path, params, field", [
    ("/v1/stats/uploads", {"from": "2026-11-26T00:00:00"}, "from"),
    ("/v1/stats/uploads", {"to": "2026-11-26T00:00:00+25:00"}, "to"),
    ("/v1/stats/uploads", {"interval": "second"}, "interval"),
    ("/v1/stats/uploads", {"group_by": "producer;DROP TABLE images"}, "group_by"),
    ("/v1/stats/uploads", {"producer": "x' OR '1'='1"}, "producer"),
    ("/v1/stats/uploads", {"from": "2000-01-01T00:00:00Z", "to": "2099-01-01T00:00:00Z"}, "from"),
    ("/v1/stats/uploads", {"limit": "1000000"}, "limit"),
    ("/v1/stats/uploads", {"sort": "uploads"}, "sort"),
    ("/v1/stats/summary", {"from": "yesterday"}, "from"),
    ("/v1/stats/summary", {"interval": "hour"}, "interval"),
    ("/v1/stats/top", {"by": "revenue"}, "by"),
    ("/v1/duplicates", {"kind": "exact' --"}, "kind"),
    ("/v1/duplicates", {"cursor": "e30"}, "cursor"),
    ("/v1/duplicates", {"duplicate_of": "1 OR 1=1"}, "duplicate_of"),
    ("/v1/usage/bob'--", {}, "producer"),
    ("/v1/usage/bob", {"content_type": "image/png"}, "content_type"),
    ("/v1/images/not-a-uuid", {}, "image_id"),
    (f"/v1/images/{IMAGE_ID}", {"x": "1"}, "x"),
    ("/v1/freshness", {"table": "images"}, "table"),
])
async def test_bad_parameters_are_400_naming_the_field(api: Api, path: str, params: dict[str, str],
                                                       field: str) -> None:
    status, body, _ = await api.get(path, api.analyst(), **params)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request" and body["error"]["field"] == field
    assert api.pool.data_calls() == []


async def test_repeated_parameter_is_400(api: Api) -> None:
    response = await api.client.get("/v1/stats/summary?from=2026-11-25T00:00:00Z&from=2026-11-24T00:00:00Z",
                                    headers=api.analyst())
    assert response.status == 400 and (await response.json())["error"]["field"] == "from"


async def test_unknown_route_and_method_are_json(api: Api) -> None:
    response = await api.client.get("/v1/nope", headers=api.analyst())
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    response = await api.client.post("/v1/stats/summary", headers=api.analyst(), data=b"x")
    assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"


# --- answers -----------------------------------------------------------------------------------


async def test_uploads_answer_with_freshness_and_paging(api: Api) -> None:
    def rows(args: tuple[Any, ...]) -> list[dict[str, Any]]:
        everything = [stats_row(utc(2026, 11, 26, h), uploads=h, producer="p") for h in range(6)]
        after = [r for r in everything if len(args) == 3 or r["window_start"] > args[2]]
        return after[: args[-1]]

    api.pool.on("FROM analytics.upload_stats", rows)
    params = {"from": "2026-11-26T00:00:00Z", "to": "2026-11-26T06:00:00Z", "group_by": "producer", "limit": "4"}
    status, body, headers = await api.get("/v1/stats/uploads", api.analyst(), **params)
    assert status == 200
    assert [w["uploads"] for w in body["windows"]] == [0, 1, 2, 3]
    assert body["windows"][0] == {"window_start": "2026-11-26T00:00:00Z", "window_end": "2026-11-26T01:00:00Z",
                                  "producer": "p", **{m: 0 for m in MEASURES}, "final": True}
    assert body["freshness"]["tables"]["upload_stats"]["lag_seconds"] == 3.0
    assert body["freshness"]["tables"]["upload_stats"]["final_until"] == "2026-11-26T11:55:00Z"
    assert set(body["freshness"]["tables"]) == {"upload_stats"}
    assert body["next_cursor"] and body["next"].startswith("/v1/stats/uploads?")
    status, page2, _ = await api.get(body["next"], api.analyst())
    assert status == 200 and [w["uploads"] for w in page2["windows"]] == [4, 5] and page2["next"] is None


async def test_closed_windows_are_cacheable_open_ones_are_not(api: Api) -> None:
    closed = {"from": "2026-11-26T10:00:00Z", "to": "2026-11-26T11:00:00Z", "interval": "minute"}
    api.pool.on("FROM analytics.upload_stats", [stats_row(utc(2026, 11, 26, 10, 5), uploads=2)])
    status, body, headers = await api.get("/v1/stats/uploads", api.analyst(), **closed)
    assert status == 200 and headers["Cache-Control"] == "private, max-age=300"
    assert headers["ETag"].startswith('W/"') and headers["Vary"] == "Authorization"
    # the range reaches past the newest final window: must be revalidated
    open_range = {**closed, "to": "2026-11-26T12:00:00Z"}
    status, _, headers = await api.get("/v1/stats/uploads", api.analyst(), **open_range)
    assert headers["Cache-Control"] == "private, no-cache"
    # a window not final yet, inside an otherwise closed range
    api.pool.on("FROM analytics.upload_stats", [stats_row(utc(2026, 11, 26, 10, 5), final=False)])
    status, _, headers = await api.get("/v1/stats/uploads", api.analyst(), **closed)
    assert headers["Cache-Control"] == "private, no-cache"


async def test_if_none_match_gives_304_until_the_data_changes(api: Api) -> None:
    params = {"from": "2026-11-26T10:00:00Z", "to": "2026-11-26T11:00:00Z"}
    api.pool.on("FROM analytics.upload_stats", [{**{m: 1 for m in MEASURES}, "final": True, "producers": 1}])
    status, body, headers = await api.get("/v1/stats/summary", api.analyst(), **params)
    etag = headers["ETag"]
    assert status == 200 and body["uploads"] == 1
    status, body, headers = await api.get("/v1/stats/summary", {**api.analyst(), "If-None-Match": etag}, **params)
    assert status == 304 and body is None and headers["ETag"] == etag
    strong = etag.removeprefix("W/")
    status, _, _ = await api.get("/v1/stats/summary", {**api.analyst(), "If-None-Match": f'"x", {strong}'}, **params)
    assert status == 304
    api.pool.on("FROM analytics.upload_stats", [{**{m: 2 for m in MEASURES}, "final": True, "producers": 1}])
    status, body, headers = await api.get("/v1/stats/summary", {**api.analyst(), "If-None-Match": etag}, **params)
    assert status == 200 and body["uploads"] == 2 and headers["ETag"] != etag


def test_etag_helpers() -> None:
    tag = weak_etag(b'{"a":1}')
    assert tag == weak_etag(b'{"a":1}') != weak_etag(b'{"a":2}')
    assert etag_matches(tag, tag) and etag_matches(tag.removeprefix("W/"), tag) and etag_matches("*", tag)
    assert not etag_matches(None, tag) and not etag_matches('"other"', tag)


async def test_summary_top_usage_duplicates_freshness(api: Api) -> None:
    api.pool.on("GROUP BY producer", [{"producer": "b", **{m: 9 for m in MEASURES}, "final": True,
                                       "producers": 1},
                                      {"producer": "a", **{m: 4 for m in MEASURES}, "final": True,
                                       "producers": 1}])
    status, body, _ = await api.get("/v1/stats/top", api.analyst(), by="bytes")
    assert status == 200 and [(t["rank"], t["producer"], t["bytes"]) for t in body["top"]] == [(1, "b", 9), (2, "a", 4)]
    api.pool.on("GROUP BY content_type", [{"content_type": "image/png", **{m: 2 for m in MEASURES},
                                           "final": True, "producers": 1}])
    api.pool.on("min(received_at)", [{"first_upload_at": utc(2026, 11, 20), "last_upload_at": utc(2026, 11, 25)}])
    status, body, _ = await api.get("/v1/usage/alice", api.auth("alice"))
    assert status == 200 and body["totals"]["uploads"] == 2 and body["last_upload_at"] == "2026-11-25T00:00:00Z"
    assert set(body["freshness"]["tables"]) == {"upload_stats", "images"}
    api.pool.on("count(*) AS total", [{"total": 1, "exact": 1, "near": 0}])
    api.pool.on("ORDER BY received_at, image_id", [{
        "image_id": IMAGE_ID, "duplicate_of": "o", "duplicate_kind": "exact", "distance": 0, "producer": "alice",
        "sha256": "ab", "received_at": utc(2026, 11, 26, 1), "processed_at": utc(2026, 11, 26, 1, 1)}])
    status, body, headers = await api.get("/v1/duplicates", api.auth("alice"))
    assert status == 200 and body["total"] == 1 and body["duplicates"][0]["received_at"] == "2026-11-26T01:00:00Z"
    assert headers["Cache-Control"] == "private, no-cache"
    status, body, _ = await api.get("/v1/freshness", api.auth("alice"))
    assert status == 200 and set(body["tables"]) == {"duplicates", "images", "late_events", "upload_stats"}


async def test_freshness_is_measured_once_per_ttl(api: Api) -> None:
    for _ in range(3):
        await api.get("/v1/stats/summary", api.analyst())
    assert sum("analytics.freshness" in text for text, _ in api.pool.calls) == 1


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failure, reason", [
    (TimeoutError(), "timeout"),
    (OSError("connection refused"), "connection"),
    (asyncpg.exceptions.UndefinedTableError("relation does not exist"), "schema"),
])
async def test_database_trouble_is_503_with_retry_after(api: Api, failure: BaseException, reason: str) -> None:
    api.pool.fail = failure
    status, body, headers = await api.get("/v1/stats/summary", api.analyst())
    assert status == 503 and body["error"]["code"] == "unavailable" and body["error"]["reason"] == reason
    assert 1 <= int(headers["Retry-After"]) <= 5
    assert "relation" not in body["error"]["message"] and "refused" not in body["error"]["message"]


async def test_a_saturated_pool_is_503_after_the_acquire_timeout() -> None:
    pool = FakePool(hang=True)
    config = StatsConfig(acquire_timeout=0.05)
    ring = KeyRing.generate()
    async with TestClient(TestServer(create_app(config, pool, ring))) as client:
        response = await client.get("/v1/stats/summary",
                                    headers={"Authorization": f"Bearer {ring.issue('ana', 'analyst')}"})
        body = await response.json()
    assert response.status == 503 and body["error"]["reason"] == "saturated"


async def test_connections_go_back_to_the_pool_even_on_errors(api: Api) -> None:
    await api.get("/v1/stats/summary", api.analyst())
    api.pool.on("AS producers", lambda args: (_ for _ in ()).throw(asyncpg.QueryCanceledError("cancelled")))
    status, body, _ = await api.get("/v1/stats/summary", api.analyst())
    assert status == 503 and body["error"]["reason"] == "timeout"
    acquired = len(api.pool.calls)  # one acquire per statement run here (freshness and data)
    assert api.pool.released == acquired


async def test_verified_tokens_are_remembered_until_they_expire_or_the_ring_changes(api: Api) -> None:
    stats = api.client.server.app[STATS]
    token = api.ring.issue("ana", "analyst", ttl=timedelta(seconds=2))
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.get("/v1/freshness", headers))[0] == 200
    assert token in stats._verified
    stats._verified[token] = dataclasses.replace(stats._verified[token], expires_at=0)  # now expired
    status, body, _ = await api.get("/v1/freshness", headers)
    assert status == 200 and stats._verified[token].expires_at > 0  # verified again, not trusted blindly
    stats.keyring = KeyRing.generate()  # a rotation that retired the token's key
    status, _, _ = await api.get("/v1/freshness", headers)
    assert status == 401 and token not in stats._verified


async def test_unexpected_errors_are_500_without_details(api: Api) -> None:
    api.pool.fail = RuntimeError("secret internals")
    status, body, _ = await api.get("/v1/stats/summary", api.analyst())
    assert status == 500 and body == {"error": {"code": "internal_error", "message": "internal error"}}


# --- operations --------------------------------------------------------------------------------


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.get("/healthz"))[0] == 200
    status, body, _ = await api.get("/readyz")
    assert status == 200 and body == {"status": "ready", "checks": {"postgres": "ok"}}
    api.pool.fail = OSError("down")
    status, body, _ = await api.get("/readyz")
    assert status == 503 and body["checks"]["postgres"].startswith("PostgreSQL unreachable")
    api.pool.fail = None
    api.client.server.app[STATS].draining = True
    status, body, _ = await api.get("/readyz")
    assert status == 503 and body["status"] == "draining"


async def test_readiness_names_missing_views() -> None:
    class MissingViews(FakePool):
        async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[dict[str, Any]]:
            return [{"missing": ["analytics.freshness"]}]

    config = StatsConfig()
    async with TestClient(TestServer(create_app(config, MissingViews(), KeyRing.generate()))) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["checks"]["postgres"] == "missing: analytics.freshness"


async def test_metrics(api: Api) -> None:
    await api.get("/v1/stats/summary", api.analyst())
    await api.get("/v1/stats/summary", api.analyst(), bogus="1")
    text = await (await api.client.get("/metrics")).text()
    assert 'imgstream_stats_requests_total{method="GET",route="/v1/stats/summary",status="200"} 1.0' in text
    assert 'imgstream_stats_requests_total{method="GET",route="/v1/stats/summary",status="400"} 1.0' in text
    assert 'imgstream_stats_query_duration_seconds_count{query="summary"} 1.0' in text
    assert 'imgstream_stats_data_lag_seconds{table="upload_stats"} 3.0' in text
    assert 'imgstream_stats_pool_connections{state="max"} 10.0' in text


async def test_request_log_is_structured(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgstream.stats"):
        await api.client.get("/v1/stats/summary", headers={**api.auth("alice"), "X-Request-Id": "req-42"})
    record = next(r for r in caplog.records if r.getMessage() == "request")
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42" and line["principal"] == "alice" and line["role"] == "producer"
    assert line["status"] == 200 and line["route"] == "/v1/stats/summary" and "Bearer" not in json.dumps(line)


async def test_openapi_matches_the_routes(api: Api) -> None:
    status, doc, _ = await api.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    registered = {(r.method, r.resource.canonical) for r in api.client.server.app.router.routes()
                  if r.method != "HEAD"}
    assert documented == registered == {(m, p) for m, p, _ in ROUTES}
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in item["get"].get("parameters", []) if p["in"] == "path"}
        assert names == declared, path
    # query parameters documented == the parser's closed sets
    accepted = {"/v1/stats/uploads": UploadsQuery.PARAMS, "/v1/stats/summary": SummaryQuery.PARAMS,
                "/v1/stats/top": TopQuery.PARAMS, "/v1/duplicates": DuplicatesQuery.PARAMS,
                "/v1/usage/{producer}": UsageQuery.PARAMS, "/v1/freshness": frozenset(),
                "/v1/images/{image_id}": ImageQuery.PARAMS}
    for path, params in accepted.items():
        declared = {p["name"] for p in doc["paths"][path]["get"].get("parameters", []) if p["in"] == "query"}
        assert declared == params, path


# --- config ------------------------------------------------------------------------------------


def test_config_from_env() -> None:
    config = StatsConfig.from_env({"IMGSTREAM_PG_DSN": "postgresql://imgstream@127.0.0.1:5432/imgstream",
                                   "IMGSTREAM_STATS_PORT": "18090", "IMGSTREAM_STATS_POOL_MAX": "4",
                                   "IMGSTREAM_TOKEN_KEYS_FILE": "/tmp/keys.json"})
    assert (config.port, config.pool_max, str(config.keys_file)) == (18090, 4, "/tmp/keys.json")
    assert config.pool_limits.max_size == 4 and config.pool_limits.command_timeout == config.statement_timeout
    dsn = str(config.session_postgres.dsn)
    assert "default_transaction_read_only=on" in dsn and "statement_timeout=5000" in dsn
    assert "pw" not in repr(StatsConfig.from_env({"IMGSTREAM_PG_DSN": "postgresql://u:pw@h/db"}))
    own = StatsConfig.from_env({"IMGSTREAM_PG_DSN": "postgresql://imgstream@h/db",
                                "IMGSTREAM_STATS_PG_DSN": "postgresql://analyst@h/db"})
    assert str(own.postgres.dsn) == "postgresql://analyst@h/db"
    with pytest.raises(ValueError):
        StatsConfig.from_env({"IMGSTREAM_STATS_POOL_MIN": "5", "IMGSTREAM_STATS_POOL_MAX": "2"})


def test_session_settings_never_override_the_dsn() -> None:
    assert with_session_settings("postgresql://h/db?statement_timeout=1", {"statement_timeout": "9"}) == \
        "postgresql://h/db?statement_timeout=1"
    assert with_session_settings("host=h dbname=db", {"a": "b"}) == "host=h dbname=db"
