"""``GET /v1/stats/top``: producers or content types ranked by uploads or bytes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from imgstream.domain.errors import Forbidden
from imgstream.domain.windows import Interval

from api.stats.params import (DIMENSIONS, TOP_LIMIT, TOP_MEASURES, Scope, parse_choice, parse_content_type, parse_int,
                              parse_producer, query_params)
from api.stats.ranges import DEFAULT_TOTALS_SPAN, MAX_TOTALS_SPAN, TimeRange, parse_range
from api.stats.sql import MEASURES, Sql, totals_sql


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
        return totals_sql(f"top_{self.dimension}", self.range, self.producer, self.content_type,
                          dimension=self.dimension, order=order, limit=self.limit)

    def result(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{"rank": i, self.dimension: r[self.dimension], **{m: int(r[m] or 0) for m in MEASURES}}
                for i, r in enumerate(rows, 1)]
