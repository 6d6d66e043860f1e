"""Deleting an image: who may, and what a deletion does to the image's row. Pure.

A producer deletes its own image (``DELETE /v1/images/{image_id}`` on the gateway). The gateway
decides from the image's row in Cassandra (:func:`decide`): the owner's live image is deleted,
the owner's deleted image is already gone (answered like a success, nothing is published), and
anything else - no row, another producer's row - is "not found", one answer for both so the
endpoint is no oracle of other producers' ids. The pipeline applies the published
``image.deleted`` event with the same rule against the row as it is then, so a replayed or
duplicated event changes nothing more.

A deletion only sets the row's ``status`` to ``deleted``: the upload still happened, so past
upload windows keep their counts; the bytes go when no live image references them (batch GC).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Final, Mapping

#: The ``images.status`` of a deleted image (a final state: nothing changes it again).
STATUS_DELETED: Final = "deleted"


class Decision(str, Enum):
    """What a deletion asked by ``producer`` does to an image row."""

    #: The producer's own image, not yet deleted: delete it.
    DELETE = "delete"
    #: The producer's own image, deleted already: nothing to do (a retry, or a replayed event).
    ALREADY_DELETED = "already_deleted"
    #: No row (unknown, or not yet processed) or another producer's: nothing to do, "not found".
    NOT_FOUND = "not_found"


def decide(producer: str, row: Mapping[str, Any] | None) -> Decision:
    """The :class:`Decision` for ``producer`` deleting the image whose ``images`` row is ``row``
    (``producer`` and ``status`` are read; ``None`` when there is no row)."""
    if row is None or row.get("producer") != producer:
        return Decision.NOT_FOUND
    if row.get("status") == STATUS_DELETED:
        return Decision.ALREADY_DELETED
    return Decision.DELETE
