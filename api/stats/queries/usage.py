"""``GET /v1/usage/{producer}``: one producer's usage report over whole UTC days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from imgstream.domain.windows import Interval

from api.stats.params import Scope, parse_producer, query_params
from api.stats.ranges import DEFAULT_USAGE_SPAN, MAX_TOTALS_SPAN, TimeRange, parse_range
from api.stats.sql import MEASURES, V_IMAGES, Args, Sql, totals_sql
from api.stats.times import format_time


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
        return totals_sql("usage", self.range, self.producer, None, dimension="content_type")

    def images_sql(self) -> Sql:
        """First and last upload of the producer in the range (from the images view)."""
        a = Args()
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
