"""Time on the wire and in state: the one home for parsing and formatting timestamps.

Every timestamp the platform writes is UTC. Events carry ISO-8601 with milliseconds and a ``Z``
(:func:`format_time`); operators' tools print whole seconds (:func:`format_seconds`); Flink state
and Cassandra keys use epoch milliseconds (:func:`to_millis` / :func:`from_millis`). Naive
datetimes are refused everywhere: a time without a zone is a bug waiting for a server in another
zone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def format_time(ts: datetime) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z``: the one time format on the wire."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries a zone; naive timestamps are refused."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp without zone: {text!r}")
    return ts.astimezone(timezone.utc)


def format_seconds(epoch_seconds: float) -> str:
    """UTC ISO-8601 to the second with a ``Z`` (token expiry, CLI output)."""
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_millis(ts: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact integer arithmetic, no float rounding)."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_millis(ms: int) -> datetime:
    """Aware UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
