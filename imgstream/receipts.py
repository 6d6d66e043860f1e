"""Upload receipts and the storage layout they point into.

A receipt is what a producer gets back for a stored upload: it ties the object (sha256, storage
key) to its event (image id, topic partition and offset). Objects are content-addressed, so
identical bytes map to one key however many times they are uploaded.

For requests that carry an ``Idempotency-Key``, the receipt is also written to the object store
(:class:`ReceiptStore`, next to the images), so a retry gets the very same receipt back and
publishes no second event, while the gateway itself keeps no state. The stream still drops
repeated ``image_id``s, which covers the one window this cannot: a crash after the event was
published but before the receipt was written.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from imgstream.adapters.s3 import ObjectStore
from imgstream.events import ImageUploaded

#: Images live under ``sha256/ab/cd/<sha256>``: two levels of 256-way fan-out keep any one
#: "directory" small on file-system backed stores, and the key alone proves the content.
IMAGE_PREFIX: Final = "sha256/"
#: Stored receipts of idempotent uploads: ``receipts/<producer>/<image_id>.json``.
RECEIPT_PREFIX: Final = "receipts/"

_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")


def image_key(sha256: str) -> str:
    """The content-addressed storage key of an image with this SHA-256 (hex)."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    return f"{IMAGE_PREFIX}{sha256[:2]}/{sha256[2:4]}/{sha256}"


def sha256_of_key(key: str) -> str | None:
    """The SHA-256 a storage key was derived from, or ``None`` for keys outside the image layout."""
    if not key.startswith(IMAGE_PREFIX):
        return None
    digest = key.rsplit("/", 1)[-1]
    return digest if _SHA256.match(digest) and key == image_key(digest) else None


def receipt_key(producer: str, image_id: str) -> str:
    return f"{RECEIPT_PREFIX}{producer}/{image_id}.json"


def build_receipt(event: ImageUploaded, *, partition: int | None = None, offset: int | None = None) -> dict[str, Any]:
    """The receipt for a stored upload: the brief's fields plus where its event landed."""
    receipt: dict[str, Any] = {
        "image_id": event.image_id,
        "sha256": event.sha256,
        "size": event.size,
        "content_type": event.content_type,
        "width": event.width,
        "height": event.height,
        "storage_key": event.storage_key,
        "status": "stored",
        "received_at": event.received_at,
        "producer": event.producer,
        "phash": event.phash,
    }
    if partition is not None:
        receipt["partition"] = partition
        receipt["offset"] = offset
    return receipt


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
        body = json.dumps(receipt, separators=(",", ":"), sort_keys=True).encode()
        await self.store.put(receipt_key(producer, receipt["image_id"]), body, size=len(body),
                             content_type="application/json")
