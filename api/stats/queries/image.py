"""``GET /v1/images/{image_id}``: one image's metadata, processing result and derivatives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Iterable, Mapping

from api.stats.params import parse_image_id, query_params
from api.stats.sql import V_DERIVATIVES, V_IMAGES, Sql
from api.stats.times import format_time

#: The fields of one entry of ``"derivatives"``, in answer order (``size`` is the object's bytes).
DERIVATIVE_FIELDS: Final = ("preset", "format", "width", "height", "size", "storage_key")
#: An image that can no longer change: its answer may be cached (``Cache-Control: max-age``).
#: Every other status may still change (``deleted``; derivatives made by the next batch run).
TERMINAL_STATUS: Final = "deleted"


def _derivatives_sql() -> str:
    """The image's derivatives as one JSON array (one round trip with the image row): those of
    its content (derivatives belong to the SHA-256, so exact duplicates share them), none for a
    deleted image (its content is no longer served for it; GC may collect the bytes)."""
    fields = ", ".join(f"'{f}', d.{f}" for f in DERIVATIVE_FIELDS)
    return (f"(SELECT coalesce(json_agg(json_build_object({fields}) ORDER BY d.ladder, d.preset, d.format), '[]')\n"
            f"        FROM {V_DERIVATIVES} d WHERE d.sha256 = i.sha256 AND i.status <> '{TERMINAL_STATUS}')"
            f" AS derivatives")


@dataclass(frozen=True)
class ImageQuery:
    """``GET /v1/images/{image_id}``: one image's metadata, processing result and derivatives."""

    image_id: str
    #: A producer token's own name: the query then finds only that producer's images, so another
    #: producer's image answers exactly like an unknown id ("pending"), never 403. A 403 would be
    #: an existence oracle over ids that can be guessed (uuid5 of producer and idempotency key).
    producer: str | None = None

    PARAMS: ClassVar[frozenset[str]] = frozenset()
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "image_id", "producer", "status", "duplicate_of", "duplicate_kind", "distance", "sha256", "phash", "size",
        "content_type", "width", "height", "storage_key", "received_at", "lateness", "reject_reason", "processed_at")

    @classmethod
    def parse(cls, image_id: str, pairs: Iterable[tuple[str, str]], producer: str | None = None) -> "ImageQuery":
        query_params(pairs, cls.PARAMS)
        return cls(parse_image_id("image_id", image_id), producer)

    def sql(self) -> Sql:
        columns = ", ".join(f"i.{c}" for c in self.COLUMNS)
        select = f"SELECT {columns},\n       {_derivatives_sql()}\nFROM {V_IMAGES} i\nWHERE i.image_id = $1"
        if self.producer is None:
            return Sql("image", select, (self.image_id,))
        return Sql("image", f"{select} AND i.producer = $2", (self.image_id, self.producer))

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
        entry["derivatives"] = derivatives(row.get("derivatives"))
        return entry


def derivatives(value: Any) -> list[dict[str, Any]]:
    """The ``derivatives`` column (JSON text from asyncpg, or already decoded) as a list of
    entries with exactly :data:`DERIVATIVE_FIELDS`; ``[]`` when there are none."""
    if value is None:
        return []
    items = json.loads(value) if isinstance(value, (str, bytes)) else value
    return [{f: item.get(f) for f in DERIVATIVE_FIELDS} for item in items]
