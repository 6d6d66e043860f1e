"""Upload receipts: what a producer gets back for a stored upload.

A receipt ties the object (sha256, storage key) to its event (image id, topic partition and
offset). Where receipts and images are stored is :mod:`imgstream.domain.storage_layout`.
"""

from __future__ import annotations

from typing import Any

from imgstream.domain.events import ImageUploaded


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
