"""Time ranges and cursors: what part of the data a query covers, and where its next page starts.

Time ranges are half-open ``[from, to)``. Series, summaries, usage and top-N work on whole
windows, so ``from`` is rounded down and ``to`` up to the window boundary (UTC; days are UTC
days), and the answer echoes the range actually used. A cursor carries the fingerprint of the
query that issued it, so it is refused by any other query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Mapping, Sequence

from imgstream.domain.errors import BadRequest
from imgstream.domain.windows import Interval, from_millis, to_millis

from api.stats.times import format_time, parse_time

# --- limits ------------------------------------------------------------------------------------

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
