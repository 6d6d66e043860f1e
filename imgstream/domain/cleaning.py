"""Cleaning: raw Kafka values of ``images.uploaded`` -> a clean event or a dead-letter record.

:func:`clean` never raises for bad input: every value yields exactly one :class:`Cleaned` or
one :class:`DeadLetter`. The dead-letter record carries the reason, the error, the raw value
(text when it is UTF-8, base64 otherwise) and where it came from, so an operator can find and
replay it. Where the bad event still names a plausible image/producer/time, those are kept
(``image_id``/``producer``/``event_time``) so that statistics can count it as *rejected* and
the image's status can say so.

Normalisation (before schema validation, deliberately small and documented):

* hex fields (``image_id``, ``sha256``, ``phash``) are lower-cased - case carries no meaning - and
  stripped of ASCII white space (only ASCII: the job's SQL, which routes records by the SHA-256
  before any Python, strips the same, see ``flink_jobs.pipeline.exact_shard_sql``);
* ``content_type`` is lower-cased, parameters (``; charset=...``) are dropped, and the common
  aliases ``image/jpg``/``image/pjpeg`` -> ``image/jpeg``, ``image/x-ms-bmp`` -> ``image/bmp``;
* ``received_at`` is rewritten in the one wire format (UTC, milliseconds, ``Z``).

Pure: no framework imports.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from imgstream.domain.errors import InvalidEvent
from imgstream.domain.producers import SYNTHETIC_UNKNOWN, is_synthetic, is_valid_name
from imgstream.domain.events import (TOPIC_DELETED, TOPIC_UPLOADED, ImageDeleted, ImageUploaded, schema, validate,
                                     validate_deleted)
from imgstream.domain.timefmt import format_time, parse_time

#: Largest event value accepted. A v1 event is < 2 KiB; anything far larger is not one, and
#: echoing megabytes into the dead-letter topic would only move the problem.
MAX_EVENT_BYTES = 64 * 1024
#: How much of a rejected value is kept in the dead-letter record.
MAX_DLQ_RAW_BYTES = 16 * 1024

REASON_EMPTY = "empty"
REASON_TOO_LARGE = "too_large"
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_an_object"
REASON_UNKNOWN_VERSION = "unknown_version"
REASON_SCHEMA = "schema"
REASON_UNEXPECTED = "unexpected"
#: A valid event whose SHA-256 the job's SQL read otherwise than cleaning did (a key given twice,
#: say), so it reached another exact shard than its content's: refused rather than decided
#: against the wrong part of the index (``flink_jobs.sharded.DecideExact``).
REASON_MISROUTED = "misrouted"

#: The white space stripped from hex fields: ASCII only (``str.strip()`` would take Unicode's too).
ASCII_WHITESPACE = " \t\n\r\f\v"

#: ``event_type`` of heartbeats: records that only carry time. A heartbeat process writes one
#: into every partition every second, so event time advances (and windows close) while no one
#: uploads; being in-band, a replay after a failure meets them in the same order.
HEARTBEAT_TYPE = "stream.heartbeat"

#: Producer/content type recorded for rejected events that do not name a valid one. A dead
#: letter read from a synthetic topic (a test's or benchmark's, see
#: :data:`imgstream.domain.producers.SYNTHETIC_PREFIX`) is attributed to
#: :data:`~imgstream.domain.producers.SYNTHETIC_UNKNOWN` instead, unless it names a synthetic
#: producer: what tests write never counts as a real producer's, even when unreadable.
UNKNOWN = "unknown"
#: Namespace for ids of rejected events that carry no valid image_id: derived from the Kafka
#: coordinates, so reprocessing the same record yields the same id (idempotent writes).
REJECTED_ID_NAMESPACE = uuid.UUID("0c8e4b6a-52a4-4d55-8f63-5a3fd0e1c2b7")

_CONTENT_TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
}
_HEX_FIELDS = ("image_id", "sha256", "phash")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a raw value came from."""

    topic: str = TOPIC_UPLOADED
    partition: int = -1
    offset: int = -1
    #: Kafka record timestamp (epoch ms), the fallback event time of unreadable events.
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Cleaned:
    """A valid, normalised event and its event time (epoch ms)."""

    event: ImageUploaded
    event_time: int
    source: Source


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A heartbeat: no upload, only event time (epoch ms)."""

    event_time: int
    source: Source


def heartbeat_value(at: datetime, origin: str = "heartbeat") -> bytes:
    """The Kafka value of a heartbeat at ``at`` (``received_at`` like an upload's event time)."""
    body = {"event_type": HEARTBEAT_TYPE, "received_at": format_time(at), "origin": origin}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A value that is not a valid event, with everything needed to understand and replay it."""

    reason: str
    code: str
    error: str
    raw: str
    raw_encoding: str  # "text" | "base64"
    raw_truncated: bool
    source: Source
    seen_at: str
    #: Best-effort attribution, for counting the event as rejected.
    image_id: str
    producer: str
    content_type: str
    event_time: int | None

    def to_dict(self) -> dict[str, Any]:
        """The dead-letter topic's JSON value."""
        return {
            "reason": self.reason,
            "code": self.code,
            "error": self.error,
            "raw": self.raw,
            "raw_encoding": self.raw_encoding,
            "raw_truncated": self.raw_truncated,
            "topic": self.source.topic,
            "partition": self.source.partition,
            "offset": self.source.offset,
            "seen_at": self.seen_at,
            "image_id": self.image_id,
            "producer": self.producer,
            "event_time": self.event_time,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()


def to_epoch_ms(ts: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """The documented normalisations (see module doc); values of the wrong type are left as is."""
    out = dict(data)
    for name in _HEX_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = out[name].strip(ASCII_WHITESPACE).lower()
    content_type = out.get("content_type")
    if isinstance(content_type, str):
        base = content_type.split(";", 1)[0].strip().lower()
        out["content_type"] = _CONTENT_TYPE_ALIASES.get(base, base)
    received_at = out.get("received_at")
    if isinstance(received_at, str):
        try:
            out["received_at"] = format_time(parse_time(received_at.strip()))
        except ValueError:
            pass  # left as is: validation reports it with the field name
    return out


def _json_value(raw: bytes | str | None) -> Any:
    """The JSON value of one raw topic value: raises :class:`InvalidEvent` (reason empty, too
    large or not JSON) for what cannot be one. The first step of every topic's cleaning."""
    if raw is None or len(raw) == 0:
        raise InvalidEvent("empty value (tombstone or empty message)", reason=REASON_EMPTY)
    body = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            f"value of {len(body)} bytes is over MAX_EVENT_BYTES={MAX_EVENT_BYTES}", reason=REASON_TOO_LARGE
        )
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}", reason=REASON_NOT_JSON) from None


def clean(
    raw: bytes | str | None,
    source: Source = Source(),
    *,
    seen_at: datetime | None = None,
) -> Cleaned | Heartbeat | DeadLetter:
    """Validate and normalise one raw value; never raises for bad input."""
    seen = seen_at or datetime.now(timezone.utc)
    data: Any = None
    try:
        data = _json_value(raw)
        if isinstance(data, dict) and data.get("event_type") == HEARTBEAT_TYPE:
            return _heartbeat(data, source)
        if isinstance(data, dict):
            data = normalise(data)
        event = ImageUploaded.from_dict(validate(data))
        return Cleaned(event, to_epoch_ms(parse_time(event.received_at)), source)
    except InvalidEvent as exc:
        return _dead_letter(raw, source, seen, exc.details.get("reason", REASON_SCHEMA), exc.code, exc.message, data)
    except Exception as exc:  # noqa: BLE001 - a job must not crash on input: route it, with its type
        return _dead_letter(
            raw, source, seen, REASON_UNEXPECTED, InvalidEvent.code, f"{type(exc).__name__}: {exc}", data
        )


def refuse(raw: bytes | str | None, source: Source, reason: str, error: str, *,
           seen_at: datetime | None = None) -> DeadLetter:
    """The dead letter of a value that cleaning accepted and a later check of the job refused
    (``reason``, ``error``), attributed like any other (image, producer, event time)."""
    try:
        data = _json_value(raw)
    except InvalidEvent:
        data = None
    data = normalise(data) if isinstance(data, dict) else data
    return _dead_letter(raw, source, seen_at or datetime.now(timezone.utc), reason, InvalidEvent.code, error, data)


def clean_deletion(raw: bytes | str | None, source: Source = Source(TOPIC_DELETED), *,
                   seen_at: datetime | None = None) -> ImageDeleted | DeadLetter:
    """Validate one raw value of the deletion topic (``image.deleted``); never raises for bad
    input. A bad one becomes a :class:`DeadLetter` (its ``topic`` tells it from an upload's)."""
    seen = seen_at or datetime.now(timezone.utc)
    data: Any = None
    try:
        data = _json_value(raw)
        if isinstance(data, dict):
            data = normalise(data)
        return ImageDeleted.from_dict(validate_deleted(data))
    except InvalidEvent as exc:
        return _dead_letter(raw, source, seen, exc.details.get("reason", REASON_SCHEMA), exc.code, exc.message, data)
    except Exception as exc:  # noqa: BLE001 - a job must not crash on input: route it, with its type
        return _dead_letter(
            raw, source, seen, REASON_UNEXPECTED, InvalidEvent.code, f"{type(exc).__name__}: {exc}", data
        )


def _heartbeat(data: Mapping[str, Any], source: Source) -> Heartbeat:
    received_at = data.get("received_at")
    if not isinstance(received_at, str):
        raise InvalidEvent("heartbeat without received_at", reason=REASON_SCHEMA, field="received_at")
    try:
        return Heartbeat(to_epoch_ms(parse_time(received_at)), source)
    except ValueError as exc:
        raise InvalidEvent(f"received_at: {exc}", reason=REASON_SCHEMA, field="received_at") from None


def _dead_letter(
    raw: bytes | str | None,
    source: Source,
    seen_at: datetime,
    reason: str,
    code: str,
    error: str,
    data: Any,
) -> DeadLetter:
    text, encoding, truncated = encode_raw(raw)
    fields: Mapping[str, Any] = data if isinstance(data, dict) else {}
    image_id = fields.get("image_id")
    if not (isinstance(image_id, str) and _UUID_RE.match(image_id)):
        image_id = str(uuid.uuid5(REJECTED_ID_NAMESPACE, f"{source.topic}/{source.partition}/{source.offset}"))
    producer = fields.get("producer")
    if is_synthetic(source.topic):
        if not (is_valid_name(producer) and is_synthetic(producer)):
            producer = SYNTHETIC_UNKNOWN
    elif not is_valid_name(producer):
        producer = UNKNOWN
    content_type = fields.get("content_type")
    if content_type not in schema()["properties"]["content_type"]["enum"]:
        content_type = UNKNOWN
    event_time: int | None = source.timestamp
    received_at = fields.get("received_at")
    if isinstance(received_at, str):
        try:
            event_time = to_epoch_ms(parse_time(received_at))
        except ValueError:
            pass  # keep the Kafka timestamp
    return DeadLetter(
        reason=reason,
        code=code,
        error=error,
        raw=text,
        raw_encoding=encoding,
        raw_truncated=truncated,
        source=source,
        seen_at=format_time(seen_at),
        image_id=image_id,
        producer=producer,
        content_type=str(content_type),
        event_time=event_time,
    )


def encode_raw(raw: bytes | str | None) -> tuple[str, str, bool]:
    """``(text, encoding, truncated)`` of a raw value for the dead-letter record."""
    if raw is None:
        return "", "text", False
    body = raw.encode() if isinstance(raw, str) else bytes(raw)
    truncated = len(body) > MAX_DLQ_RAW_BYTES
    body = body[:MAX_DLQ_RAW_BYTES]
    # The cut may have split one UTF-8 sequence (at most 3 bytes of it): try shorter tails.
    for cut in range(4 if truncated else 1):
        try:
            return body[: len(body) - cut].decode("utf-8"), "text", truncated
        except UnicodeDecodeError:
            continue
    return base64.b64encode(body).decode("ascii"), "base64", truncated
