"""Every object key the platform writes, as pure functions.

One module answers "where does this live?" for the gateway (originals, idempotency receipts),
the batch service (derivatives, quarantine) and the tools that read the store (reconcile, GC).
Keys never depend on a producer's file name or on the uploading process: originals are
content-addressed, so the key alone proves the content and identical bytes share one object.

Layouts are versioned. ``v1`` is the layout every gateway writes today; the batch
``reorganize`` job moves objects between layouts, so a new scheme is added here as a new
:class:`Layout`, never by changing an existing one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: Images live under ``sha256/ab/cd/<sha256>``: two levels of 256-way fan-out keep any one
#: "directory" small on file-system backed stores, and the key alone proves the content.
IMAGE_PREFIX: Final = "sha256/"
#: Stored receipts of idempotent uploads: ``receipts/<producer>/<image_id>.json``.
RECEIPT_PREFIX: Final = "receipts/"
#: Derivatives (thumbnails, sizes, conversions) belong to the content hash, not to an upload:
#: ``derived/<ladder version>/<preset>/<ab>/<sha256>.<ext>``.
DERIVATIVE_PREFIX: Final = "derived/"
#: Objects the garbage collector set aside; deleted only after a re-check of references.
QUARANTINE_PREFIX: Final = "quarantine/"

_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_SEGMENT: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

#: File extensions of the formats derivatives are written in.
FORMAT_EXTENSIONS: Final[dict[str, str]] = {"jpeg": "jpg", "webp": "webp", "avif": "avif", "png": "png"}


def _check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    return sha256


def _check_segment(kind: str, value: str) -> str:
    if not _SEGMENT.match(value):
        raise ValueError(f"{kind} must match {_SEGMENT.pattern}: {value!r}")
    return value


@dataclass(frozen=True)
class Layout:
    """A scheme for the keys of original images: ``<prefix><fan-out>/<sha256>``.

    ``fanout`` is how many two-hex-digit levels sit between the prefix and the digest.
    """

    name: str
    prefix: str
    fanout: int

    def key(self, sha256: str) -> str:
        """The key of the original with this SHA-256 in this layout."""
        _check_sha256(sha256)
        levels = "".join(f"{sha256[2 * i:2 * i + 2]}/" for i in range(self.fanout))
        return f"{self.prefix}{levels}{sha256}"

    def sha256_of(self, key: str) -> str | None:
        """The SHA-256 a key of this layout was derived from, or ``None`` for any other key."""
        if not key.startswith(self.prefix):
            return None
        digest = key.rsplit("/", 1)[-1]
        return digest if _SHA256.match(digest) and key == self.key(digest) else None


#: The layout every gateway writes.
LAYOUT_V1: Final = Layout(name="v1", prefix=IMAGE_PREFIX, fanout=2)
#: A flatter scheme with one fan-out level under a versioned prefix (a target for ``reorganize``).
LAYOUT_V2: Final = Layout(name="v2", prefix="originals/v2/", fanout=1)
LAYOUTS: Final[dict[str, Layout]] = {layout.name: layout for layout in (LAYOUT_V1, LAYOUT_V2)}


def image_key(sha256: str) -> str:
    """The content-addressed storage key of an image with this SHA-256 (hex), current layout."""
    return LAYOUT_V1.key(sha256)


def sha256_of_key(key: str) -> str | None:
    """The SHA-256 an original's key (in any known layout) was derived from, else ``None``."""
    for layout in LAYOUTS.values():
        digest = layout.sha256_of(key)
        if digest is not None:
            return digest
    return None


def receipt_key(producer: str, image_id: str) -> str:
    """Where the receipt of an idempotent upload is kept."""
    return f"{RECEIPT_PREFIX}{producer}/{image_id}.json"


def owned_content_key(producer: str, sha256: str) -> str:
    """The receipt of the last resumable upload of ``sha256`` by ``producer``: lets that producer
    (and only that producer) skip re-sending content it already stored."""
    _check_sha256(sha256)
    return f"{RECEIPT_PREFIX}{producer}/sha256/{sha256}.json"


#: Resumable (tus) uploads in progress: ``uploads/<upload id>/`` holds the state (``info.json``),
#: the bytes short of a whole part (``tail-<offset>``), the joined parts (``data``) and a lock.
UPLOAD_PREFIX: Final = "uploads/"


def upload_key(upload_id: str, name: str) -> str:
    """The object ``name`` (``info.json``, ``lock``, ``data``, ``tail-<offset>``) of an upload."""
    return f"{UPLOAD_PREFIX}{upload_id}/{name}"


def derivative_key(sha256: str, ladder: str, preset: str, fmt: str) -> str:
    """The key of one derivative of the content ``sha256`` for ``preset`` of ladder ``ladder``
    in format ``fmt`` (one of :data:`FORMAT_EXTENSIONS`)."""
    _check_sha256(sha256)
    _check_segment("ladder", ladder)
    _check_segment("preset", preset)
    try:
        ext = FORMAT_EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown derivative format {fmt!r}") from None
    return f"{DERIVATIVE_PREFIX}{ladder}/{preset}/{sha256[:2]}/{sha256}.{ext}"


def quarantine_key(key: str) -> str:
    """Where the garbage collector parks ``key`` before deleting it."""
    if key.startswith(QUARANTINE_PREFIX):
        raise ValueError(f"already quarantined: {key!r}")
    return f"{QUARANTINE_PREFIX}{key}"


def unquarantine_key(key: str) -> str:
    """The original key of a quarantined object."""
    if not key.startswith(QUARANTINE_PREFIX):
        raise ValueError(f"not a quarantine key: {key!r}")
    return key[len(QUARANTINE_PREFIX):]
