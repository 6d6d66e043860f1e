"""Stats API parameter parsing: every malformed, unknown, repeated or out-of-range input is a 400
naming its field; every valid one parses to exactly one meaning."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.stats.params import (MAX_PARAM_CHARS, Scope, parse_content_type, parse_group_by, parse_image_id, parse_int,
                              parse_producer, query_params)
from api.stats.queries.duplicates import DuplicatesQuery
from api.stats.queries.image import ImageQuery
from api.stats.queries.summary import SummaryQuery
from api.stats.queries.top import TopQuery
from api.stats.queries.uploads import UploadsQuery
from api.stats.queries.usage import UsageQuery
from api.stats.ranges import encode_cursor, parse_range
from api.stats.times import format_time, parse_time
from imgstream.domain.errors import BadRequest, Forbidden
from imgstream.domain.tokens import Principal
from imgstream.domain.windows import Interval

NOW = datetime(2026, 11, 26, 12, 34, 56, 789000, tzinfo=timezone.utc)
ANALYST = Scope(None)
ALICE = Scope("alice")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def bad(field: str, call, *args, **kwargs) -> BadRequest:  # noqa: ANN001
    with pytest.raises(BadRequest) as info:
        call(*args, **kwargs)
    assert info.value.details.get("field") == field, info.value.to_dict()
    assert info.value.code == "bad_request"
    return info.value


# --- times -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2026-11-26T12:00:00Z", utc(2026, 11, 26, 12)),
    ("2026-11-26T12:00Z", utc(2026, 11, 26, 12)),
    ("2026-11-26T12:00:00.5Z", utc(2026, 11, 26, 12, 0, 0, 500000)),
    ("2026-11-26T12:00:00.123456Z", utc(2026, 11, 26, 12, 0, 0, 123456)),
    ("2026-11-26T13:30:00+01:30", utc(2026, 11, 26, 12)),
    ("2026-11-26T07:00:00-05:00", utc(2026, 11, 26, 12)),
    ("2026-11-27T11:59:00+23:59", utc(2026, 11, 26, 12)),
])
def test_times_with_a_zone_parse_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_time("from", text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", [
    "2026-11-26T12:00:00",          # no zone
    "2026-11-26",                   # a date alone
    "2026-11-26 12:00:00Z",         # space instead of T
    "20261126T120000Z",             # basic format
    "2026-W48-4T12:00Z",            # week date
    "2026-11-26T12:00:00+25:00",    # zone out of range
    "2026-11-26T12:00:00+05:60",
    "2026-11-26T12:00:00+0100",     # zone without colon
    "2026-11-26T12:00:00+01",
    "2026-11-26T12:00:00 Europe/Paris",
    "2026-11-26T12:00:00Z[Europe/Paris]",
    "2026-11-26T12:00:00.1234567Z",  # more than microseconds
    "2026-13-01T00:00:00Z",         # no 13th month
    "2026-02-30T00:00:00Z",
    "2026-11-26T24:00:00Z",
    "1999-12-31T23:59:59Z",         # before the supported range
    "2100-01-01T00:00:00Z",         # after it
    "9999-12-31T23:59:59-23:59",    # overflow probe
    "now", "yesterday", "-1d", "1732600000", "", "'; DROP TABLE images; --",
    "2026-11-26T12:00:00Z' OR '1'='1",
    "２０２６-11-26T12:00:00Z",       # full-width digits (\d would accept them)
])
def test_anything_else_is_a_400_naming_the_field(text: str) -> None:
    bad("to", parse_time, "to", text)


def test_a_plus_decoded_as_space_gets_a_hint() -> None:
    error = bad("from", parse_time, "from", "2026-11-26T13:00:00 01:00")
    assert "%2B" in error.message


@given(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
@settings(max_examples=200, deadline=None)  # a loaded 2-core box: no per-example deadline
def test_round_trip_of_any_time(ts: datetime) -> None:
    text = ts.isoformat()
    assert parse_time("from", text) == ts
    assert parse_time("from", format_time(ts)) == ts


# --- the parameter set -------------------------------------------------------------------------


def test_unknown_parameter_is_named() -> None:
    error = bad("colour", query_params, [("from", "x"), ("colour", "red")], {"from", "to"})
    assert "accepted: from, to" in error.message


@pytest.mark.parametrize("pairs, field", [
    ([("to", "a"), ("to", "b")], "to"),                      # repeated
    ([("to", "")], "to"),                                    # empty
    ([("to", "x" * (MAX_PARAM_CHARS + 1))], "to"),        # too long
    ([("to", "2026\x00")], "to"),                            # control character
    ([("to", "a\nb")], "to"),
])
def test_repeated_empty_long_or_control_values(pairs, field) -> None:  # noqa: ANN001
    bad(field, query_params, pairs, {"to"})


def test_unknown_parameter_name_is_shown_escaped_and_bounded() -> None:
    error = bad("x\\x00y", query_params, [("x\x00y", "1")], {"to"})
    assert "\x00" not in error.message
    long = "k" * 500
    error = bad("k" * 64, query_params, [(long, "1")], {"to"})
    assert len(error.message) < 200


@pytest.mark.parametrize("text, expected", [
    ("producer", ("producer",)),
    ("content_type", ("content_type",)),
    ("producer,content_type", ("producer", "content_type")),
    ("content_type,producer", ("producer", "content_type")),
])
def test_group_by(text: str, expected: tuple[str, ...]) -> None:
    assert parse_group_by(text) == expected


@pytest.mark.parametrize("text", ["producer,producer", "status", "producer,", ",producer", "producer content_type",
                                  "PRODUCER", "producer;content_type", "1", "producer) --"])
def test_group_by_rejects_anything_outside_the_closed_set(text: str) -> None:
    bad("group_by", parse_group_by, text)


@pytest.mark.parametrize("text", ["0", "-1", "10001", "1e3", "+5", " 5", "5 ", "0x10", "", "١٢"])
def test_limit(text: str) -> None:
    bad("limit", parse_int, "limit", text, 1, 10_000)


@pytest.mark.parametrize("name", ["alice", "a", "Producer-1.b_c", "x" * 64])
def test_producer_names(name: str) -> None:
    assert parse_producer("producer", name) == name


@pytest.mark.parametrize("name", ["", "-alice", ".x", "x" * 65, "a b", "a/b", "alice'--", "ålice", "a%00", "alice\n"])
def test_bad_producer_names(name: str) -> None:
    bad("producer", parse_producer, "producer", name)


@pytest.mark.parametrize("text", ["image/png", "image/jpeg", "image/svg+xml", "application/octet-stream"])
def test_content_types(text: str) -> None:
    assert parse_content_type(text) == text


@pytest.mark.parametrize("text", ["png", "image/", "/png", "Image/PNG", "image/png; charset=x", "image/png'--",
                                  "image/png\n", "image//png"])
def test_bad_content_types(text: str) -> None:
    bad("content_type", parse_content_type, text)


def test_image_ids_are_canonical_uuids() -> None:
    value = "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"
    assert parse_image_id("image_id", value) == value
    assert parse_image_id("image_id", value.upper()) == value
    for text in ["0b5b2a573b8e4f579d431f7f3e2ad8d1", "{0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1}",
                 "urn:uuid:0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1", "0b5b2a57", "' OR 1=1 --"]:
        bad("image_id", parse_image_id, "image_id", text)


# --- ranges ------------------------------------------------------------------------------------


def test_ranges_are_rounded_outwards_to_whole_windows() -> None:
    params = {"from": "2026-11-26T10:15:30Z", "to": "2026-11-26T12:00:00.001Z"}
    r = parse_range(params, NOW, default_span=timedelta(hours=1), max_span=timedelta(days=1), align=Interval.HOUR)
    assert (r.start, r.end) == (utc(2026, 11, 26, 10), utc(2026, 11, 26, 13))
    r = parse_range(params, NOW, default_span=timedelta(hours=1), max_span=timedelta(days=2), align=Interval.DAY)
    assert (r.start, r.end) == (utc(2026, 11, 26), utc(2026, 11, 27))
    aligned = {"from": "2026-11-26T10:00:00Z", "to": "2026-11-26T11:00:00Z"}
    r = parse_range(aligned, NOW, default_span=timedelta(hours=1), max_span=timedelta(days=1), align=Interval.MINUTE)
    assert (r.start, r.end) == (utc(2026, 11, 26, 10), utc(2026, 11, 26, 11))


def test_days_are_utc_days_whatever_the_offset_of_the_input() -> None:
    params = {"from": "2026-11-26T01:00:00+05:00", "to": "2026-11-26T23:00:00-05:00"}
    r = parse_range(params, NOW, default_span=timedelta(days=1), max_span=timedelta(days=5), align=Interval.DAY)
    assert (r.start, r.end) == (utc(2026, 11, 25), utc(2026, 11, 28))


def test_defaults_end_now_and_span_back() -> None:
    r = parse_range({}, NOW, default_span=timedelta(hours=1), max_span=timedelta(days=1), align=Interval.MINUTE)
    assert (r.start, r.end) == (utc(2026, 11, 26, 11, 35), utc(2026, 11, 26, 12, 35))
    r = parse_range({"to": "2026-01-01T00:00:00Z"}, NOW, default_span=timedelta(days=1),
                       max_span=timedelta(days=7), align=None)
    assert (r.start, r.end) == (utc(2025, 12, 31), utc(2026, 1, 1))


@pytest.mark.parametrize("params", [
    {"from": "2026-11-26T12:00:00Z", "to": "2026-11-26T12:00:00Z"},   # empty
    {"from": "2026-11-26T13:00:00Z", "to": "2026-11-26T12:00:00Z"},   # reversed
    {"from": "2026-11-01T00:00:00Z", "to": "2026-11-26T12:00:00Z"},   # too long for minutes
    {"from": "2000-01-01T00:00:00Z", "to": "2099-12-31T00:00:00Z"},   # huge
])
def test_empty_reversed_or_too_long_ranges(params: dict[str, str]) -> None:
    bad("from", parse_range, params, NOW, default_span=timedelta(hours=1), max_span=timedelta(days=7),
        align=None)


def test_span_caps_per_interval() -> None:
    week = [("from", "2026-11-01T00:00:00Z"), ("to", "2026-11-08T00:00:00Z")]
    assert UploadsQuery.parse([*week, ("interval", "minute")], ANALYST, NOW).range.span == timedelta(days=7)
    bad("from", UploadsQuery.parse, [("from", "2026-11-01T00:00:00Z"), ("to", "2026-11-08T00:01:00Z"),
                                         ("interval", "minute")], ANALYST, NOW)
    assert UploadsQuery.parse([("from", "2026-01-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z")], ANALYST, NOW)
    bad("from", UploadsQuery.parse, [("from", "2026-01-01T00:00:00Z"), ("to", "2026-06-01T00:00:00Z")],
        ANALYST, NOW)
    assert UploadsQuery.parse([("from", "2024-01-01T00:00:00Z"), ("to", "2026-12-31T00:00:00Z"),
                                  ("interval", "day")], ANALYST, NOW)


# --- whole queries -----------------------------------------------------------------------------


def test_uploads_query_defaults() -> None:
    q = UploadsQuery.parse([], ANALYST, NOW)
    assert q.interval is Interval.HOUR and q.group_by == () and q.producer is None and q.limit == 1000
    assert (q.range.start, q.range.end) == (utc(2026, 11, 25, 13), utc(2026, 11, 26, 13))


def test_uploads_query_everything() -> None:
    q = UploadsQuery.parse([("from", "2026-11-26T00:00:00Z"), ("to", "2026-11-26T06:00:00Z"),
                               ("interval", "minute"), ("group_by", "content_type,producer"),
                               ("producer", "bob"), ("content_type", "image/png"), ("limit", "50")], ANALYST, NOW)
    assert (q.interval, q.group_by, q.producer, q.content_type, q.limit) == (
        Interval.MINUTE, ("producer", "content_type"), "bob", "image/png", 50)


@pytest.mark.parametrize("pairs, field", [
    ([("interval", "week")], "interval"),
    ([("interval", "HOUR")], "interval"),
    ([("group_by", "status")], "group_by"),
    ([("limit", "100000")], "limit"),
    ([("producer", "bob'; --")], "producer"),
    ([("from", "2026-11-26T00:00:00")], "from"),
    ([("from", "2026-11-26T00:00:00Z"), ("from", "2026-11-25T00:00:00Z")], "from"),
    ([("order", "desc")], "order"),
    ([("cursor", "garbage")], "cursor"),
])
def test_uploads_query_rejects(pairs, field) -> None:  # noqa: ANN001
    bad(field, UploadsQuery.parse, pairs, ANALYST, NOW)


def test_producer_scope_is_forced_and_others_are_forbidden() -> None:
    assert UploadsQuery.parse([], ALICE, NOW).producer == "alice"
    assert UploadsQuery.parse([("producer", "alice")], ALICE, NOW).producer == "alice"
    with pytest.raises(Forbidden) as info:
        UploadsQuery.parse([("producer", "bob")], ALICE, NOW)
    assert info.value.details["field"] == "producer"
    for parse in (SummaryQuery.parse, DuplicatesQuery.parse):
        assert parse([], ALICE, NOW).producer == "alice"
        with pytest.raises(Forbidden):
            parse([("producer", "bob")], ALICE, NOW)
    with pytest.raises(Forbidden):
        UsageQuery.parse("bob", [], ALICE, NOW)
    assert UsageQuery.parse("alice", [], ALICE, NOW).producer == "alice"
    assert UsageQuery.parse("bob", [], ANALYST, NOW).producer == "bob"


def test_scope_of_a_principal() -> None:
    assert Scope.of(Principal("ana", "analyst", "k", 0)).everyone
    assert Scope.of(Principal("alice", "producer", "k", 0)) == ALICE


def test_top_ranks_producers_only_for_analysts() -> None:
    q = TopQuery.parse([("by", "bytes"), ("limit", "3")], ANALYST, NOW)
    assert (q.by, q.dimension, q.limit) == ("bytes", "producer", 3)
    with pytest.raises(Forbidden) as info:
        TopQuery.parse([], ALICE, NOW)
    assert info.value.details["field"] == "dimension"
    q = TopQuery.parse([("dimension", "content_type")], ALICE, NOW)
    assert q.producer == "alice"
    bad("by", TopQuery.parse, [("by", "uploads DESC")], ANALYST, NOW)
    bad("limit", TopQuery.parse, [("limit", "101")], ANALYST, NOW)


def test_duplicates_query() -> None:
    q = DuplicatesQuery.parse([("kind", "near"), ("duplicate_of", "0B5B2A57-3B8E-4F57-9D43-1F7F3E2AD8D1")],
                                 ANALYST, NOW)
    assert q.kind == "near" and q.duplicate_of == "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"
    assert (q.range.start, q.range.end) == (NOW - timedelta(days=1), NOW)  # listings are not rounded
    bad("kind", DuplicatesQuery.parse, [("kind", "fuzzy")], ANALYST, NOW)
    bad("limit", DuplicatesQuery.parse, [("limit", "1001")], ANALYST, NOW)


def test_image_and_freshness_take_no_parameters() -> None:
    assert ImageQuery.parse("0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1", []).image_id
    bad("verbose", ImageQuery.parse, "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1", [("verbose", "1")])
    bad("image_id", ImageQuery.parse, "42", [])


# --- cursors -----------------------------------------------------------------------------------


def test_cursor_round_trip_and_binding_to_its_query() -> None:
    base = [("from", "2026-11-26T00:00:00Z"), ("to", "2026-11-26T06:00:00Z"), ("group_by", "producer")]
    q = UploadsQuery.parse(base, ANALYST, NOW)
    cursor = q.cursor_after({"window_start": utc(2026, 11, 26, 2), "producer": "bob"})
    assert len(cursor) < MAX_PARAM_CHARS
    again = UploadsQuery.parse([*base, ("cursor", cursor)], ANALYST, NOW)
    assert again.after == (utc(2026, 11, 26, 2), "bob")
    # the same cursor with other parameters is refused, not misapplied
    bad("cursor", UploadsQuery.parse, [*base[:2], ("cursor", cursor)], ANALYST, NOW)
    bad("cursor", UploadsQuery.parse, [*base, ("producer", "bob"), ("cursor", cursor)], ANALYST, NOW)
    # next_params reproduce the query exactly
    params = q.next_params(cursor)
    assert UploadsQuery.parse(list(params.items()), ANALYST, NOW).after == again.after


@pytest.mark.parametrize("cursor", [
    "x", "!!!!", "eyJh",                                    # not base64 JSON
    "WzEsImFiYyIsW11d",                                     # [1,"abc",[]]: wrong fingerprint
    "bnVsbA",                                               # null
])
def test_forged_cursors(cursor: str) -> None:
    bad("cursor", DuplicatesQuery.parse, [("cursor", cursor)], ANALYST, NOW)


def test_forged_cursor_with_the_right_fingerprint_but_hostile_key() -> None:
    q = DuplicatesQuery.parse([("to", "2026-11-26T00:00:00Z")], ANALYST, NOW)
    forged = encode_cursor(q.fingerprint(), ["2026-11-25T12:00:00Z", "x' OR '1'='1"])
    bad("cursor", DuplicatesQuery.parse, [("to", "2026-11-26T00:00:00Z"), ("cursor", forged)], ANALYST, NOW)
    forged = encode_cursor(q.fingerprint(), ["not a time", "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"])
    bad("cursor", DuplicatesQuery.parse, [("to", "2026-11-26T00:00:00Z"), ("cursor", forged)], ANALYST, NOW)
    forged = encode_cursor(q.fingerprint(), [123, "0b5b2a57-3b8e-4f57-9d43-1f7f3e2ad8d1"])
    bad("cursor", DuplicatesQuery.parse, [("to", "2026-11-26T00:00:00Z"), ("cursor", forged)], ANALYST, NOW)


def test_series_cursor_must_be_a_window_of_the_range() -> None:
    base = [("from", "2026-11-26T00:00:00Z"), ("to", "2026-11-26T06:00:00Z")]
    q = UploadsQuery.parse(base, ANALYST, NOW)
    for when in (utc(2026, 11, 26, 2, 30), utc(2026, 11, 27)):
        forged = encode_cursor(q.fingerprint(), [when])
        bad("cursor", UploadsQuery.parse, [*base, ("cursor", forged)], ANALYST, NOW)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_no_input_crashes_the_parsers(text: str) -> None:
    """Whatever a client sends, the answer is a parsed query or a 400/403: never another exception."""
    for name in ("from", "to", "interval", "group_by", "producer", "content_type", "limit", "cursor", text[:20]):
        try:
            UploadsQuery.parse([(name, text)], ALICE, NOW)
        except (BadRequest, Forbidden):
            pass
        try:
            DuplicatesQuery.parse([(name, text)], ANALYST, NOW)
        except (BadRequest, Forbidden):
            pass
    try:
        ImageQuery.parse(text, [])
    except BadRequest:
        pass
    try:
        UsageQuery.parse(text, [], ANALYST, NOW)
    except BadRequest:
        pass
