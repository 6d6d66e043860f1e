"""``GET /v1/images/{image_id}``: one image's metadata and processing result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Iterable, Mapping

from api.stats.params import parse_image_id, query_params
from api.stats.sql import V_IMAGES, Sql
from api.stats.times import format_time


@dataclass(frozen=True)
class ImageQuery:
    """``GET /v1/images/{image_id}``: one image's metadata and processing result."""

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
        select = f"SELECT {', '.join(self.COLUMNS)}\nFROM {V_IMAGES}\nWHERE image_id = $1"
        if self.producer is None:
            return Sql("image", select, (self.image_id,))
        return Sql("image", f"{select} AND producer = $2", (self.image_id, self.producer))

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
