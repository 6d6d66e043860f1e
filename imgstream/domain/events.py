"""The ``image.uploaded`` and ``image.deleted`` events: versioned schemas, typed views, (de)serialisation.

The JSON Schemas in ``schemas/image_uploaded.v1.json`` and ``schemas/image_deleted.v1.json`` are
the contract between the upload gateway (producer) and the Flink jobs (consumer). Everything here
is pure: no framework imports.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Mapping

from imgstream.domain.errors import InvalidEvent
from imgstream.domain.schema_check import SchemaError, compile_schema
from imgstream.domain.timefmt import format_time, parse_time

SCHEMA_VERSION = 1
EVENT_TYPE = "image.uploaded"
#: Topic names are part of the public surface. Besides ``image.uploaded`` events, the upload
#: topic carries ``stream.heartbeat`` records (``flink_jobs/heartbeat.py``: event time for idle
#: partitions); every consumer must skip them (``imgstream.domain.cleaning`` recognises them).
TOPIC_UPLOADED = "images.uploaded"
TOPIC_DEAD_LETTER = "images.dlq"
#: Deletions (``image.deleted``), keyed by image_id. A topic of their own rather than a second
#: event type on the upload topic: every reader of ``images.uploaded`` (the pipeline, the batch
#: jobs, reconcile, the tests' oracles) counts what it reads there as uploads.
TOPIC_DELETED = "images.deleted"
DELETED_EVENT_TYPE = "image.deleted"

#: Namespace for image ids derived from (producer, Idempotency-Key): a retry with the same key
#: yields the same id without the gateway storing anything.
IMAGE_ID_NAMESPACE = uuid.UUID("5b0f3f4e-8d4c-4f0e-9a57-3c1d2f0b7a11")


@lru_cache(maxsize=None)
def schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of ``image.uploaded`` at ``version``."""
    text = resources.files("imgstream.domain.schemas").joinpath(f"image_uploaded.v{version}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@lru_cache(maxsize=None)
def deleted_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of ``image.deleted`` at ``version``."""
    text = resources.files("imgstream.domain.schemas").joinpath(f"image_deleted.v{version}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


#: The one textual form of an image id: a UUID, 36 characters with hyphens (hex case-insensitive
#: on input, lowercase once canonical).
IMAGE_ID_LENGTH = 36
_IMAGE_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def canonical_image_id(text: str) -> str:
    """``text`` as an image id (lowercase UUID with hyphens); :class:`ValueError` when it is not
    one. The length is checked before the pattern, so hostile input costs nothing."""
    if len(text) != IMAGE_ID_LENGTH or not _IMAGE_ID.match(text):
        raise ValueError("image_id must be a UUID (8-4-4-4-12 hex digits)")
    return text.lower()


def image_id_for(producer: str, idempotency_key: str | None) -> str:
    """Deterministic id for an idempotent upload, a random one otherwise."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IMAGE_ID_NAMESPACE, f"{producer}\x00{idempotency_key}"))


def scalar_fields(event: Any) -> dict[str, Any]:
    """The fields of an event dataclass as a dict. ``dataclasses.asdict`` without its deep copy
    (it recurses into every value): every field here is a str, an int or None, and ``asdict``
    was ~40 % of cleaning an upload event."""
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class ImageUploaded:
    """One upload, as the gateway publishes it."""

    image_id: str
    producer: str
    sha256: str
    phash: str
    size: int
    content_type: str
    width: int
    height: int
    storage_key: str
    received_at: str
    idempotency_key: str | None = None
    gateway: str | None = None
    schema_version: int = SCHEMA_VERSION
    event_type: str = EVENT_TYPE

    def to_dict(self) -> dict[str, Any]:
        return scalar_fields(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageUploaded":
        """Build from an already validated mapping (see :func:`validate`)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True, slots=True)
class ImageDeleted:
    """A producer's deletion of its own image, as the gateway publishes it (after checking the
    owner): the pipeline sets the image's status to ``deleted``."""

    image_id: str
    producer: str
    requested_at: str
    gateway: str | None = None
    schema_version: int = SCHEMA_VERSION
    event_type: str = DELETED_EVENT_TYPE

    def to_dict(self) -> dict[str, Any]:
        return scalar_fields(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageDeleted":
        """Build from an already validated mapping (see :func:`validate_deleted`)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def validate_deleted(data: Any) -> dict[str, Any]:
    """Validate a decoded ``image.deleted`` event; raise :class:`InvalidEvent` with the reason."""
    return _validated(data, _deleted_checker, "requested_at")


def _validated(data: Any, checker: Callable[[int], Callable[[Any], SchemaError | None]], time_field: str
               ) -> dict[str, Any]:
    """``data`` if it is an object of the known schema version that ``checker(version)`` accepts
    and whose ``time_field`` parses; else :class:`InvalidEvent` with the reason (every event type)."""
    if not isinstance(data, dict):
        raise InvalidEvent("event is not a JSON object", reason="not_an_object")
    version = data.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise InvalidEvent(f"unknown schema_version {version!r}", reason="unknown_version")
    error = checker(SCHEMA_VERSION)(data)
    if error is not None:
        raise InvalidEvent(f"{error.field}: {error.message}", reason="schema", field=error.field)
    try:
        parse_time(data[time_field])
    except ValueError as exc:
        raise InvalidEvent(f"{time_field}: {exc}", reason="schema", field=time_field) from None
    return data


@lru_cache(maxsize=None)
def _deleted_checker(version: int) -> Callable[[Any], SchemaError | None]:
    return compile_schema(deleted_schema(version))


def validate(data: Any) -> dict[str, Any]:
    """Validate a decoded event against its schema version; raise :class:`InvalidEvent` with the reason."""
    return _validated(data, _checker, "received_at")


@lru_cache(maxsize=None)
def _checker(version: int) -> Callable[[Any], SchemaError | None]:
    """The schema of ``version`` compiled once into a pure-Python checker (about as fast as the
    compiled third-party validator it replaced; no package outside the standard library)."""
    return compile_schema(schema(version))


def decode(raw: bytes) -> ImageUploaded:
    """Decode and validate one event from its Kafka value bytes."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}", reason="not_json") from None
    return ImageUploaded.from_dict(validate(data))
