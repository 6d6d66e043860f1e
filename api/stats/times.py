"""Times in the stats API: the one strict input form (ISO-8601 with a zone) and the one answer form
(RFC 3339 in UTC with a ``Z``).

Every time a request carries (``from``, ``to``, the sort key inside a cursor) goes through
:func:`parse_time`; every time an answer carries is written as :func:`format_time` writes it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Final

from imgstream.domain.errors import BadRequest

#: Times outside this range are typing errors (or overflow probes), not data: the platform has no
#: data before 2000, and 2100 keeps every ``to + span`` computation far from datetime's limits.
MIN_TIME: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TIME: Final = datetime(2100, 1, 1, tzinfo=timezone.utc)

_ISO_TIME: Final = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$")


def parse_time(field: str, text: str) -> datetime:
    """An ISO-8601 timestamp with a zone (``Z`` or ``±HH:MM``), as an aware UTC datetime.

    ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` followed by the zone; dates alone, week dates, basic format
    and named zones are refused, as are times outside [2000, 2100)."""
    if " " in text and re.search(r" [0-9]{2}:[0-9]{2}$", text):
        raise BadRequest(f"{field}: {text!r} has a space where the zone's '+' should be: in a query string "
                         "'+' means space, send it as %2B (or use Z)", field=field)
    match = _ISO_TIME.fullmatch(text)
    if not match:
        raise BadRequest(f"{field}: {text!r} is not an ISO-8601 time with a zone, "
                         "e.g. 2026-11-26T12:00:00Z or 2026-11-26T13:00:00%2B01:00", field=field)
    zone = match.group(8)
    if not MIN_TIME.year - 1 <= int(match.group(1)) <= MAX_TIME.year:  # before any offset arithmetic
        raise BadRequest(f"{field}: {text!r} is outside the supported range "
                         f"[{format_time(MIN_TIME)}, {format_time(MAX_TIME)})", field=field)
    if zone != "Z" and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
        raise BadRequest(f"{field}: zone offset {zone} is out of range (-23:59..+23:59)", field=field)
    try:
        ts = datetime.fromisoformat(text[:-1] + "+00:00" if zone == "Z" else text)
    except ValueError as exc:
        raise BadRequest(f"{field}: {text!r} is not a valid time ({exc})", field=field) from None
    ts = ts.astimezone(timezone.utc)
    if not MIN_TIME <= ts < MAX_TIME:
        raise BadRequest(f"{field}: {text!r} is outside the supported range "
                         f"[{format_time(MIN_TIME)}, {format_time(MAX_TIME)})", field=field)
    return ts


def format_time(ts: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, fractional seconds (6 digits) only when there are any: the
    format of every time in every answer. It is exactly what the app's JSON encoder (orjson,
    ``OPT_UTC_Z``) writes for the aware datetimes that answers carry (a unit test holds the two
    equal), so large answers leave formatting to the encoder."""
    if ts.tzinfo is not timezone.utc:
        ts = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return ts.isoformat(timespec="microseconds" if ts.microsecond else "seconds")[:-6] + "Z"


def as_utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime (naive values from a ``timestamp`` column are UTC already);
    what answers carry, so the JSON encoder writes ``...Z`` (see :func:`format_time`)."""
    if ts.tzinfo is timezone.utc:
        return ts
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
