"""Stats API query building: values are always bound ($n), identifiers come only from the closed
sets, producer scope is always applied, and rows are shaped into answers exactly."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from api.stats.app import _dumps
from api.stats.params import Scope
from api.stats.queries.duplicates import DuplicatesQuery
from api.stats.queries.freshness import freshness_entry, freshness_sql
from api.stats.queries.image import ImageQuery
from api.stats.queries.summary import SummaryQuery
from api.stats.queries.top import TopQuery
from api.stats.queries.uploads import UploadsQuery
from api.stats.queries.usage import UsageQuery
from api.stats.ranges import TimeRange
from api.stats.sql import BUCKET, MEASURES, Sql
from api.stats.times import as_utc, format_time
from imgstream.domain.windows import Interval

NOW = datetime(2026, 11, 26, 12, 34, 56, tzinfo=timezone.utc)
ANALYST = Scope(None)
ALICE = Scope("alice")
HOSTILE = "x'); DELETE FROM public.images; --"
KNOWN_RELATIONS = {"analytics.upload_stats", "analytics.images", "analytics.duplicates", "analytics.freshness",
                   "analytics.derivatives"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def check_bound(sql: Sql) -> None:
    """Placeholders are $1..$n, each used, n == number of arguments; relations are the views."""
    numbers = {int(n) for n in re.findall(r"\$(\d+)", sql.text)}
    assert numbers == set(range(1, len(sql.args) + 1)), (sql.text, sql.args)
    relations = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+\.[a-z_]+)", sql.text))
    assert relations <= KNOWN_RELATIONS, relations
    assert ";" not in sql.text and "--" not in sql.text


def all_uploads_queries(scope: Scope) -> list[UploadsQuery]:
    queries = []
    for interval, group_by, producer, ctype in itertools.product(
            ["minute", "hour", "day"], [None, "producer", "content_type", "producer,content_type"],
            [None, "bob"] if scope.everyone else [None], [None, "image/png"]):
        pairs = [("interval", interval), ("to", "2026-11-26T00:00:00Z")]
        pairs += [("group_by", group_by)] if group_by else []
        pairs += [("producer", producer)] if producer else []
        pairs += [("content_type", ctype)] if ctype else []
        queries.append(UploadsQuery.parse(pairs, scope, NOW))
    return queries


@pytest.mark.parametrize("scope", [ANALYST, ALICE])
def test_every_uploads_variant_is_bound_and_scoped(scope: Scope) -> None:
    for q in all_uploads_queries(scope):
        sql = q.sql()
        check_bound(sql)
        assert sql.args[0] == q.range.start and sql.args[1] == q.range.end
        assert sql.args[-1] == q.limit + 1  # one more than a page: tells whether a next page exists
        if not scope.everyone:
            assert "producer = $3" in sql.text and sql.args[2] == "alice"
        # grouped by the bucket expression: a bare "window_start" would mean the minute column
        assert f"GROUP BY {', '.join([BUCKET[q.interval], *q.group_by])}\n" in sql.text
        if q.interval is Interval.MINUTE:
            assert "date_bin" not in sql.text and "bool_and(is_final) AS final" in sql.text
        else:
            assert BUCKET[q.interval] in sql.text and "max(window_end)" in sql.text


def test_range_predicates_stay_on_the_raw_column_so_the_index_serves_them() -> None:
    q = UploadsQuery.parse([("interval", "day")], ANALYST, NOW)
    assert "WHERE window_start >= $1 AND window_start < $2" in q.sql().text


def test_hostile_values_are_never_in_the_sql_text() -> None:
    q = UploadsQuery(range=TimeRange(utc(2026, 1, 1), utc(2026, 1, 2)), interval=Interval.HOUR,
                        group_by=("producer",), producer=HOSTILE, content_type=HOSTILE, limit=10,
                        after=(utc(2026, 1, 1, 3), HOSTILE))
    sql = q.sql()
    check_bound(sql)
    assert HOSTILE not in sql.text and sql.args.count(HOSTILE) == 3
    d = DuplicatesQuery(range=TimeRange(utc(2026, 1, 1), utc(2026, 1, 2)), kind=HOSTILE, producer=HOSTILE,
                           duplicate_of=HOSTILE, limit=5, after=(utc(2026, 1, 1), HOSTILE))
    for sql in (d.sql(), d.count_sql()):
        check_bound(sql)
        assert HOSTILE not in sql.text
    for sql in (SummaryQuery(TimeRange(utc(2026, 1, 1), utc(2026, 1, 2)), HOSTILE, HOSTILE).sql(),
                UsageQuery(HOSTILE, TimeRange(utc(2026, 1, 1), utc(2026, 1, 2))).sql(),
                UsageQuery(HOSTILE, TimeRange(utc(2026, 1, 1), utc(2026, 1, 2))).images_sql(),
                ImageQuery(HOSTILE).sql()):
        check_bound(sql)
        assert HOSTILE not in sql.text and HOSTILE in sql.args


def test_cursor_adds_a_sargable_bound_and_the_exact_position() -> None:
    base = [("from", "2026-11-26T00:00:00Z"), ("to", "2026-11-26T06:00:00Z"), ("group_by", "producer,content_type")]
    q = UploadsQuery.parse(base, ANALYST, NOW)
    cursor = q.cursor_after({"window_start": utc(2026, 11, 26, 2), "producer": "bob", "content_type": "image/gif"})
    sql = UploadsQuery.parse([*base, ("cursor", cursor)], ANALYST, NOW).sql()
    check_bound(sql)
    assert "window_start >= $3" in sql.text
    bucket = BUCKET[Interval.HOUR]
    assert f"({bucket}, producer, content_type) > ($3, $4, $5)" in sql.text
    assert sql.args[2:5] == (utc(2026, 11, 26, 2), "bob", "image/gif")


def test_summary_top_and_usage_sql() -> None:
    s = SummaryQuery.parse([("to", "2026-11-26T00:00:00Z")], ALICE, NOW).sql()
    check_bound(s)
    assert s.args == (utc(2026, 11, 25), utc(2026, 11, 26), "alice", utc(2026, 11, 26))
    assert "coalesce(bool_and(is_final), true)" in s.text and "GROUP BY" not in s.text
    t = TopQuery.parse([("by", "bytes"), ("limit", "5")], ANALYST, NOW).sql()
    check_bound(t)
    assert "GROUP BY producer\nORDER BY bytes DESC, uploads DESC, producer\nLIMIT $4" in t.text and t.args[-1] == 5
    t = TopQuery.parse([("dimension", "content_type")], ALICE, NOW).sql()
    assert "GROUP BY content_type" in t.text and "alice" in t.args
    u = UsageQuery.parse("alice", [("from", "2026-11-01T00:00:00Z")], ALICE, NOW)
    check_bound(u.sql())
    assert u.range.start == utc(2026, 11, 1) and u.range.end == utc(2026, 11, 27)
    assert "GROUP BY content_type" in u.sql().text


def test_duplicates_sql_and_paging() -> None:
    q = DuplicatesQuery.parse([("kind", "exact"), ("limit", "2")], ALICE, NOW)
    sql = q.sql()
    check_bound(sql)
    assert "ORDER BY received_at, image_id" in sql.text and sql.args[-1] == 3
    assert "producer = $3" in sql.text and "duplicate_kind = $4" in sql.text
    row = {"received_at": utc(2026, 11, 26, 1), "image_id": "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"}
    params = q.next_params(q.cursor_after(row))
    nxt = DuplicatesQuery.parse(list(params.items()), ALICE, NOW)
    assert nxt.after == (row["received_at"], row["image_id"])
    assert "(received_at, image_id) > ($5, $6)" in nxt.sql().text
    count = q.count_sql()
    check_bound(count)
    assert "LIMIT" not in count.text


# --- shaping rows into answers -----------------------------------------------------------------


def test_window_entries() -> None:
    q = UploadsQuery.parse([("interval", "hour"), ("group_by", "producer")], ANALYST, NOW)
    row = {"window_start": utc(2026, 11, 26, 3), "producer": "bob", "uploads": 5, "bytes": 500, "accepted": 3,
           "duplicates": 2, "duplicates_exact": 1, "duplicates_near": 1, "rejected": 1, "late_events": 0,
           "final": True}
    assert json.loads(_dumps(q.window(row))) == {
        "window_start": "2026-11-26T03:00:00Z", "window_end": "2026-11-26T04:00:00Z", "producer": "bob",
        "uploads": 5, "bytes": 500, "accepted": 3, "duplicates": 2, "duplicates_exact": 1, "duplicates_near": 1,
        "rejected": 1, "late_events": 0, "final": True}
    day = UploadsQuery.parse([("interval", "day")], ANALYST, NOW)
    naive = {**row, "window_start": datetime(2026, 11, 26)}  # a timestamp column comes back naive: UTC
    entry = json.loads(_dumps(day.window(naive)))
    assert entry["window_end"] == "2026-11-27T00:00:00Z" and "producer" not in entry


def test_the_json_encoder_writes_times_as_format_time_does() -> None:
    for ts in (utc(2026, 11, 26), utc(2026, 11, 26, 23, 59), utc(2001, 1, 1, 0, 0, 1), utc(2026, 1, 1, 0, 0, 0, 456000),
               utc(2026, 1, 1, 0, 0, 0, 7), datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=5)))):
        assert json.loads(_dumps([as_utc(ts)])) == [format_time(ts)]


def test_image_answers() -> None:
    q = ImageQuery("0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1")
    assert q.result(None) == {"image_id": q.image_id, "status": "pending"}
    base = {c: None for c in ImageQuery.COLUMNS} | {"image_id": q.image_id, "producer": "alice",
                                                       "received_at": utc(2026, 11, 26, 1, 2, 3, 456000)}
    accepted = q.result({**base, "status": "accepted"})
    assert accepted["status"] == "accepted" and accepted["received_at"] == "2026-11-26T01:02:03.456000Z"
    assert not {"duplicate_of", "duplicate_kind", "distance", "reject_reason"} & accepted.keys()
    near = q.result({**base, "status": "duplicate", "duplicate_of": "o", "duplicate_kind": "near", "distance": 4})
    assert (near["duplicate_of"], near["duplicate_kind"], near["distance"]) == ("o", "near", 4)
    rejected = q.result({**base, "status": "rejected", "reject_reason": "schema"})
    assert rejected["reject_reason"] == "schema" and "duplicate_of" not in rejected


def test_usage_result_totals_are_the_sum_of_the_breakdown() -> None:
    q = UsageQuery("alice", TimeRange(utc(2026, 11, 1), utc(2026, 11, 2)))
    rows = [{"content_type": "image/png", "final": True, **{m: 2 for m in MEASURES}},
            {"content_type": "image/jpeg", "final": False, **{m: 3 for m in MEASURES}}]
    out = q.result(rows, {"first_upload_at": utc(2026, 11, 1, 1), "last_upload_at": utc(2026, 11, 1, 2)})
    assert out["totals"] == {m: 5 for m in MEASURES} and out["final"] is False
    assert [e["content_type"] for e in out["by_content_type"]] == ["image/png", "image/jpeg"]
    assert out["first_upload_at"] == "2026-11-01T01:00:00Z"
    empty = q.result([], {"first_upload_at": None, "last_upload_at": None})
    assert empty["totals"] == {m: 0 for m in MEASURES} and empty["final"] is None


def test_freshness_entries() -> None:
    now = utc(2026, 11, 26, 12)
    row = {"table_name": "upload_stats", "newest_change_at": now - timedelta(seconds=7.5),
           "newest_applied_at": now - timedelta(seconds=7), "final_until": utc(2026, 11, 26, 11, 50)}
    assert freshness_entry(row, now) == {
        "table": "upload_stats", "newest_change_at": "2026-11-26T11:59:52.500000Z",
        "newest_applied_at": "2026-11-26T11:59:53Z", "lag_seconds": 7.5, "final_until": "2026-11-26T11:50:00Z"}
    empty = {"table_name": "images", "newest_change_at": None, "newest_applied_at": None, "final_until": None}
    assert freshness_entry(empty, now) == {"table": "images", "newest_change_at": None,
                                              "newest_applied_at": None, "lag_seconds": None}
    check_bound(freshness_sql())
