"""The stats API's queries: strict parameter parsing and SQL over the documented analytics views.

Pure (no framework, no database): a handler hands the query string to a ``*Query.parse`` and the
caller's :class:`Scope`, gets back a frozen query object or a :class:`~imgstream.domain.errors.BadRequest`
naming the offending field, and asks the object for its :class:`Sql`.

Rules every query follows:

* **Strict input.** Every parameter is known, given at most once, bounded in length and parsed
  whole (times are ISO-8601 *with* a zone; choices come from closed sets); anything else is a
  ``400`` whose ``field`` names the parameter. Nothing is guessed or silently dropped.
* **Bound, never formatted.** Values reach PostgreSQL only as ``$n`` parameters. The only
  identifiers in the SQL text are view and column names from the constants below, picked by
  closed-set choices (``group_by``, ``by``, ``interval``), never copied from a request.
* **One source of truth.** Every number comes from an ``analytics`` view: upload numbers from the
  minute view ``analytics.upload_stats`` (hour/day windows are its sums with the roll-up views'
  own finality rule, see :class:`UploadsQuery`), images, duplicates and freshness from theirs, so
  an analyst running the query shown in ``docs/stats-api.md`` gets the same number as the API
  (``tests/integration/test_stats_api.py`` compares them).
* **Scoped.** A producer token's queries always carry ``producer = <its name>``; asking for
  another producer is a ``403``, not an empty answer.

Time ranges are half-open ``[from, to)``. Series, summaries, usage and top-N work on whole
windows, so ``from`` is rounded down and ``to`` up to the window boundary (UTC; days are UTC
days), and the answer echoes the range actually used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Collection, Final, Iterable, Mapping, Sequence

from imgstream.domain.errors import BadRequest, Forbidden
from imgstream.domain.imaging import SUPPORTED
from imgstream.domain.tokens import NAME_PATTERN, Principal
from imgstream.domain.windows import Interval, from_millis, to_millis

# --- limits ------------------------------------------------------------------------------------

#: Longest accepted parameter value. The longest legitimate value is a cursor (~200 characters);
#: a time is ~32. Anything longer is a mistake or an attack and is refused before parsing.
MAX_PARAM_CHARS: Final = 512

#: Longest range per series interval, so one response stays a few thousand windows per group:
#: 7 days of minutes = 10,080 windows, 93 days of hours = 2,232, 3 years of days = 1,096. Longer
#: series at a fine grain are what the coarser intervals are for.
MAX_SERIES_SPAN: Final[Mapping[Interval, timedelta]] = {
    Interval.MINUTE: timedelta(days=7),
    Interval.HOUR: timedelta(days=93),
    Interval.DAY: timedelta(days=1096),
}
#: Range a series covers when ``from`` is not given (ending at ``to``, default now).
DEFAULT_SERIES_SPAN: Final[Mapping[Interval, timedelta]] = {
    Interval.MINUTE: timedelta(hours=1),
    Interval.HOUR: timedelta(days=1),
    Interval.DAY: timedelta(days=30),
}
#: Longest range of a summary, usage report or top-N: a year answers "this year so far"; these
#: read the coarsest roll-up that fits (days in the middle, hours and minutes at the edges), so a
#: year costs ~365 day rows per group rather than half a million minute rows.
MAX_TOTALS_SPAN: Final = timedelta(days=366)
DEFAULT_TOTALS_SPAN: Final = timedelta(days=1)
DEFAULT_USAGE_SPAN: Final = timedelta(days=30)
#: Longest range of a duplicates listing: the listing is paged, but its ``total`` counts the
#: whole range, which must stay an index range scan of bounded size.
MAX_LIST_SPAN: Final = timedelta(days=366)
DEFAULT_LIST_SPAN: Final = timedelta(days=1)

#: Page sizes. A series page of 1,000 windows is ~150 KB of JSON; 10,000 (one week of minutes)
#: is the most one response carries. Duplicates are wider rows, top-N is a short ranking.
SERIES_LIMIT: Final = (1000, 10_000)  # (default, max)
LIST_LIMIT: Final = (100, 1000)
TOP_LIMIT: Final = (10, 100)

#: Times outside this range are typing errors (or overflow probes), not data: the platform has no
#: data before 2000, and 2100 keeps every ``to + span`` computation far from datetime's limits.
MIN_TIME: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TIME: Final = datetime(2100, 1, 1, tzinfo=timezone.utc)

# --- vocabulary --------------------------------------------------------------------------------

#: ``group_by`` dimensions: request name -> column of the upload_stats views (the same here).
DIMENSIONS: Final = ("producer", "content_type")
DUPLICATE_KINDS: Final = ("exact", "near")
TOP_MEASURES: Final = ("uploads", "bytes")
CONTENT_TYPES: Final = frozenset(SUPPORTED)
#: The measures of a window, in answer order: what an upload_stats row carries.
MEASURES: Final = ("uploads", "bytes", "accepted", "duplicates", "duplicates_exact", "duplicates_near", "rejected",
                   "late_events")

# The documented views (connectors/postgres/20-analytics.sql): the only identifiers that ever
# appear in SQL text, with the bucket expressions and steps below.
V_STATS: Final = "analytics.upload_stats"
V_IMAGES: Final = "analytics.images"
V_DUPLICATES: Final = "analytics.duplicates"
V_FRESHNESS: Final = "analytics.freshness"
#: The roll-up views a series of each interval equals (what an analyst queries; the tests compare).
ROLLUP_VIEWS: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "analytics.upload_stats",
    Interval.HOUR: "analytics.upload_stats_hourly",
    Interval.DAY: "analytics.upload_stats_daily",
}
#: Window start of a minute row's hour/day. ``date_bin`` is immutable and aligned to UTC midnight,
#: i.e. the same buckets as the roll-up views' ``date_trunc(..., 'UTC')``.
_ORIGIN: Final = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
BUCKET: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "window_start",
    Interval.HOUR: f"date_bin(INTERVAL '1 hour', window_start, {_ORIGIN})",
    Interval.DAY: f"date_bin(INTERVAL '1 day', window_start, {_ORIGIN})",
}
_STEPS: Final[Mapping[Interval, timedelta]] = {i: timedelta(milliseconds=i.millis) for i in Interval}
STEP: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "INTERVAL '1 minute'", Interval.HOUR: "INTERVAL '1 hour'", Interval.DAY: "INTERVAL '1 day'",
}

#: Content types: the sniffed MIME types (image/jpeg...), plus whatever a dead letter carried;
#: a strict ``type/subtype`` shape, nothing else.
_CONTENT_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$")
_ISO_TIME: Final = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


# --- who asks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Whose data a request may read: one producer, or everyone's (``producer is None``)."""

    producer: str | None

    @classmethod
    def of(cls, principal: Principal) -> "Scope":
        return cls(None if principal.is_analyst else principal.name)

    @property
    def everyone(self) -> bool:
        return self.producer is None

    def producer_filter(self, requested: str | None) -> str | None:
        """The producer a query must be restricted to: the token's own for producers (asking for
        another is :class:`Forbidden`), the requested one (or none) for analysts."""
        if self.producer is None:
            return requested
        if requested is not None and requested != self.producer:
            raise Forbidden(f"a producer token reads only its own producer's data ({self.producer}), "
                            f"not {requested}'s", field="producer")
        return self.producer


# --- parameter parsing -------------------------------------------------------------------------


def query_params(pairs: Iterable[tuple[str, str]], allowed: Collection[str]) -> dict[str, str]:
    """The request's parameters as ``{name: value}``: ``400`` for an unknown name, a repeated
    name, an empty or over-long value, or control characters."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            shown = name
            if len(name) > 64 or _CONTROL.search(name):  # never echo a hostile name verbatim
                shown = name[:64].encode("unicode_escape").decode()
            accepted = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown parameter {shown!r}; accepted: {accepted}", field=shown)
        if name in params:
            raise BadRequest(f"parameter {name!r} given more than once", field=name)
        if not value:
            raise BadRequest(f"parameter {name!r} is empty; leave it out for the default", field=name)
        if len(value) > MAX_PARAM_CHARS:
            raise BadRequest(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters", field=name)
        if _CONTROL.search(value):
            raise BadRequest(f"parameter {name!r} contains control characters", field=name)
        params[name] = value
    return params


def parse_time(field: str, text: str) -> datetime:
    """An ISO-8601 timestamp with a zone (``Z`` or ``±HH:MM``), as an aware UTC datetime.

    ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` followed by the zone; dates alone, week dates, basic format
    and named zones are refused, as are times outside [2000, 2100)."""
    if " " in text and re.search(r" [0-9]{2}:[0-9]{2}$", text):
        raise BadRequest(f"{field}: {text!r} has a space where the zone's '+' should be: in a query string "
                         "'+' means space, send it as %2B (or use Z)", field=field)
    match = _ISO_TIME.fullmatch(text)
    if not match:
        raise BadRequest(f"{field}: {text!r} is not an ISO-8601 time with a zone, "
                         "e.g. 2026-11-26T12:00:00Z or 2026-11-26T13:00:00%2B01:00", field=field)
    zone = match.group(8)
    if not MIN_TIME.year - 1 <= int(match.group(1)) <= MAX_TIME.year:  # before any offset arithmetic
        raise BadRequest(f"{field}: {text!r} is outside the supported range "
                         f"[{format_time(MIN_TIME)}, {format_time(MAX_TIME)})", field=field)
    if zone != "Z" and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
        raise BadRequest(f"{field}: zone offset {zone} is out of range (-23:59..+23:59)", field=field)
    try:
        ts = datetime.fromisoformat(text[:-1] + "+00:00" if zone == "Z" else text)
    except ValueError as exc:
        raise BadRequest(f"{field}: {text!r} is not a valid time ({exc})", field=field) from None
    ts = ts.astimezone(timezone.utc)
    if not MIN_TIME <= ts < MAX_TIME:
        raise BadRequest(f"{field}: {text!r} is outside the supported range "
                         f"[{format_time(MIN_TIME)}, {format_time(MAX_TIME)})", field=field)
    return ts


def parse_choice(field: str, text: str, choices: Sequence[str]) -> str:
    if text not in choices:
        raise BadRequest(f"{field}: {text!r} is not one of {', '.join(choices)}", field=field)
    return text


def parse_int(field: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text, re.ASCII):
        raise BadRequest(f"{field}: {text!r} is not a whole number", field=field)
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{field}: {value} is outside {low}..{high}", field=field)
    return value


def parse_group_by(text: str) -> tuple[str, ...]:
    """A comma-separated subset of :data:`DIMENSIONS`, in canonical order."""
    names = text.split(",")
    for name in names:
        if name not in DIMENSIONS:
            raise BadRequest(f"group_by: {name!r} is not a dimension; use any of {', '.join(DIMENSIONS)} "
                             "separated by commas", field="group_by")
    if len(set(names)) != len(names):
        raise BadRequest("group_by: a dimension is listed twice", field="group_by")
    return tuple(d for d in DIMENSIONS if d in names)


def parse_producer(field: str, text: str) -> str:
    if not NAME_PATTERN.fullmatch(text):  # fullmatch: '$' would let a trailing newline in
        raise BadRequest(f"{field}: {text!r} is not a producer name (1-64 letters, digits, '.', '_', '-')",
                         field=field)
    return text


def parse_content_type(text: str) -> str:
    """A MIME type as the pipeline stores it (lowercase ``type/subtype``, e.g. ``image/png``)."""
    if not _CONTENT_TYPE.fullmatch(text):
        raise BadRequest(f"content_type: {text[:64]!r} is not a MIME type such as "
                         f"{', '.join(sorted(CONTENT_TYPES))}", field="content_type")
    return text


def parse_image_id(field: str, text: str) -> str:
    """A UUID in its canonical lowercase form (the form image ids are stored in)."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise BadRequest(f"{field}: {text[:64]!r} is not a UUID", field=field) from None
    if str(value) != text.lower() or len(text) != 36:
        raise BadRequest(f"{field}: write the UUID as 8-4-4-4-12 hex digits", field=field)
    return str(value)


def format_time(ts: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, fractional seconds (6 digits) only when there are any: the
    format of every time in every answer. It is exactly what the app's JSON encoder (orjson,
    ``OPT_UTC_Z``) writes for the aware datetimes that answers carry (a unit test holds the two
    equal), so large answers leave formatting to the encoder."""
    if ts.tzinfo is not timezone.utc:
        ts = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return ts.isoformat(timespec="microseconds" if ts.microsecond else "seconds")[:-6] + "Z"


# --- ranges ------------------------------------------------------------------------------------


def floor_to(ts: datetime, interval: Interval) -> datetime:
    """Start of the UTC window of ``interval`` holding ``ts``."""
    ms = to_millis(ts)
    return from_millis(ms - ms % interval.millis)


def ceil_to(ts: datetime, interval: Interval) -> datetime:
    """``ts`` if it is a window boundary, else the end of the window holding it."""
    floor = floor_to(ts, interval)
    return floor if floor == ts else floor + timedelta(milliseconds=interval.millis)


@dataclass(frozen=True)
class TimeRange:
    """A half-open range ``[start, end)`` of UTC times."""

    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def to_json(self) -> dict[str, str]:
        return {"from": format_time(self.start), "to": format_time(self.end)}


def parse_range(params: Mapping[str, str], now: datetime, *, default_span: timedelta, max_span: timedelta,
                align: Interval | None) -> TimeRange:
    """``from``/``to`` (``to`` defaults to ``now``, ``from`` to ``to - default_span``), rounded
    outwards to ``align`` windows; ``400`` unless ``from < to`` and the span is within ``max_span``."""
    end = parse_time("to", params["to"]) if "to" in params else now
    if align is not None:
        end = ceil_to(end, align)
    # The default span counts back from the rounded end, so it is exactly default_span long.
    start = parse_time("from", params["from"]) if "from" in params else end - default_span
    if align is not None:
        start = floor_to(start, align)
    if start >= end:
        raise BadRequest(f"from ({format_time(start)}) must be before to ({format_time(end)})", field="from")
    if end - start > max_span:
        raise BadRequest(f"the range {format_time(start)} .. {format_time(end)} is longer than the "
                         f"{_days(max_span)} allowed here; narrow it (or use a coarser interval)", field="from")
    return TimeRange(start, end)


def _days(span: timedelta) -> str:
    return f"{span.days} days" if span.days else f"{span.total_seconds() / 3600:g} hours"


# --- cursors -----------------------------------------------------------------------------------


def fingerprint(*parts: Any) -> str:
    """A short digest of a query's effective parameters: a cursor is only valid for its query."""
    return hashlib.sha256(json.dumps(parts, default=str, separators=(",", ":")).encode()).hexdigest()[:16]


def encode_cursor(query_fingerprint: str, key: Sequence[Any]) -> str:
    """An opaque cursor: the query's fingerprint and the sort key of the last row returned."""
    body = json.dumps([1, query_fingerprint, [format_time(v) if isinstance(v, datetime) else v for v in key]],
                      separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, query_fingerprint: str, kinds: Sequence[str]) -> tuple[Any, ...]:
    """The sort key inside ``text``, typed by ``kinds`` (``"time"`` or ``"text"``); ``400`` for
    anything that is not a cursor this very query issued."""
    try:
        body = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this API issued; pass back 'next_cursor' unchanged",
                         field="cursor") from None
    if not (isinstance(body, list) and len(body) == 3 and body[0] == 1 and isinstance(body[2], list)):
        raise BadRequest("cursor: not a cursor this API issued", field="cursor")
    if body[1] != query_fingerprint:
        raise BadRequest("cursor: it belongs to a different query (parameters changed); follow 'next' "
                         "as given, it repeats the effective parameters", field="cursor")
    values = body[2]
    if len(values) != len(kinds):
        raise BadRequest("cursor: not a cursor this API issued", field="cursor")
    key: list[Any] = []
    for kind, value in zip(kinds, values):
        if not isinstance(value, str) or len(value) > 255:
            raise BadRequest("cursor: not a cursor this API issued", field="cursor")
        key.append(parse_time("cursor", value) if kind == "time" else value)
    return tuple(key)


# --- SQL ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sql:
    """A statement and its bound arguments; ``name`` labels it in metrics and logs."""

    name: str
    text: str
    args: tuple[Any, ...]


class _Args:
    """Collects bound arguments and hands out their ``$n`` placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _filters(a: _Args, producer: str | None, content_type: str | None) -> list[str]:
    where = []
    if producer is not None:
        where.append(f"producer = {a(producer)}")
    if content_type is not None:
        where.append(f"content_type = {a(content_type)}")
    return where


def _sums(indent: str = "       ") -> str:
    return f",\n{indent}".join(f"coalesce(sum({m}), 0)::bigint AS {m}" for m in MEASURES)


#: The end of the newest final minute window: every window ending at or before it is final. The
#: hour/day roll-up views call an hour/day final when all its minute rows are and this has passed
#: its end; the API applies the same rule (and uses it to tell closed ranges from open ones).
FINAL_UNTIL: Final = f"(SELECT max(window_end) FROM {V_STATS} WHERE is_final)"


# --- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadsQuery:
    """``GET /v1/stats/uploads``: a series of windows, optionally grouped by producer and/or
    content type.

    Minute windows are the rows of ``analytics.upload_stats``; hour and day windows are their
    sums, exactly as ``analytics.upload_stats_hourly``/``_daily`` compute them, but bucketed with
    ``date_bin`` over the minute view so the time range stays an index range scan (a filter on the
    roll-up views' truncated ``window_start`` cannot use an index)."""

    range: TimeRange
    interval: Interval
    group_by: tuple[str, ...]
    producer: str | None
    content_type: str | None
    limit: int
    after: tuple[Any, ...] | None = None

    PARAMS: ClassVar[frozenset[str]] = frozenset(
        {"from", "to", "interval", "group_by", "producer", "content_type", "limit", "cursor"})

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]], scope: Scope, now: datetime) -> "UploadsQuery":
        params = query_params(pairs, cls.PARAMS)
        interval = Interval(parse_choice("interval", params.get("interval", "hour"), [i.value for i in Interval]))
        time_range = parse_range(params, now, default_span=DEFAULT_SERIES_SPAN[interval],
                                 max_span=MAX_SERIES_SPAN[interval], align=interval)
        group_by = parse_group_by(params["group_by"]) if "group_by" in params else ()
        producer = parse_producer("producer", params["producer"]) if "producer" in params else None
        query = cls(
            range=time_range, interval=interval, group_by=group_by,
            producer=scope.producer_filter(producer),
            content_type=parse_content_type(params["content_type"]) if "content_type" in params else None,
            limit=parse_int("limit", params["limit"], 1, SERIES_LIMIT[1]) if "limit" in params else SERIES_LIMIT[0],
        )
        if "cursor" in params:
            kinds = ["time", *("text" for _ in group_by)]
            after = decode_cursor(params["cursor"], query.fingerprint(), kinds)
            if floor_to(after[0], interval) != after[0] or not query.range.start <= after[0] < query.range.end:
                raise BadRequest("cursor: not a cursor this API issued", field="cursor")
            query = replace(query, after=after)
        return query

    def fingerprint(self) -> str:
        return fingerprint("uploads", self.range.to_json(), self.interval.value, self.group_by, self.producer,
                           self.content_type)

    def sql(self) -> Sql:
        a = _Args()
        bucket = BUCKET[self.interval]
        where = [f"window_start >= {a(self.range.start)}", f"window_start < {a(self.range.end)}",
                 *_filters(a, self.producer, self.content_type)]
        if self.after is not None:
            # Keyset paging: the sargable bound first, then the exact position within the bucket.
            at = a(self.after[0])
            where.append(f"window_start >= {at}")
            where.append(f"({', '.join([bucket, *self.group_by])}) > ({', '.join([at, *map(a, self.after[1:])])})")
        # The bucket expression itself, not its alias: in GROUP BY a bare name means the input
        # column (the minute's window_start), which would not roll anything up.
        keys = ", ".join([bucket, *self.group_by])
        if self.interval is Interval.MINUTE:
            final = "bool_and(is_final) AS final"
        else:
            final = (f"bool_and(is_final) AND coalesce({FINAL_UNTIL}, '-infinity')\n"
                     f"           >= {bucket} + {STEP[self.interval]} AS final")
        text = (f"SELECT {bucket} AS window_start{''.join(', ' + d for d in self.group_by)},\n"
                f"       {_sums()},\n       {final}\n"
                f"FROM {V_STATS}\nWHERE {' AND '.join(where)}\n"
                f"GROUP BY {keys}\nORDER BY {keys}\nLIMIT {a(self.limit + 1)}")
        return Sql(f"uploads_{self.interval.value}", text, tuple(a.values))

    def window(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One series entry from one result row. Window bounds stay aware UTC datetimes (whole
        minutes): the app's JSON encoder writes them as ``2026-11-26T12:00:00Z``, the same text as
        :func:`format_time`, at a fraction of the cost for a page of thousands of windows."""
        start = _aware(row["window_start"])
        entry: dict[str, Any] = {"window_start": start, "window_end": start + _STEPS[self.interval]}
        for dim in self.group_by:
            entry[dim] = row[dim]
        for measure in MEASURES:
            entry[measure] = int(row[measure] or 0)
        entry["final"] = bool(row["final"])
        return entry

    def cursor_after(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(self.fingerprint(), [_aware(row["window_start"]), *(row[d] for d in self.group_by)])

    def next_params(self, cursor: str) -> dict[str, str]:
        params = {**self.range.to_json(), "interval": self.interval.value, "limit": str(self.limit)}
        if self.group_by:
            params["group_by"] = ",".join(self.group_by)
        if self.producer is not None:
            params["producer"] = self.producer
        if self.content_type is not None:
            params["content_type"] = self.content_type
        params["cursor"] = cursor
        return params


def _totals_sql(name: str, time_range: TimeRange, producer: str | None, content_type: str | None,
                dimension: str | None = None, order: str | None = None, limit: int | None = None) -> Sql:
    """Sums of the minute rows of ``[from, to)``, overall or per ``dimension``."""
    a = _Args()
    where = [f"window_start >= {a(time_range.start)}", f"window_start < {a(time_range.end)}",
             *_filters(a, producer, content_type)]
    end = a(time_range.end)
    select = f"{dimension},\n       " if dimension else ""
    text = (f"SELECT {select}{_sums()},\n"
            f"       coalesce(bool_and(is_final), true)\n"
            f"           AND coalesce({FINAL_UNTIL}, '-infinity') >= {end} AS final,\n"
            f"       count(DISTINCT producer)::int AS producers\n"
            f"FROM {V_STATS}\nWHERE {' AND '.join(where)}")
    if dimension:
        text += f"\nGROUP BY {dimension}\nORDER BY {order or dimension}"
    if limit is not None:
        text += f"\nLIMIT {a(limit)}"
    return Sql(name, text, tuple(a.values))


@dataclass(frozen=True)
class SummaryQuery:
    """``GET /v1/stats/summary``: totals over whole minutes ``[from, to)``."""

    range: TimeRange
    producer: str | None
    content_type: str | None

    PARAMS: ClassVar[frozenset[str]] = frozenset({"from", "to", "producer", "content_type"})

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]], scope: Scope, now: datetime) -> "SummaryQuery":
        params = query_params(pairs, cls.PARAMS)
        producer = parse_producer("producer", params["producer"]) if "producer" in params else None
        return cls(
            range=parse_range(params, now, default_span=DEFAULT_TOTALS_SPAN, max_span=MAX_TOTALS_SPAN,
                              align=Interval.MINUTE),
            producer=scope.producer_filter(producer),
            content_type=parse_content_type(params["content_type"]) if "content_type" in params else None,
        )

    def sql(self) -> Sql:
        return _totals_sql("summary", self.range, self.producer, self.content_type)

    def result(self, row: Mapping[str, Any]) -> dict[str, Any]:
        totals = {m: int(row[m]) for m in MEASURES}
        return {**totals, "producers": int(row["producers"]), "final": bool(row["final"])}


@dataclass(frozen=True)
class UsageQuery:
    """``GET /v1/usage/{producer}``: one producer's totals over whole UTC days, by content type."""

    producer: str
    range: TimeRange

    PARAMS: ClassVar[frozenset[str]] = frozenset({"from", "to"})

    @classmethod
    def parse(cls, producer: str, pairs: Iterable[tuple[str, str]], scope: Scope, now: datetime) -> "UsageQuery":
        name = parse_producer("producer", producer)
        params = query_params(pairs, cls.PARAMS)
        time_range = parse_range(params, now, default_span=DEFAULT_USAGE_SPAN, max_span=MAX_TOTALS_SPAN,
                                 align=Interval.DAY)
        scoped = scope.producer_filter(name)
        assert scoped is not None
        return cls(producer=scoped, range=time_range)

    def sql(self) -> Sql:
        return _totals_sql("usage", self.range, self.producer, None, dimension="content_type")

    def images_sql(self) -> Sql:
        """First and last upload of the producer in the range (from the images view)."""
        a = _Args()
        text = (f"SELECT min(received_at) AS first_upload_at, max(received_at) AS last_upload_at\n"
                f"FROM {V_IMAGES}\nWHERE producer = {a(self.producer)} AND received_at >= {a(self.range.start)} "
                f"AND received_at < {a(self.range.end)}")
        return Sql("usage_images", text, tuple(a.values))

    def result(self, rows: Sequence[Mapping[str, Any]], images: Mapping[str, Any] | None) -> dict[str, Any]:
        totals = {m: sum(int(r[m] or 0) for r in rows) for m in MEASURES}
        by_type = [{"content_type": r["content_type"], **{m: int(r[m] or 0) for m in MEASURES}} for r in rows]
        first = images["first_upload_at"] if images else None
        last = images["last_upload_at"] if images else None
        # With no rows at all, finality is the watermark's alone: the same rule as the summary.
        return {"producer": self.producer, "totals": totals, "by_content_type": by_type,
                "final": all(bool(r["final"]) for r in rows) if rows else None,
                "first_upload_at": format_time(first) if first else None,
                "last_upload_at": format_time(last) if last else None}


@dataclass(frozen=True)
class TopQuery:
    """``GET /v1/stats/top``: producers (or content types) ranked by uploads or bytes."""

    range: TimeRange
    by: str
    dimension: str
    producer: str | None
    content_type: str | None
    limit: int

    PARAMS: ClassVar[frozenset[str]] = frozenset({"from", "to", "by", "dimension", "producer", "content_type", "limit"})

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]], scope: Scope, now: datetime) -> "TopQuery":
        params = query_params(pairs, cls.PARAMS)
        dimension = parse_choice("dimension", params.get("dimension", "producer"), DIMENSIONS)
        if dimension == "producer" and not scope.everyone:
            raise Forbidden("ranking producers needs an analyst token (it names other producers); a producer "
                            "token may rank its own content types with dimension=content_type", field="dimension")
        producer = parse_producer("producer", params["producer"]) if "producer" in params else None
        return cls(
            range=parse_range(params, now, default_span=DEFAULT_TOTALS_SPAN, max_span=MAX_TOTALS_SPAN,
                              align=Interval.MINUTE),
            by=parse_choice("by", params.get("by", "uploads"), TOP_MEASURES),
            dimension=dimension,
            producer=scope.producer_filter(producer),
            content_type=parse_content_type(params["content_type"]) if "content_type" in params else None,
            limit=parse_int("limit", params["limit"], 1, TOP_LIMIT[1]) if "limit" in params else TOP_LIMIT[0],
        )

    def sql(self) -> Sql:
        other = "bytes" if self.by == "uploads" else "uploads"
        # Ties are broken by the other measure, then by name: a stable ranking.
        order = f"{self.by} DESC, {other} DESC, {self.dimension}"
        return _totals_sql(f"top_{self.dimension}", self.range, self.producer, self.content_type,
                           dimension=self.dimension, order=order, limit=self.limit)

    def result(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{"rank": i, self.dimension: r[self.dimension], **{m: int(r[m] or 0) for m in MEASURES}}
                for i, r in enumerate(rows, 1)]


@dataclass(frozen=True)
class DuplicatesQuery:
    """``GET /v1/duplicates``: duplicates received in ``[from, to)``, oldest first, paged."""

    range: TimeRange
    kind: str | None
    producer: str | None
    duplicate_of: str | None
    limit: int
    after: tuple[Any, ...] | None = None

    PARAMS: ClassVar[frozenset[str]] = frozenset({"from", "to", "kind", "producer", "duplicate_of", "limit", "cursor"})
    COLUMNS: ClassVar[tuple[str, ...]] = ("image_id", "duplicate_of", "duplicate_kind", "distance", "producer",
                                          "sha256", "received_at", "processed_at")

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]], scope: Scope, now: datetime) -> "DuplicatesQuery":
        params = query_params(pairs, cls.PARAMS)
        producer = parse_producer("producer", params["producer"]) if "producer" in params else None
        query = cls(
            range=parse_range(params, now, default_span=DEFAULT_LIST_SPAN, max_span=MAX_LIST_SPAN, align=None),
            kind=parse_choice("kind", params["kind"], DUPLICATE_KINDS) if "kind" in params else None,
            producer=scope.producer_filter(producer),
            duplicate_of=parse_image_id("duplicate_of", params["duplicate_of"]) if "duplicate_of" in params else None,
            limit=parse_int("limit", params["limit"], 1, LIST_LIMIT[1]) if "limit" in params else LIST_LIMIT[0],
        )
        if "cursor" in params:
            after = decode_cursor(params["cursor"], query.fingerprint(), ["time", "text"])
            query = replace(query, after=(after[0], parse_image_id("cursor", after[1])))
        return query

    def fingerprint(self) -> str:
        return fingerprint("duplicates", self.range.to_json(), self.kind, self.producer, self.duplicate_of)

    def _where(self, a: _Args) -> list[str]:
        where = [f"received_at >= {a(self.range.start)}", f"received_at < {a(self.range.end)}"]
        if self.producer is not None:
            where.append(f"producer = {a(self.producer)}")
        if self.kind is not None:
            where.append(f"duplicate_kind = {a(self.kind)}")
        if self.duplicate_of is not None:
            where.append(f"duplicate_of = {a(self.duplicate_of)}")
        return where

    def sql(self) -> Sql:
        a = _Args()
        where = self._where(a)
        if self.after is not None:
            where.append(f"(received_at, image_id) > ({a(self.after[0])}, {a(self.after[1])})")
        text = (f"SELECT {', '.join(self.COLUMNS)}\nFROM {V_DUPLICATES}\nWHERE {' AND '.join(where)}\n"
                f"ORDER BY received_at, image_id\nLIMIT {a(self.limit + 1)}")
        return Sql("duplicates", text, tuple(a.values))

    def count_sql(self) -> Sql:
        a = _Args()
        text = (f"SELECT count(*) AS total,\n"
                f"       count(*) FILTER (WHERE duplicate_kind = 'exact') AS exact,\n"
                f"       count(*) FILTER (WHERE duplicate_kind = 'near') AS near\n"
                f"FROM {V_DUPLICATES}\nWHERE {' AND '.join(self._where(a))}")
        return Sql("duplicates_count", text, tuple(a.values))

    def item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One listed duplicate (times stay aware datetimes, written by the app's encoder)."""
        item = dict(row)  # the statement selects exactly COLUMNS
        for column in ("received_at", "processed_at"):
            if item[column] is not None:
                item[column] = _aware(item[column])
        return item

    def cursor_after(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(self.fingerprint(), [_aware(row["received_at"]), row["image_id"]])

    def next_params(self, cursor: str) -> dict[str, str]:
        params = {**self.range.to_json(), "limit": str(self.limit)}
        for name in ("kind", "producer", "duplicate_of"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        params["cursor"] = cursor
        return params


@dataclass(frozen=True)
class ImageQuery:
    """``GET /v1/images/{image_id}``: one image's metadata and processing result."""

    image_id: str

    PARAMS: ClassVar[frozenset[str]] = frozenset()
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "image_id", "producer", "status", "duplicate_of", "duplicate_kind", "distance", "sha256", "phash", "size",
        "content_type", "width", "height", "storage_key", "received_at", "lateness", "reject_reason", "processed_at")

    @classmethod
    def parse(cls, image_id: str, pairs: Iterable[tuple[str, str]]) -> "ImageQuery":
        query_params(pairs, cls.PARAMS)
        return cls(parse_image_id("image_id", image_id))

    def sql(self) -> Sql:
        return Sql("image", f"SELECT {', '.join(self.COLUMNS)}\nFROM {V_IMAGES}\nWHERE image_id = $1",
                   (self.image_id,))

    def result(self, row: Mapping[str, Any] | None) -> dict[str, Any]:
        """The image as JSON; ``pending`` (and nothing else) while no processing result exists."""
        if row is None:
            return {"image_id": self.image_id, "status": "pending"}
        entry: dict[str, Any] = {}
        for column in self.COLUMNS:
            value = row[column]
            entry[column] = format_time(value) if isinstance(value, datetime) else value
        if entry["status"] != "duplicate":
            for column in ("duplicate_of", "duplicate_kind", "distance"):
                entry.pop(column)
        if entry["status"] != "rejected":
            entry.pop("reject_reason")
        return entry


# --- freshness ---------------------------------------------------------------------------------

#: Which replicated tables each answer depends on (its ``freshness`` lists those).
FRESHNESS_TABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "uploads": ("upload_stats",),
    "summary": ("upload_stats",),
    "top": ("upload_stats",),
    "usage": ("upload_stats", "images"),
    "duplicates": ("duplicates",),
    "image": ("images",),
}


def freshness_sql() -> Sql:
    """Per replicated table: the newest change applied (``analytics.freshness``), and for
    upload_stats how far event time is final (:data:`FINAL_UNTIL`)."""
    text = (f"SELECT table_name, newest_change_at, newest_applied_at,\n"
            f"       CASE WHEN table_name = 'upload_stats' THEN {FINAL_UNTIL} END AS final_until\n"
            f"FROM {V_FRESHNESS}\nORDER BY table_name")
    return Sql("freshness", text, ())


def freshness_entry(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One table's freshness as JSON. ``lag_seconds`` = now - newest change applied: under steady
    traffic the replication delay; for an idle table, the time since its last change."""
    change = row["newest_change_at"]
    applied = row["newest_applied_at"]
    final_until = row["final_until"]
    entry: dict[str, Any] = {
        "table": row["table_name"],
        "newest_change_at": format_time(change) if change else None,
        "newest_applied_at": format_time(applied) if applied else None,
        "lag_seconds": round(max(0.0, (now - _aware(change)).total_seconds()), 3) if change else None,
    }
    if row["table_name"] == "upload_stats":
        entry["final_until"] = format_time(final_until) if final_until else None
    return entry


def as_utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime (naive values from a ``timestamp`` column are UTC already);
    what answers carry, so the JSON encoder writes ``...Z`` (see :func:`format_time`)."""
    if ts.tzinfo is timezone.utc:
        return ts
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


_aware = as_utc
