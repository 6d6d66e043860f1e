"""``GET /v1/stats/uploads``: upload numbers as a series of minute, hour or day windows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Iterable, Mapping

from imgstream.domain.errors import BadRequest
from imgstream.domain.windows import Interval

from api.stats.params import (SERIES_LIMIT, Scope, parse_choice, parse_content_type, parse_group_by, parse_int,
                              parse_producer, query_params)
from api.stats.ranges import (DEFAULT_SERIES_SPAN, MAX_SERIES_SPAN, TimeRange, decode_cursor, encode_cursor,
                              fingerprint, floor_to, parse_range)
from api.stats.sql import BUCKET, FINAL_UNTIL, MEASURES, STEP, V_STATS, Args, Sql, filters, sums
from api.stats.times import as_utc

_STEPS: Final[Mapping[Interval, timedelta]] = {i: timedelta(milliseconds=i.millis) for i in Interval}


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
        a = Args()
        bucket = BUCKET[self.interval]
        where = [f"window_start >= {a(self.range.start)}", f"window_start < {a(self.range.end)}",
                 *filters(a, self.producer, self.content_type)]
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
                f"       {sums()},\n       {final}\n"
                f"FROM {V_STATS}\nWHERE {' AND '.join(where)}\n"
                f"GROUP BY {keys}\nORDER BY {keys}\nLIMIT {a(self.limit + 1)}")
        return Sql(f"uploads_{self.interval.value}", text, tuple(a.values))

    def window(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One series entry from one result row. Window bounds stay aware UTC datetimes (whole
        minutes): the app's JSON encoder writes them as ``2026-11-26T12:00:00Z``, the same text as
        :func:`~api.stats.times.format_time`, at a fraction of the cost for a page of thousands of
        windows."""
        start = as_utc(row["window_start"])
        entry: dict[str, Any] = {"window_start": start, "window_end": start + _STEPS[self.interval]}
        for dim in self.group_by:
            entry[dim] = row[dim]
        for measure in MEASURES:
            entry[measure] = int(row[measure] or 0)
        entry["final"] = bool(row["final"])
        return entry

    def cursor_after(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(self.fingerprint(), [as_utc(row["window_start"]), *(row[d] for d in self.group_by)])

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
