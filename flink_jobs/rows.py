"""Row types at the job's typed boundaries (Kafka/Table <-> DataStream, sinks).

Between Python operators records are plain pickled tuples/dicts; where a stream meets the
Table API or a Java sink it must be typed, and these are those types.
"""

from __future__ import annotations

from typing import Any, Mapping

from pyflink.common import Row, Types

from imgstream.windows import STAT_FIELDS

#: A raw Kafka record: value bytes and its coordinates (the record timestamp travels as the
#: stream record's timestamp).
RAW_FIELDS = ["value", "topic", "partition", "offset"]
RAW_TYPE = Types.ROW_NAMED(
    RAW_FIELDS,
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG()],
)

#: One image's processing result: the event, the verdict and how late it was.
VERDICT_FIELDS = [
    "image_id", "producer", "sha256", "phash", "size", "content_type", "width", "height",
    "storage_key", "received_at", "event_time", "status", "duplicate_of", "duplicate_kind",
    "distance", "lateness", "watermark", "reason", "error", "topic", "partition", "offset",
]  # fmt: skip
VERDICT_TYPE = Types.ROW_NAMED(
    VERDICT_FIELDS,
    [
        Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(), Types.STRING(),
        Types.INT(), Types.INT(), Types.STRING(), Types.STRING(), Types.LONG(), Types.STRING(),
        Types.STRING(), Types.STRING(), Types.INT(), Types.STRING(), Types.LONG(), Types.STRING(),
        Types.STRING(), Types.STRING(), Types.INT(), Types.LONG(),
    ],
)  # fmt: skip

#: One version of a window row (what upload_stats stores).
WINDOW_ROW_FIELDS = [
    "window_start", "window_end", "producer", "content_type", *STAT_FIELDS, "duplicates",
    "revision", "late_events", "final",
]  # fmt: skip


def verdict_row(values: Mapping[str, Any]) -> Row:
    """A ``VERDICT_TYPE`` row from a mapping (missing fields are ``None``)."""
    row = Row(*(values.get(name) for name in VERDICT_FIELDS))
    row.set_field_names(VERDICT_FIELDS)
    return row


def as_dict(row: Row, names: list[str]) -> dict[str, Any]:
    """A row as a dict by position (rows from the Table API may lack field names)."""
    return {name: row[i] for i, name in enumerate(names)}
