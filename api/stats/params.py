"""Who asks and what they ask: the caller's :class:`Scope` and strict parsing of query parameters.

Every parameter is known, given at most once, bounded in length and parsed whole (times are
ISO-8601 *with* a zone, see :mod:`api.stats.times`; choices come from closed sets); anything else
is a ``400`` (:class:`~imgstream.domain.errors.BadRequest`) whose ``field`` names the parameter.
Nothing is guessed or silently dropped. A producer token's queries always carry
``producer = <its name>``; asking for another producer is a ``403``, not an empty answer.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Collection, Final, Iterable, Sequence

from imgstream.domain.errors import BadRequest, Forbidden
from imgstream.domain.imaging import SUPPORTED
from imgstream.domain.producers import is_valid_name
from imgstream.domain.tokens import Principal

# --- limits ------------------------------------------------------------------------------------

#: Longest accepted parameter value. The longest legitimate value is a cursor (~200 characters);
#: a time is ~32. Anything longer is a mistake or an attack and is refused before parsing.
MAX_PARAM_CHARS: Final = 512

#: Page sizes. A series page of 1,000 windows is ~150 KB of JSON; 10,000 (one week of minutes)
#: is the most one response carries. Duplicates are wider rows, top-N is a short ranking.
SERIES_LIMIT: Final = (1000, 10_000)  # (default, max)
LIST_LIMIT: Final = (100, 1000)
TOP_LIMIT: Final = (10, 100)

# --- vocabulary --------------------------------------------------------------------------------

#: ``group_by`` dimensions: request name -> column of the upload_stats views (the same here).
DIMENSIONS: Final = ("producer", "content_type")
DUPLICATE_KINDS: Final = ("exact", "near")
TOP_MEASURES: Final = ("uploads", "bytes")
CONTENT_TYPES: Final = frozenset(SUPPORTED)

#: Content types: the sniffed MIME types (image/jpeg...), plus whatever a dead letter carried;
#: a strict ``type/subtype`` shape, nothing else.
_CONTENT_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


# --- who asks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Whose data a request may read: one producer, or everyone's (``producer is None``)."""

    producer: str | None

    @classmethod
    def of(cls, principal: Principal) -> "Scope":
        return cls(None if principal.is_analyst else principal.name)

    @property
    def everyone(self) -> bool:
        return self.producer is None

    def producer_filter(self, requested: str | None) -> str | None:
        """The producer a query must be restricted to: the token's own for producers (asking for
        another is :class:`Forbidden`), the requested one (or none) for analysts."""
        if self.producer is None:
            return requested
        if requested is not None and requested != self.producer:
            raise Forbidden(f"a producer token reads only its own producer's data ({self.producer}), "
                            f"not {requested}'s", field="producer")
        return self.producer


# --- parameter parsing -------------------------------------------------------------------------


def query_params(pairs: Iterable[tuple[str, str]], allowed: Collection[str]) -> dict[str, str]:
    """The request's parameters as ``{name: value}``: ``400`` for an unknown name, a repeated
    name, an empty or over-long value, or control characters."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            shown = name
            if len(name) > 64 or _CONTROL.search(name):  # never echo a hostile name verbatim
                shown = name[:64].encode("unicode_escape").decode()
            accepted = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown parameter {shown!r}; accepted: {accepted}", field=shown)
        if name in params:
            raise BadRequest(f"parameter {name!r} given more than once", field=name)
        if not value:
            raise BadRequest(f"parameter {name!r} is empty; leave it out for the default", field=name)
        if len(value) > MAX_PARAM_CHARS:
            raise BadRequest(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters", field=name)
        if _CONTROL.search(value):
            raise BadRequest(f"parameter {name!r} contains control characters", field=name)
        params[name] = value
    return params


def parse_choice(field: str, text: str, choices: Sequence[str]) -> str:
    if text not in choices:
        raise BadRequest(f"{field}: {text!r} is not one of {', '.join(choices)}", field=field)
    return text


def parse_int(field: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text, re.ASCII):
        raise BadRequest(f"{field}: {text!r} is not a whole number", field=field)
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{field}: {value} is outside {low}..{high}", field=field)
    return value


def parse_group_by(text: str) -> tuple[str, ...]:
    """A comma-separated subset of :data:`DIMENSIONS`, in canonical order."""
    names = text.split(",")
    for name in names:
        if name not in DIMENSIONS:
            raise BadRequest(f"group_by: {name!r} is not a dimension; use any of {', '.join(DIMENSIONS)} "
                             "separated by commas", field="group_by")
    if len(set(names)) != len(names):
        raise BadRequest("group_by: a dimension is listed twice", field="group_by")
    return tuple(d for d in DIMENSIONS if d in names)


def parse_producer(field: str, text: str) -> str:
    if not is_valid_name(text):
        raise BadRequest(f"{field}: {text!r} is not a producer name (1-64 letters, digits, '.', '_', '-')",
                         field=field)
    return text


def parse_content_type(text: str) -> str:
    """A MIME type as the pipeline stores it (lowercase ``type/subtype``, e.g. ``image/png``)."""
    if not _CONTENT_TYPE.fullmatch(text):
        raise BadRequest(f"content_type: {text[:64]!r} is not a MIME type such as "
                         f"{', '.join(sorted(CONTENT_TYPES))}", field="content_type")
    return text


def parse_image_id(field: str, text: str) -> str:
    """A UUID in its canonical lowercase form (the form image ids are stored in)."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise BadRequest(f"{field}: {text[:64]!r} is not a UUID", field=field) from None
    if str(value) != text.lower() or len(text) != 36:
        raise BadRequest(f"{field}: write the UUID as 8-4-4-4-12 hex digits", field=field)
    return str(value)
