"""Idempotency keys: the client's (a header, or tus metadata), or one the gateway makes.

Every upload gets a key, and its ``image_id`` derives from it
(:func:`imgstream.domain.events.image_id_for`): the client's key makes retries safe by design, and
a server-made one, returned with every 503, lets a client retry an upload that may have been
counted after all (a lost Kafka acknowledgement) without counting it twice.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from imgstream.domain.errors import BadRequest

#: The request header of a client's key, and the response header of a 503 that says which key to
#: retry with.
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
#: 1-200 visible ASCII characters (a UUID is the usual choice). 200, not the schema's 255, leaves
#: room for the "#<part>" suffix of multipart parts.
_KEY: Final = re.compile(r"^[\x21-\x7e]{1,200}$")


def checked_key(value: str | None, field: str = IDEMPOTENCY_KEY) -> str | None:
    """``value`` when it is a valid key, ``None`` when absent; :class:`BadRequest` naming
    ``field`` otherwise."""
    if value is None:
        return None
    if not _KEY.match(value):
        raise BadRequest(f"{field} must be 1-200 visible ASCII characters", field=field)
    return value


def server_key() -> str:
    """A key made by the gateway for an upload that came without one."""
    return f"gw-{uuid.uuid4().hex}"
