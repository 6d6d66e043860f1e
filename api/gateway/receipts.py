"""Receipts of idempotent uploads, kept in the object store next to the images.

For requests that carry an ``Idempotency-Key``, the receipt is written to the object store, so
a retry gets the very same receipt back and publishes no second event, while the gateway itself
keeps no state. The stream still drops repeated ``image_id``s, which covers the one window this
cannot: a crash after the event was published but before the receipt was written.
"""

from __future__ import annotations

import json
from typing import Any

from imgstream.adapters.s3 import ObjectStore
from imgstream.domain.storage_layout import receipt_key


class ReceiptStore:
    """Receipts of idempotent uploads, kept in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def get(self, producer: str, image_id: str) -> dict[str, Any] | None:
        """The stored receipt, or ``None``. A damaged receipt counts as absent (the upload is
        then simply processed again, and the stream drops the repeated id)."""
        raw = await self.store.get(receipt_key(producer, image_id))
        if raw is None:
            return None
        try:
            receipt = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return receipt if isinstance(receipt, dict) and receipt.get("image_id") == image_id else None

    async def put(self, producer: str, receipt: dict[str, Any]) -> None:
        """Store ``receipt`` (canonical JSON) under the producer's receipt key."""
        body = json.dumps(receipt, separators=(",", ":"), sort_keys=True).encode()
        await self.store.put(receipt_key(producer, receipt["image_id"]), body, size=len(body),
                             content_type="application/json")
