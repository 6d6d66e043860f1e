"""The SQL the stats API sends: the documented ``analytics`` views, bound statements and the
fragments several queries share.

* **Bound, never formatted.** Values reach PostgreSQL only as ``$n`` parameters (:class:`Args`).
  The only identifiers in the SQL text are view and column names from the constants below,
  picked by closed-set choices (``group_by``, ``by``, ``interval``), never copied from a request.
* **One source of truth.** Every number comes from an ``analytics`` view: upload numbers from the
  minute view ``analytics.upload_stats`` (hour/day windows are its sums with the roll-up views'
  own finality rule, see :class:`~api.stats.queries.uploads.UploadsQuery`), images, duplicates and
  freshness from theirs, so an analyst running the query shown in ``docs/stats-api.md`` gets the
  same number as the API (``tests/integration/test_stats_api.py`` compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Mapping

from imgstream.domain.windows import Interval

from api.stats.ranges import TimeRange

# The documented views (connectors/postgres/20-analytics.sql): the only identifiers that ever
# appear in SQL text, with the bucket expressions and steps below.
V_STATS: Final = "analytics.upload_stats"
V_IMAGES: Final = "analytics.images"
V_DUPLICATES: Final = "analytics.duplicates"
V_FRESHNESS: Final = "analytics.freshness"
#: The batch service's derivatives (connectors/postgres/30-batch.sql), listed on an image's answer.
V_DERIVATIVES: Final = "analytics.derivatives"
#: The roll-up views a series of each interval equals (what an analyst queries; the tests compare).
ROLLUP_VIEWS: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "analytics.upload_stats",
    Interval.HOUR: "analytics.upload_stats_hourly",
    Interval.DAY: "analytics.upload_stats_daily",
}
#: The measures of a window, in answer order: what an upload_stats row carries.
MEASURES: Final = ("uploads", "bytes", "accepted", "duplicates", "duplicates_exact", "duplicates_near", "rejected",
                   "late_events")
#: Window start of a minute row's hour/day. ``date_bin`` is immutable and aligned to UTC midnight,
#: i.e. the same buckets as the roll-up views' ``date_trunc(..., 'UTC')``.
_ORIGIN: Final = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
BUCKET: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "window_start",
    Interval.HOUR: f"date_bin(INTERVAL '1 hour', window_start, {_ORIGIN})",
    Interval.DAY: f"date_bin(INTERVAL '1 day', window_start, {_ORIGIN})",
}
STEP: Final[Mapping[Interval, str]] = {
    Interval.MINUTE: "INTERVAL '1 minute'", Interval.HOUR: "INTERVAL '1 hour'", Interval.DAY: "INTERVAL '1 day'",
}
#: The end of the newest final minute window: every window ending at or before it is final. The
#: hour/day roll-up views call an hour/day final when all its minute rows are and this has passed
#: its end; the API applies the same rule (and uses it to tell closed ranges from open ones).
FINAL_UNTIL: Final = f"(SELECT max(window_end) FROM {V_STATS} WHERE is_final)"


@dataclass(frozen=True)
class Sql:
    """A statement and its bound arguments; ``name`` labels it in metrics and logs."""

    name: str
    text: str
    args: tuple[Any, ...]


class Args:
    """Collects bound arguments and hands out their ``$n`` placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filters(a: Args, producer: str | None, content_type: str | None) -> list[str]:
    """The ``WHERE`` terms restricting upload_stats rows to a producer and/or content type."""
    where = []
    if producer is not None:
        where.append(f"producer = {a(producer)}")
    if content_type is not None:
        where.append(f"content_type = {a(content_type)}")
    return where


def sums(indent: str = "       ") -> str:
    """The select list summing every measure of :data:`MEASURES` (0 when no row matched)."""
    return f",\n{indent}".join(f"coalesce(sum({m}), 0)::bigint AS {m}" for m in MEASURES)


def totals_sql(name: str, time_range: TimeRange, producer: str | None, content_type: str | None,
               dimension: str | None = None, order: str | None = None, limit: int | None = None) -> Sql:
    """Sums of the minute rows of ``[from, to)``, overall or per ``dimension`` (summary, usage, top)."""
    a = Args()
    where = [f"window_start >= {a(time_range.start)}", f"window_start < {a(time_range.end)}",
             *filters(a, producer, content_type)]
    end = a(time_range.end)
    select = f"{dimension},\n       " if dimension else ""
    text = (f"SELECT {select}{sums()},\n"
            f"       coalesce(bool_and(is_final), true)\n"
            f"           AND coalesce({FINAL_UNTIL}, '-infinity') >= {end} AS final,\n"
            f"       count(DISTINCT producer)::int AS producers\n"
            f"FROM {V_STATS}\nWHERE {' AND '.join(where)}")
    if dimension:
        text += f"\nGROUP BY {dimension}\nORDER BY {order or dimension}"
    if limit is not None:
        text += f"\nLIMIT {a(limit)}"
    return Sql(name, text, tuple(a.values))
