"""The stats API on the real PostgreSQL: known rows are written into the replicated tables (as the
CDC sink would), then every endpoint's numbers must equal both the hand-computed truth and what
the documented ``analytics`` views give in SQL. Producer scope is enforced, hostile parameters are
400s that change nothing, and the API's sessions cannot write at all.

Each test owns a random past day (2001-2019: nothing real lives there, and no final window is
moved past real ones) and synthetic producer names of its own, and deletes its rows afterwards.
The API and the test's own sessions set the test-only switch that shows synthetic producers.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Iterable
from urllib.parse import quote

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.stats.app import create_app, server_options
from api.stats.config import INCLUDE_SYNTHETIC_SETTING, StatsConfig, with_session_settings
from api.stats.pool import open_pool
from api.stats.sql import MEASURES, ROLLUP_VIEWS
from api.stats.times import format_time, parse_time
from imgstream.adapters.postgres import create_pool
from imgstream.config import PostgresConfig, Secret, StackConfig
from imgstream.domain.producers import synthetic
from imgstream.domain.tokens import KeyRing
from imgstream.domain.windows import Interval

STAT_COLUMNS = ("window_start", "window_end", "producer", "content_type", "uploads", "bytes", "accepted",
                "duplicates_exact", "duplicates_near", "duplicates", "rejected", "revision", "late_events", "final",
                "updated_at")


def iso(ts: datetime) -> str:
    return format_time(ts)


# --- the known data set ------------------------------------------------------------------------


@dataclass
class Minute:
    """One upload_stats row, as the Flink job writes it (uploads = accepted + duplicates)."""

    start: datetime
    producer: str
    content_type: str
    accepted: int
    exact: int = 0
    near: int = 0
    rejected: int = 0
    size: int = 100  # bytes per upload
    late: int = 0
    final: bool = True

    @property
    def measures(self) -> dict[str, int]:
        uploads = self.accepted + self.exact + self.near
        return {"uploads": uploads, "bytes": uploads * self.size, "accepted": self.accepted,
                "duplicates": self.exact + self.near, "duplicates_exact": self.exact, "duplicates_near": self.near,
                "rejected": self.rejected, "late_events": self.late}

    def row(self) -> tuple[Any, ...]:
        m = self.measures
        return (self.start, self.start + timedelta(minutes=1), self.producer, self.content_type, m["uploads"],
                m["bytes"], m["accepted"], m["duplicates_exact"], m["duplicates_near"], m["duplicates"],
                m["rejected"], 1 + self.late, self.late, self.final, self.start + timedelta(minutes=2))


@dataclass
class Dataset:
    day: datetime
    a: str
    b: str
    minutes: list[Minute] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    final_until: datetime | None = None

    @property
    def producers(self) -> list[str]:
        return [self.a, self.b]

    def at(self, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
        return self.day + timedelta(days=day, hours=hour, minutes=minute, seconds=second)

    # -- truth, computed by hand from the rows ------------------------------------------------------

    def selected(self, start: datetime, end: datetime, producer: str | None = None,
                 content_type: str | None = None) -> list[Minute]:
        return [m for m in self.minutes if start <= m.start < end and (producer is None or m.producer == producer)
                and (content_type is None or m.content_type == content_type)]

    def totals(self, minutes: Iterable[Minute]) -> dict[str, int]:
        out = {m: 0 for m in MEASURES}
        for minute in minutes:
            for k, v in minute.measures.items():
                out[k] += v
        return out

    def series(self, interval: str, start: datetime, end: datetime, group_by: tuple[str, ...] = (),
               producer: str | None = None, content_type: str | None = None) -> list[dict[str, Any]]:
        step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[interval]
        buckets: dict[tuple[Any, ...], list[Minute]] = {}
        for m in self.selected(start, end, producer, content_type):
            bucket = self.day + (m.start - self.day) // step * step
            key = (bucket, *(getattr(m, "producer" if d == "producer" else "content_type") for d in group_by))
            buckets.setdefault(key, []).append(m)
        out = []
        for key in sorted(buckets):
            rows = buckets[key]
            final = all(r.final for r in rows)
            if interval != "minute":
                final = final and self.final_until is not None and self.final_until >= key[0] + step
            out.append({"window_start": iso(key[0]), "window_end": iso(key[0] + step),
                        **dict(zip(group_by, key[1:])), **self.totals(rows), "final": final})
        return out


def build(day: datetime, tag: str) -> Dataset:
    a, b = synthetic(f"it-{tag}-a"), synthetic(f"it-{tag}-b")
    ds = Dataset(day, a, b)
    png, jpeg, gif, webp = "image/png", "image/jpeg", "image/gif", "image/webp"
    ds.minutes = [
        Minute(ds.at(0, 0, 0), a, png, accepted=2, exact=1, rejected=1, size=1000),
        Minute(ds.at(0, 0, 1), a, png, accepted=1, near=1, size=1250),
        Minute(ds.at(0, 0, 1), a, jpeg, accepted=1),
        Minute(ds.at(0, 0, 59), a, jpeg, accepted=4, rejected=2, late=1, size=1000),
        Minute(ds.at(0, 1, 30), a, png, accepted=3, exact=1, near=1, size=1000),
        Minute(ds.at(0, 5, 10), a, gif, accepted=2),
        Minute(ds.at(0, 5, 11), a, gif, accepted=1, size=50, final=False),
        Minute(ds.at(1, 3, 0), a, png, accepted=7, size=1000),
        Minute(ds.at(1, 23, 59), a, jpeg, accepted=1, size=10, final=False),
        Minute(ds.at(0, 0, 0), b, png, accepted=10, size=1000),
        Minute(ds.at(0, 0, 30), b, webp, accepted=4, exact=2),
        Minute(ds.at(1, 3, 0), b, png, accepted=1, size=1),
    ]
    # images: one per upload of producer a on day 0 hour 0, plus their duplicates of both kinds
    original = str(uuid.uuid4())
    for i, (status, kind, distance) in enumerate([("accepted", None, None), ("duplicate", "exact", 0),
                                                  ("duplicate", "near", 5), ("rejected", None, None),
                                                  ("duplicate", "near", 3), ("duplicate", "exact", 0)]):
        image_id = original if i == 0 else str(uuid.uuid4())
        producer = b if i == 5 else a
        received = ds.at(0, 0, i, 7)
        ds.images.append({
            "image_id": image_id, "producer": producer, "sha256": f"{i:064x}", "phash": f"{i:016x}", "size": 1000 + i,
            "content_type": png, "width": 10, "height": 20, "storage_key": f"sha256/00/00/{i:064x}",
            "received_at": received, "status": status, "duplicate_of": original if kind else None,
            "duplicate_kind": kind, "distance": distance, "lateness": "on_time",
            "reject_reason": "schema" if status == "rejected" else None,
            "processed_at": received + timedelta(seconds=30)})
        if kind:
            ds.duplicates.append({"duplicate_of": original, "image_id": image_id, "duplicate_kind": kind,
                                  "distance": distance, "producer": producer, "sha256": f"{i:064x}",
                                  "received_at": received, "processed_at": received + timedelta(seconds=30)})
    return ds


async def insert(conn: asyncpg.Connection, ds: Dataset) -> None:
    # cdc_ts stays NULL: rows written by a test, not by CDC, must not make the freshness probe
    # (the newest change applied) look fresher than replication really is.
    cdc_ts = None
    await conn.executemany(
        f"INSERT INTO public.upload_stats ({', '.join(STAT_COLUMNS)}, cdc_op, cdc_ts) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(STAT_COLUMNS) + 3))})",
        [(*m.row(), "c", cdc_ts) for m in ds.minutes])
    columns = list(ds.images[0])
    await conn.executemany(
        f"INSERT INTO public.images ({', '.join(columns)}, cdc_op, cdc_ts) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 3))})",
        [(*(img[c] for c in columns), "c", cdc_ts) for img in ds.images])
    columns = list(ds.duplicates[0])
    await conn.executemany(
        f"INSERT INTO public.duplicates ({', '.join(columns)}, cdc_op, cdc_ts) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 3))})",
        [(*(d[c] for c in columns), "c", cdc_ts) for d in ds.duplicates])


async def delete(conn: asyncpg.Connection, ds: Dataset) -> None:
    for table in ("upload_stats", "images", "duplicates", "late_events"):
        await conn.execute(f"DELETE FROM public.{table} WHERE producer = ANY($1::text[])", ds.producers)


async def fingerprint(conn: asyncpg.Connection, ds: Dataset) -> tuple[Any, ...]:
    """Everything about the test's rows (and the tables' existence): equal before and after = unchanged."""
    out = []
    for table in ("upload_stats", "images", "duplicates"):
        out.append(await conn.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM public.{table} t "
            f"WHERE producer = ANY($1::text[])", ds.producers))
    out.append(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    out.append(await conn.fetchval("SELECT count(*) FROM pg_views WHERE schemaname = 'analytics'"))
    return tuple(out)


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Stats:
    client: TestClient
    ring: KeyRing
    ds: Dataset
    owner: asyncpg.Pool  # writable, for the test's own checks
    api_pool: asyncpg.Pool  # the API's read-only pool

    def auth(self, name: str, role: str = "producer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ring.issue(name, role)}"}

    def analyst(self) -> dict[str, str]:
        return self.auth("it-analyst", "analyst")

    async def get(self, path: str, headers: dict[str, str], **params: str) -> tuple[int, Any]:
        response = await self.client.get(path, headers=headers, params=params or None)
        return response.status, await response.json()

    async def ok(self, path: str, headers: dict[str, str] | None = None, **params: str) -> Any:
        status, body = await self.get(path, headers or self.analyst(), **params)
        assert status == 200, body
        return body

    async def sql(self, text: str, *args: Any) -> list[asyncpg.Record]:
        async with self.owner.acquire() as conn:
            return await conn.fetch(text, *args)


@pytest_asyncio.fixture
async def stats(stack_env: dict[str, str], stack_config: StackConfig) -> AsyncIterator[Stats]:
    rnd = random.Random()
    day = datetime(2001 + rnd.randrange(19), 1, 1, tzinfo=timezone.utc) + timedelta(days=rnd.randrange(360))
    ds = build(day, uuid.uuid4().hex[:10])
    config = StatsConfig.from_env({**stack_env, "IMGSTREAM_STATS_POOL_MAX": "4",
                                   "IMGSTREAM_STATS_INCLUDE_SYNTHETIC": "1"})
    owner = await create_pool(PostgresConfig(dsn=Secret(with_session_settings(
        str(stack_config.postgres.dsn), {INCLUDE_SYNTHETIC_SETTING: "on"}))))
    api_pool = await open_pool(config)
    try:
        async with owner.acquire() as conn:
            await insert(conn, ds)
            ds.final_until = await conn.fetchval("SELECT max(window_end) FROM analytics.upload_stats WHERE is_final")
        ring = KeyRing.generate()
        # freshness_ttl=0: every answer measures now, so final_until is the one just read
        app = create_app(StatsConfig(**{**config.__dict__, "freshness_ttl": 0.0}), api_pool, ring)
        async with TestClient(TestServer(app, **server_options(config))) as client:
            yield Stats(client, ring, ds, owner, api_pool)
    finally:
        async with owner.acquire() as conn:
            await delete(conn, ds)
        await api_pool.close()
        await owner.close()


# --- numbers: API == hand-computed truth == SQL views ------------------------------------------


def view_series(rows: Iterable[asyncpg.Record], group_by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Roll-up view rows (one per producer and content type) merged to the requested grouping."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["window_start"], *(r[d] for d in group_by))
        entry = merged.setdefault(key, {"window_start": iso(r["window_start"]), "window_end": iso(r["window_end"]),
                                        **{d: r[d] for d in group_by}, **{m: 0 for m in MEASURES}, "final": True})
        for m in MEASURES:
            entry[m] += int(r[m])
        entry["final"] = entry["final"] and bool(r["is_final"])
    return [merged[k] for k in sorted(merged)]


@pytest.mark.parametrize("interval", ["minute", "hour", "day"])
@pytest.mark.parametrize("group_by", [(), ("producer",), ("content_type",), ("producer", "content_type")])
async def test_uploads_series_equals_truth_and_views(stats: Stats, interval: str, group_by: tuple[str, ...]) -> None:
    ds = stats.ds
    start, end = ds.at(0, 0), ds.at(2, 0)
    if interval == "minute":
        end = ds.at(0, 6)  # within the minute interval's cap, still every row of day 0
    params = {"from": iso(start), "to": iso(end), "interval": interval}
    if group_by:
        params["group_by"] = ",".join(group_by)
    body = await stats.ok("/v1/stats/uploads", **params)
    truth = ds.series(interval, start, end, group_by)
    view = ROLLUP_VIEWS[Interval(interval)]
    rows = await stats.sql(f"SELECT window_start, window_end, producer, content_type, "
                           f"{', '.join(MEASURES)}, is_final FROM {view} "
                           f"WHERE window_start >= $1 AND window_start < $2 ORDER BY 1", start, end)
    assert body["windows"] == truth == view_series(rows, group_by)
    assert body["from"] == iso(start) and body["to"] == iso(end) and body["next"] is None
    assert truth, "the data set must produce windows"


async def test_series_filters_and_producer_scope(stats: Stats) -> None:
    ds = stats.ds
    start, end = ds.at(0, 0), ds.at(2, 0)
    base = {"from": iso(start), "to": iso(end), "interval": "hour", "group_by": "content_type"}
    mine = await stats.ok("/v1/stats/uploads", stats.auth(ds.a), **base)
    assert mine["producer"] == ds.a
    assert mine["windows"] == ds.series("hour", start, end, ("content_type",), producer=ds.a)
    rows = await stats.sql("SELECT * FROM analytics.upload_stats_hourly WHERE producer = $1 AND window_start >= $2 "
                           "AND window_start < $3", ds.a, start, end)
    assert mine["windows"] == view_series(rows, ("content_type",))
    png = await stats.ok("/v1/stats/uploads", **base, producer=ds.b, content_type="image/png")
    assert png["windows"] == ds.series("hour", start, end, ("content_type",), producer=ds.b, content_type="image/png")
    assert {w["content_type"] for w in png["windows"]} == {"image/png"}


async def test_series_pages_reassemble_to_the_whole(stats: Stats) -> None:
    ds = stats.ds
    params = {"from": iso(ds.at(0, 0)), "to": iso(ds.at(0, 6)), "interval": "minute",
              "group_by": "producer,content_type"}
    whole = (await stats.ok("/v1/stats/uploads", **params))["windows"]
    pages, body = [], await stats.ok("/v1/stats/uploads", **params, limit="3")
    while True:
        assert len(body["windows"]) <= 3
        pages += body["windows"]
        if body["next"] is None:
            break
        response = await stats.client.get(body["next"], headers=stats.analyst())
        assert response.status == 200
        body = await response.json()
    assert pages == whole and len(whole) == 9


async def test_summary_equals_truth_and_views(stats: Stats) -> None:
    ds = stats.ds
    start, end = ds.at(0, 0), ds.at(2, 0)
    for producer, content_type in [(None, None), (ds.a, None), (ds.b, "image/png"), (None, "image/gif")]:
        params = {"from": iso(start), "to": iso(end)}
        if producer:
            params["producer"] = producer
        if content_type:
            params["content_type"] = content_type
        body = await stats.ok("/v1/stats/summary", **params)
        selected = ds.selected(start, end, producer, content_type)
        truth = ds.totals(selected)
        assert {m: body[m] for m in MEASURES} == truth
        assert body["producers"] == len({m.producer for m in selected})
        assert body["final"] is (all(m.final for m in selected) and ds.final_until >= end)
        # the same totals from the day roll-up an analyst would query
        rows = await stats.sql(
            f"SELECT {', '.join(f'coalesce(sum({m}), 0)::bigint AS {m}' for m in MEASURES)} "
            f"FROM analytics.upload_stats_daily WHERE window_start >= $1 AND window_start < $2 "
            f"AND ($3::text IS NULL OR producer = $3) AND ($4::text IS NULL OR content_type = $4)",
            start, end, producer, content_type)
        assert dict(rows[0]) == truth
    # a partial range: whole minutes only, and the producer's own token
    body = await stats.ok("/v1/stats/summary", stats.auth(ds.a), **{"from": iso(ds.at(0, 0, 0, 30)),
                                                                     "to": iso(ds.at(0, 0, 1, 1))})
    assert body["from"] == iso(ds.at(0, 0, 0)) and body["to"] == iso(ds.at(0, 0, 2))
    assert {m: body[m] for m in MEASURES} == ds.totals(ds.selected(ds.at(0, 0, 0), ds.at(0, 0, 2), ds.a))


async def test_top_n_equals_truth(stats: Stats) -> None:
    ds = stats.ds
    start, end = ds.at(0, 0), ds.at(2, 0)
    for by in ("uploads", "bytes"):
        body = await stats.ok("/v1/stats/top", **{"from": iso(start), "to": iso(end), "by": by})
        truth = sorted(((p, ds.totals(ds.selected(start, end, p))) for p in ds.producers),
                       key=lambda pt: (-pt[1][by], -pt[1]["bytes" if by == "uploads" else "uploads"], pt[0]))
        assert [(t["rank"], t["producer"], {m: t[m] for m in MEASURES}) for t in body["top"]] == \
            [(i, p, totals) for i, (p, totals) in enumerate(truth, 1)]
    body = await stats.ok("/v1/stats/top", **{"from": iso(start), "to": iso(end), "by": "uploads", "limit": "1"})
    assert len(body["top"]) == 1
    # a producer may rank its own content types, never other producers
    mine = await stats.ok("/v1/stats/top", stats.auth(ds.a), **{"from": iso(start), "to": iso(end),
                                                                "dimension": "content_type"})
    types = {m.content_type for m in ds.selected(start, end, ds.a)}
    assert {t["content_type"] for t in mine["top"]} == types
    assert sum(t["uploads"] for t in mine["top"]) == ds.totals(ds.selected(start, end, ds.a))["uploads"]


async def test_usage_equals_truth(stats: Stats) -> None:
    ds = stats.ds
    body = await stats.ok(f"/v1/usage/{ds.a}", stats.auth(ds.a), **{"from": iso(ds.at(0, 0)),
                                                                     "to": iso(ds.at(1, 12))})
    start, end = ds.at(0, 0), ds.at(2, 0)  # whole UTC days
    assert (body["from"], body["to"]) == (iso(start), iso(end))
    selected = ds.selected(start, end, ds.a)
    assert body["totals"] == ds.totals(selected)
    assert {e["content_type"]: {m: e[m] for m in MEASURES} for e in body["by_content_type"]} == {
        t: ds.totals(m for m in selected if m.content_type == t) for t in {m.content_type for m in selected}}
    assert body["final"] is False  # day 0 has a minute that is not final yet
    own_images = [i["received_at"] for i in ds.images if i["producer"] == ds.a]
    assert body["first_upload_at"] == iso(min(own_images)) and body["last_upload_at"] == iso(max(own_images))


async def test_duplicates_equal_truth_and_view(stats: Stats) -> None:
    ds = stats.ds
    start, end = ds.at(0, 0), ds.at(1, 0)
    body = await stats.ok("/v1/duplicates", **{"from": iso(start), "to": iso(end)})
    truth = sorted(ds.duplicates, key=lambda d: (d["received_at"], d["image_id"]))
    assert [d["image_id"] for d in body["duplicates"]] == [d["image_id"] for d in truth]
    assert body["total"] == len(truth) == 4
    assert (body["exact"], body["near"]) == (2, 2)
    first = body["duplicates"][0]
    assert first == {**{k: v for k, v in truth[0].items()}, "received_at": iso(truth[0]["received_at"]),
                     "processed_at": iso(truth[0]["processed_at"])}
    rows = await stats.sql("SELECT image_id FROM analytics.duplicates WHERE received_at >= $1 AND received_at < $2 "
                           "AND producer = ANY($3::text[]) ORDER BY received_at, image_id", start, end, ds.producers)
    assert [r["image_id"] for r in rows] == [d["image_id"] for d in body["duplicates"]]
    # filters: kind, producer scope, copies of one image
    near = await stats.ok("/v1/duplicates", stats.auth(ds.a), **{"from": iso(start), "to": iso(end), "kind": "near"})
    assert {d["image_id"] for d in near["duplicates"]} == {d["image_id"] for d in truth
                                                           if d["duplicate_kind"] == "near" and d["producer"] == ds.a}
    mine = await stats.ok("/v1/duplicates", stats.auth(ds.b), **{"from": iso(start), "to": iso(end)})
    assert [d["producer"] for d in mine["duplicates"]] == [ds.b] and mine["total"] == 1
    copies = await stats.ok("/v1/duplicates", **{"from": iso(start), "to": iso(end),
                                                 "duplicate_of": truth[0]["duplicate_of"]})
    assert copies["total"] == 4
    # pages of 1 reassemble to the whole
    seen, params = [], {"from": iso(start), "to": iso(end), "limit": "1"}
    body = await stats.ok("/v1/duplicates", **params)
    while True:
        seen += [d["image_id"] for d in body["duplicates"]]
        if not body["next"]:
            break
        response = await stats.client.get(body["next"], headers=stats.analyst())
        body = await response.json()
    assert seen == [d["image_id"] for d in truth]


async def test_images_with_their_status(stats: Stats) -> None:
    ds = stats.ds
    by_status = {}
    for image in ds.images:
        if image["producer"] != ds.a:
            continue
        body = await stats.ok(f"/v1/images/{image['image_id']}", stats.auth(ds.a))
        assert body["status"] == image["status"] and body["producer"] == ds.a
        assert body["received_at"] == iso(image["received_at"]) and body["size"] == image["size"]
        if image["status"] == "duplicate":
            assert (body["duplicate_of"], body["duplicate_kind"], body["distance"]) == (
                image["duplicate_of"], image["duplicate_kind"], image["distance"])
        else:
            assert "duplicate_of" not in body
        by_status[image["status"]] = body
    assert set(by_status) == {"accepted", "duplicate", "rejected"}
    assert by_status["rejected"]["reject_reason"] == "schema"
    view = await stats.sql("SELECT status FROM analytics.images WHERE image_id = $1", ds.images[1]["image_id"])
    assert view[0]["status"] == "duplicate"
    pending = await stats.ok(f"/v1/images/{uuid.uuid4()}", stats.auth(ds.a))
    assert pending["status"] == "pending"


async def test_image_lists_the_derivatives_of_its_content(stats: Stats) -> None:
    ds = stats.ds
    sha = uuid.uuid4().hex * 2  # content of this test only
    live, deleted, plain_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    base = {k: v for k, v in ds.images[0].items() if k not in ("image_id", "producer", "sha256", "status")}
    made = [  # (ladder, preset, format, width, height, size)
        ("l1", "thumb", "webp", 256, 128, 2000), ("l1", "small", "jpeg", 1024, 512, 50000),
        ("l1", "small", "avif", 1024, 512, 30000), ("l0", "thumb", "jpeg", 200, 100, 1500)]
    async with stats.owner.acquire() as conn:
        for image_id, producer, status, content in ((live, ds.a, "accepted", sha), (deleted, ds.b, "deleted", sha),
                                                    (plain_id, ds.a, "accepted", uuid.uuid4().hex * 2)):
            row = {**base, "image_id": image_id, "producer": producer, "sha256": content, "status": status}
            await conn.execute(f"INSERT INTO public.images ({', '.join(row)}, cdc_op) "
                               f"VALUES ({', '.join(f'${i}' for i in range(1, len(row) + 1))}, 'c')", *row.values())
        await conn.executemany(
            "INSERT INTO public.derivatives (sha256, ladder, preset, format, width, height, size, storage_key, "
            "created_at, run_id, cdc_op) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), 'it', 'c')",
            [(sha, *d[:6], f"derived/{d[0]}/{d[1]}/{sha[:2]}/{sha}.{d[2]}") for d in made])
    try:
        body = await stats.ok(f"/v1/images/{live}", stats.auth(ds.a))
        # what docs/batch.md's analyst query gives, field for field and in its order
        sketch = await stats.sql(
            "SELECT d.preset, d.format, d.width, d.height, d.size, d.storage_key FROM analytics.images i "
            "JOIN analytics.derivatives d ON d.sha256 = i.sha256 WHERE i.image_id = $1 "
            "ORDER BY d.ladder, d.preset, d.format", live)
        assert len(sketch) == len(made)
        assert body["derivatives"] == [dict(r) for r in sketch]
        assert body["derivatives"][0] == {"preset": "thumb", "format": "jpeg", "width": 200, "height": 100,
                                          "size": 1500, "storage_key": f"derived/l0/thumb/{sha[:2]}/{sha}.jpeg"}
        # the same content, deleted by its other producer: no derivatives listed for it
        gone = await stats.ok(f"/v1/images/{deleted}", stats.auth(ds.b))
        assert gone["status"] == "deleted" and gone["derivatives"] == []
        # another producer's image with derivatives is still just "pending" (no leak)
        hidden = await stats.ok(f"/v1/images/{live}", stats.auth(ds.b))
        assert hidden == {"image_id": live, "status": "pending", "freshness": hidden["freshness"]}
        # content without any derivatives: an empty list
        plain = await stats.ok(f"/v1/images/{plain_id}", stats.auth(ds.a))
        assert plain["derivatives"] == []
        assert set(plain["freshness"]["tables"]) == {"images", "derivatives"}
    finally:
        async with stats.owner.acquire() as conn:
            await conn.execute("DELETE FROM public.derivatives WHERE sha256 = $1", sha)


async def test_every_answer_carries_freshness(stats: Stats) -> None:
    ds = stats.ds
    paths = ["/v1/stats/uploads", "/v1/stats/summary", "/v1/stats/top", "/v1/duplicates", f"/v1/usage/{ds.a}",
             f"/v1/images/{ds.images[0]['image_id']}", "/v1/freshness"]
    for path in paths:
        body = await stats.ok(path)
        fresh = body["freshness"]
        assert fresh["measured_at"] and fresh["tables"], path
        for table, entry in fresh["tables"].items():
            assert set(entry) >= {"newest_change_at", "newest_applied_at", "lag_seconds"}, (path, table)
            assert (entry["lag_seconds"] is None) == (entry["newest_change_at"] is None)
            assert entry["lag_seconds"] is None or entry["lag_seconds"] >= 0
    whole = await stats.ok("/v1/freshness")
    view = {r["table_name"]: r for r in await stats.sql("SELECT * FROM analytics.freshness")}
    assert set(whole["tables"]) == set(view)
    for table, row in view.items():  # the view's newest change (or CDC applied a newer one since)
        shown = whole["tables"][table]["newest_change_at"]
        if shown is not None:
            assert row["newest_change_at"] is not None
            assert parse_time("t", shown) <= row["newest_change_at"] + timedelta(milliseconds=1)
    assert whole["tables"]["upload_stats"]["final_until"] == iso(
        (await stats.sql("SELECT max(window_end) AS m FROM analytics.upload_stats WHERE is_final"))[0]["m"])


async def test_closed_ranges_are_cacheable_and_revalidate(stats: Stats) -> None:
    ds = stats.ds
    closed = {"from": iso(ds.at(0, 0)), "to": iso(ds.at(0, 2)), "interval": "hour"}
    response = await stats.client.get("/v1/stats/uploads", headers=stats.analyst(), params=closed)
    assert response.status == 200 and response.headers["Cache-Control"].startswith("private, max-age=")
    etag = response.headers["ETag"]
    again = await stats.client.get("/v1/stats/uploads", headers={**stats.analyst(), "If-None-Match": etag},
                                   params=closed)
    assert again.status == 304
    open_range = {**closed, "to": iso(ds.at(0, 6))}  # hour 5 has a minute that is not final
    response = await stats.client.get("/v1/stats/uploads", headers=stats.analyst(), params=open_range)
    assert response.headers["Cache-Control"] == "private, no-cache"


# --- access --------------------------------------------------------------------------------------


async def test_cross_producer_access_is_denied(stats: Stats) -> None:
    ds = stats.ds
    a = stats.auth(ds.a)
    span = {"from": iso(ds.at(0, 0)), "to": iso(ds.at(2, 0))}
    for path, params in [("/v1/stats/uploads", {**span, "producer": ds.b}),
                         ("/v1/stats/summary", {**span, "producer": ds.b}),
                         ("/v1/duplicates", {**span, "producer": ds.b}),
                         (f"/v1/usage/{ds.b}", span),
                         ("/v1/stats/top", span)]:
        status, body = await stats.get(path, a, **params)
        assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
    # another producer's image answers like an unknown id: no existence oracle
    others = [i for i in ds.images if i["producer"] == ds.b]
    hidden = await stats.ok(f"/v1/images/{others[0]['image_id']}", a)
    assert {k: v for k, v in hidden.items() if k != "freshness"} == {"image_id": others[0]["image_id"],
                                                                     "status": "pending"}
    # and what a sees without asking is only its own
    summary = await stats.ok("/v1/stats/summary", a, **span)
    assert summary["uploads"] == ds.totals(ds.selected(ds.at(0, 0), ds.at(2, 0), ds.a))["uploads"]
    status, _ = await stats.get("/v1/stats/summary", {}, **span)
    assert status == 401


# --- hostile input -------------------------------------------------------------------------------

HOSTILE = [
    ("/v1/stats/uploads", {"from": "2026-01-01T00:00:00Z'; DELETE FROM public.upload_stats; --"}, "from"),
    ("/v1/stats/uploads", {"group_by": "producer; DROP TABLE public.images"}, "group_by"),
    ("/v1/stats/uploads", {"group_by": "(SELECT 1)"}, "group_by"),
    ("/v1/stats/uploads", {"interval": "hour'::interval) --"}, "interval"),
    ("/v1/stats/uploads", {"producer": "x' OR '1'='1"}, "producer"),
    ("/v1/stats/uploads", {"content_type": "image/png' OR 1=1 --"}, "content_type"),
    ("/v1/stats/uploads", {"limit": "1; DROP TABLE public.duplicates"}, "limit"),
    ("/v1/stats/uploads", {"from": "2001-01-01T00:00:00Z", "to": "2099-12-31T00:00:00Z"}, "from"),
    ("/v1/stats/uploads", {"from": "2001-01-01T00:00:00Z", "to": "2001-01-09T00:00:00Z", "interval": "minute"},
     "from"),
    ("/v1/stats/uploads", {"to": "2026-01-01T00:00:00+24:00"}, "to"),
    ("/v1/stats/uploads", {"to": "2026-01-01T00:00:00 Europe/Berlin"}, "to"),
    ("/v1/stats/uploads", {"to": "2026-01-01T00:00:00"}, "to"),
    ("/v1/stats/uploads", {"order_by": "uploads"}, "order_by"),
    ("/v1/stats/summary", {"from": "2001-01-01T00:00:00Z", "to": "2003-01-01T00:00:00Z"}, "from"),
    ("/v1/stats/summary", {"where": "1=1"}, "where"),
    ("/v1/stats/top", {"by": "uploads; DELETE FROM public.images"}, "by"),
    ("/v1/stats/top", {"dimension": "producer, (SELECT pg_sleep(1))"}, "dimension"),
    ("/v1/duplicates", {"kind": "near' OR 'x'='x"}, "kind"),
    ("/v1/duplicates", {"duplicate_of": "00000000-0000-0000-0000-000000000000' OR 1=1"}, "duplicate_of"),
    ("/v1/duplicates", {"cursor": "WzEsIngiLFsiMjAwMS0wMS0wMVQwMDowMDowMFoiLCInIE9SIDE9MSJdXQ"}, "cursor"),
    ("/v1/usage/" + quote("x' OR '1'='1", safe=""), {}, "producer"),
    ("/v1/images/" + quote("1' OR '1'='1", safe=""), {}, "image_id"),
    ("/v1/freshness", {"table": "pg_shadow"}, "table"),
]


async def test_hostile_parameters_are_400_and_change_nothing(stats: Stats) -> None:
    async with stats.owner.acquire() as conn:
        before = await fingerprint(conn, stats.ds)
    for path, params, field in HOSTILE:
        status, body = await stats.get(path, stats.analyst(), **params)
        assert status == 400, (path, params, body)
        assert body["error"]["code"] == "bad_request" and body["error"]["field"] == field, (path, body)
    async with stats.owner.acquire() as conn:
        assert await fingerprint(conn, stats.ds) == before
    # the data is still all there, and still answers the same
    body = await stats.ok("/v1/stats/summary", **{"from": iso(stats.ds.at(0, 0)), "to": iso(stats.ds.at(2, 0))})
    assert body["uploads"] == stats.ds.totals(stats.ds.minutes)["uploads"]


async def test_the_api_sessions_cannot_write(stats: Stats) -> None:
    """Defence in depth: even a statement that reached PostgreSQL through the API's pool could not
    change anything (read-only transactions, a statement timeout)."""
    async with stats.api_pool.acquire() as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM public.upload_stats WHERE producer = $1", stats.ds.a)
        assert await conn.fetchval("SHOW statement_timeout") == "5s"
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute("BEGIN; SET LOCAL statement_timeout = 200; SELECT pg_sleep(1)")
        assert conn.is_in_transaction()  # left open by the failed statement...
    for _ in range(stats.api_pool.get_size()):  # ...and rolled back when the pool took it back
        async with stats.api_pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW statement_timeout") == "5s"
    assert (await stats.sql("SELECT count(*) AS n FROM public.upload_stats WHERE producer = $1",
                            stats.ds.a))[0]["n"] == sum(m.producer == stats.ds.a for m in stats.ds.minutes)


async def test_readiness_on_the_real_database(stats: Stats) -> None:
    response = await stats.client.get("/readyz")
    assert response.status == 200 and (await response.json())["checks"] == {"postgres": "ok"}
