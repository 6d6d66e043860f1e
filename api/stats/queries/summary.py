"""``GET /v1/stats/summary``: upload totals over a range of whole minutes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Iterable, Mapping

from imgstream.domain.windows import Interval

from api.stats.params import Scope, parse_content_type, parse_producer, query_params
from api.stats.ranges import DEFAULT_TOTALS_SPAN, MAX_TOTALS_SPAN, TimeRange, parse_range
from api.stats.sql import MEASURES, Sql, totals_sql


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
        return totals_sql("summary", self.range, self.producer, self.content_type)

    def result(self, row: Mapping[str, Any]) -> dict[str, Any]:
        totals = {m: int(row[m]) for m in MEASURES}
        return {**totals, "producers": int(row["producers"]), "final": bool(row["final"])}
