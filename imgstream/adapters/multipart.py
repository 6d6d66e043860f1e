"""Multipart uploads as a port of their own: what resumable (tus) uploads need from the object store.

A partial upload lives in the store, not on a pod's disk, so any gateway replica can continue an
upload another one started: parts go up one by one (:meth:`PartStore.put_part`), are joined by
:meth:`PartStore.complete`, and an abandoned upload is dropped with :meth:`PartStore.abort`.
:class:`S3PartStore` runs on an :class:`~imgstream.adapters.s3.S3ObjectStore`'s client,
:class:`MemoryPartStore` on the in-memory fake (S3's 5 MiB minimum for every part but the last
is enforced by both, so unit tests see the same refusals as the real server).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Final, Protocol, Sequence

from imgstream.adapters.s3 import MemoryObjectStore, ObjectStore, S3ObjectStore
from imgstream.domain.errors import Unavailable

#: S3's smallest part but the last.
MIN_PART_BYTES: Final = 5 * 1024 * 1024


class PartStore(Protocol):
    """Multipart uploads of one bucket."""

    async def begin(self, key: str, content_type: str) -> str:
        """Start a multipart upload of ``key``; its upload id."""

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Store part ``number`` (1-based); its ETag."""

    async def complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        """Join the parts (number, ETag) into the object ``key``."""

    async def abort(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts (idempotent)."""

    async def open_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload under ``prefix`` not completed or aborted."""

    def read(self, key: str, chunk: int) -> AsyncIterator[bytes]:
        """The object ``key`` in chunks of at most ``chunk`` bytes."""


@dataclass(eq=False)
class S3PartStore:
    """:class:`PartStore` on the client of a started :class:`S3ObjectStore`."""

    store: S3ObjectStore

    async def begin(self, key: str, content_type: str) -> str:
        async with self.store._errors(f"begin multipart {key}"):
            answer = await self.store.client.create_multipart_upload(Bucket=self.store.bucket, Key=key,
                                                                      ContentType=content_type)
        upload_id: str = answer["UploadId"]
        return upload_id

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        async with self.store._errors(f"part {number} of {key}"):
            answer = await self.store.client.upload_part(Bucket=self.store.bucket, Key=key, UploadId=upload_id,
                                                         PartNumber=number, Body=data)
        etag: str = answer["ETag"]
        return etag

    async def complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        async with self.store._errors(f"complete multipart {key}"):
            await self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    async def abort(self, key: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError

        async with self.store._errors(f"abort multipart {key}"):
            try:
                await self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                    raise

    async def open_uploads(self, prefix: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        paginator = self.store.client.get_paginator("list_multipart_uploads")
        async with self.store._errors(f"list multipart uploads {prefix!r}"):
            async for page in paginator.paginate(Bucket=self.store.bucket, Prefix=prefix):
                found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        return found

    async def read(self, key: str, chunk: int) -> AsyncIterator[bytes]:
        answer = await self.store._object_or_none("get", key)
        if answer is None:
            raise Unavailable(f"object store get {key} failed: it is gone", dependency="s3")
        async with self.store._errors(f"read {key}"):
            async with answer["Body"] as stream:
                while True:
                    data: bytes = await stream.read(chunk)
                    if not data:
                        return
                    yield data


@dataclass(eq=False)
class MemoryPartStore:
    """:class:`PartStore` on a :class:`MemoryObjectStore` (unit tests)."""

    store: MemoryObjectStore
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next: int = 0

    async def begin(self, key: str, content_type: str) -> str:
        self.store._check()
        self._next += 1
        upload_id = f"mp-{self._next}"
        self.uploads[upload_id] = {"key": key, "parts": {}, "content_type": content_type}
        return upload_id

    def _upload(self, key: str, upload_id: str) -> dict[str, Any]:
        self.store._check()
        upload = self.uploads.get(upload_id)
        if upload is None or upload["key"] != key:
            raise Unavailable(f"object store part of {key} failed: NoSuchUpload", dependency="s3")
        return upload

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        upload = self._upload(key, upload_id)
        await asyncio.sleep(0)
        upload["parts"][number] = bytes(data)
        return f'"{number}-{len(data)}"'

    async def complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        upload = self._upload(key, upload_id)
        chunks = [upload["parts"][n] for n, _ in parts]
        if any(len(c) < MIN_PART_BYTES for c in chunks[:-1]):
            raise Unavailable(f"object store complete multipart {key} failed: EntityTooSmall", dependency="s3")
        data = b"".join(chunks)
        await self.store.put(key, data, size=len(data), content_type=upload["content_type"])
        del self.uploads[upload_id]

    async def abort(self, key: str, upload_id: str) -> None:
        self.store._check()
        self.uploads.pop(upload_id, None)

    async def open_uploads(self, prefix: str) -> list[tuple[str, str]]:
        self.store._check()
        return [(u["key"], upload_id) for upload_id, u in self.uploads.items() if u["key"].startswith(prefix)]

    async def read(self, key: str, chunk: int) -> AsyncIterator[bytes]:
        data = await self.store.get(key)
        if data is None:
            raise Unavailable(f"object store get {key} failed: it is gone", dependency="s3")
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]


def part_store_for(store: ObjectStore) -> PartStore:
    """The :class:`PartStore` of the same bucket as ``store``."""
    if isinstance(store, S3ObjectStore):
        return S3PartStore(store)
    if isinstance(store, MemoryObjectStore):
        return MemoryPartStore(store)
    raise TypeError(f"no multipart uploads for {type(store).__name__}")
