"""Producer (and analyst) names: the one rule, written once.

The same rule is the event schema's ``producer`` pattern (``schemas/image_uploaded.v1.json``,
held equal by a unit test), the token subject, the stats API's path parameter and what the
cleaning stage accepts. Always match with ``fullmatch``: ``$`` alone would let a trailing
newline in.
"""

from __future__ import annotations

import re
from typing import Final, TypeGuard

#: 1-64 characters: a letter or digit, then letters, digits, ``.``, ``_`` or ``-``. Anchored so
#: the same text serves as the OpenAPI/JSON Schema pattern.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_valid_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a string that follows :data:`NAME_PATTERN` exactly."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None
