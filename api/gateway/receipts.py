"""Idempotency records, kept in the object store next to the images: a claim, then the receipt.

An upload that carries an ``Idempotency-Key`` first *claims* the key: a conditional create
(``If-None-Match: *``) of its record, holding the SHA-256 of the body. The store decides
atomically, so of two concurrent requests with one key exactly one owns it; the other reads the
record and answers from it (409 for other bytes, the same receipt for the same bytes). Once the
event is published, the owner overwrites the claim with the receipt, so a retry gets the very
same receipt back and publishes no second event, while the gateway itself keeps no state.

A claim whose owner could not publish (Kafka down, or an acknowledgement lost) is marked
``unpublished``: a retry with the key takes it over at once and publishes under the same
``image_id``. The stream drops repeated ``image_id``s, which covers what this cannot: a crash
after the event was published but before the receipt was written, and an acknowledgement lost
after the record was appended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from imgstream.adapters.s3 import ObjectStore
from imgstream.domain.storage_layout import receipt_key

#: What the record under a key says: a finished upload (``stored``, the receipt), one in flight
#: (``claimed``), one whose event may not exist (``unpublished``), or nothing readable
#: (``unknown``: damaged, or deleted between the create and the read).
State = Literal["stored", "claimed", "unpublished", "unknown"]
_CLAIM_STATES: Final = frozenset({"claimed", "unpublished"})


@dataclass(frozen=True, slots=True)
class Record:
    """The idempotency record of one ``(producer, image_id)``."""

    state: State
    sha256: str | None = None
    receipt: dict[str, Any] | None = None


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _parse(raw: bytes | None, image_id: str) -> Record | None:
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Record("unknown")
    if not isinstance(document, dict) or document.get("image_id") != image_id:
        return Record("unknown")
    sha256 = document.get("sha256") if isinstance(document.get("sha256"), str) else None
    status = document.get("status")
    if status == "stored":
        return Record("stored", sha256, document)
    if status in _CLAIM_STATES:
        return Record(status, sha256)
    return Record("unknown")


class ReceiptStore:
    """Claims and receipts of idempotent uploads, kept in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def claim(self, producer: str, image_id: str, sha256: str, *, claimed_at: str,
                    state: Literal["claimed", "unpublished"] = "claimed") -> Record | None:
        """Claim the key for the body ``sha256``. ``None`` when this call now owns it, else the
        record found there (``unknown`` when it cannot be read)."""
        key = receipt_key(producer, image_id)
        document = {"image_id": image_id, "sha256": sha256, "status": state, "claimed_at": claimed_at}
        if await self.store.create(key, _dump(document), content_type="application/json"):
            return None
        return await self.get(producer, image_id) or Record("unknown")

    async def get(self, producer: str, image_id: str) -> Record | None:
        """The record under the key, or ``None`` when there is none."""
        return _parse(await self.store.get(receipt_key(producer, image_id)), image_id)

    async def mark_unpublished(self, producer: str, image_id: str, sha256: str, *, claimed_at: str) -> None:
        """Overwrite an owned claim: its event may not exist, so a retry takes over at once."""
        body = _dump({"image_id": image_id, "sha256": sha256, "status": "unpublished", "claimed_at": claimed_at})
        await self.store.put(receipt_key(producer, image_id), body, size=len(body), content_type="application/json")

    async def release(self, producer: str, image_id: str) -> None:
        """Drop an owned claim whose upload was refused, so the key may carry other bytes."""
        await self.store.delete(receipt_key(producer, image_id))

    async def put(self, producer: str, receipt: dict[str, Any]) -> None:
        """Store ``receipt`` (canonical JSON) under the producer's key, replacing the claim."""
        body = _dump(receipt)
        await self.store.put(receipt_key(producer, receipt["image_id"]), body, size=len(body),
                             content_type="application/json")
