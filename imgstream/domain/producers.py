"""Producer (and analyst) names: the one rule, written once.

The same rule is the event schema's ``producer`` pattern (``schemas/image_uploaded.v1.json``,
held equal by a unit test), the token subject, the stats API's path parameter and what the
cleaning stage accepts. Always match with ``fullmatch``: ``$`` alone would let a trailing
newline in.

**Synthetic names.** Everything the project's own tests, benchmarks and the event generator
write to a shared stack is attributed to producers named :data:`SYNTHETIC_PREFIX` ``+ ...``
(and read from Kafka topics with the same prefix), so it can never be mistaken for a user's
data: the ``analytics`` views and the stats API leave such producers out, ``imgstream token
create`` refuses to issue tokens for them, and :mod:`imgstream.ops.synthetic` deletes their
rows after a run. The prefix is also written in ``connectors/postgres/20-analytics.sql``
(held equal by a unit test).
"""

from __future__ import annotations

import re
from typing import Final, TypeGuard

#: 1-64 characters: a letter or digit, then letters, digits, ``.``, ``_`` or ``-``. Anchored so
#: the same text serves as the OpenAPI/JSON Schema pattern.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: The reserved prefix of synthetic producers (and of the Kafka topics test pipelines read).
#: A word no one picks by accident for a real producer, ending in ``-`` so that it reads as a
#: namespace (``synthetic-bench1a2b-alice``). Lower case only: matching is case-sensitive, like
#: every producer name.
SYNTHETIC_PREFIX: Final = "synthetic-"
#: Who a dead letter read from a synthetic topic is attributed to when the event names no
#: valid producer (a real topic's go to :data:`imgstream.domain.cleaning.UNKNOWN`).
SYNTHETIC_UNKNOWN: Final = SYNTHETIC_PREFIX + "unknown"


def is_valid_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a string that follows :data:`NAME_PATTERN` exactly."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def is_synthetic(name: str | None) -> bool:
    """Whether a producer (or topic) name is in the reserved synthetic namespace."""
    return name is not None and name.startswith(SYNTHETIC_PREFIX)


def synthetic(name: str) -> str:
    """``name`` in the synthetic namespace (unchanged if it already is): what tests, benchmarks
    and the generator call their producers. Raises ``ValueError`` if the result is no valid name."""
    full = name if is_synthetic(name) else SYNTHETIC_PREFIX + name
    if not is_valid_name(full):
        raise ValueError(f"{full!r} is not a valid producer name (pattern {NAME_PATTERN.pattern})")
    return full


#: The dedup realm of real producers' images. See :func:`dedup_realm`.
USER_REALM: Final = "user"
#: The dedup realm of synthetic producers' images. See :func:`dedup_realm`.
SYNTHETIC_REALM: Final = "synthetic"


def dedup_realm(producer: str | None) -> str:
    """The dedup index a producer's images are decided against: :data:`SYNTHETIC_REALM` for
    synthetic producers, :data:`USER_REALM` for everyone else.

    Duplicates are only ever found within one realm, so a user who uploads a picture that a test
    or benchmark uploaded earlier (say a scikit-image sample) gets ``accepted``, not "duplicate of
    an image you cannot see", and synthetic images never shape a user's statistics."""
    return SYNTHETIC_REALM if is_synthetic(producer) else USER_REALM
