"""``GET /v1/duplicates``: the duplicates received in a range, oldest first, paged by cursor."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Iterable, Mapping

from api.stats.params import (DUPLICATE_KINDS, LIST_LIMIT, Scope, parse_choice, parse_image_id, parse_int,
                              parse_producer, query_params)
from api.stats.ranges import (DEFAULT_LIST_SPAN, MAX_LIST_SPAN, TimeRange, decode_cursor, encode_cursor, fingerprint,
                              parse_range)
from api.stats.sql import V_DUPLICATES, Args, Sql
from api.stats.times import as_utc


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

    def _where(self, a: Args) -> list[str]:
        where = [f"received_at >= {a(self.range.start)}", f"received_at < {a(self.range.end)}"]
        if self.producer is not None:
            where.append(f"producer = {a(self.producer)}")
        if self.kind is not None:
            where.append(f"duplicate_kind = {a(self.kind)}")
        if self.duplicate_of is not None:
            where.append(f"duplicate_of = {a(self.duplicate_of)}")
        return where

    def sql(self) -> Sql:
        a = Args()
        where = self._where(a)
        if self.after is not None:
            where.append(f"(received_at, image_id) > ({a(self.after[0])}, {a(self.after[1])})")
        text = (f"SELECT {', '.join(self.COLUMNS)}\nFROM {V_DUPLICATES}\nWHERE {' AND '.join(where)}\n"
                f"ORDER BY received_at, image_id\nLIMIT {a(self.limit + 1)}")
        return Sql("duplicates", text, tuple(a.values))

    def count_sql(self) -> Sql:
        a = Args()
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
                item[column] = as_utc(item[column])
        return item

    def cursor_after(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(self.fingerprint(), [as_utc(row["received_at"]), row["image_id"]])

    def next_params(self, cursor: str) -> dict[str, str]:
        params = {**self.range.to_json(), "limit": str(self.limit)}
        for name in ("kind", "producer", "duplicate_of"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        params["cursor"] = cursor
        return params
