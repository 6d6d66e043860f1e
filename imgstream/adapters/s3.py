"""Object storage: the :class:`ObjectStore` port, its S3 adapter (aiobotocore) and an in-memory fake.

The adapter is thin on purpose: key layout lives in :mod:`imgstream.domain.storage_layout`, checks in
:mod:`imgstream.domain.imaging`. Every failure to reach the store surfaces as
:class:`imgstream.domain.errors.Unavailable` so callers map it to one HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, AsyncIterator, Final, Mapping, Protocol, runtime_checkable
from urllib.parse import urlsplit

from imgstream.adapters import sigv4
from imgstream.config import S3Config
from imgstream.domain.errors import Unavailable

Body = bytes | IO[bytes]

#: Bodies from this size up go through a multipart upload: S3 accepts single PUTs up to 5 GB, but
#: a multipart upload bounds what is held in memory at once to one part and lets a failed part be
#: retried alone. 8 MiB is the AWS CLI's default threshold and part size.
MULTIPART_THRESHOLD: Final = 8 * 1024 * 1024
#: Part size (S3's minimum is 5 MiB for every part but the last).
MULTIPART_PART_SIZE: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Metadata of one stored object."""

    key: str
    size: int
    etag: str = ""
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """What the services need from an object store. ``put`` returns once the object is durable."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless the store (and its bucket) answers."""

    async def ensure_bucket(self) -> None: ...

    async def put(self, key: str, body: Body, *, size: int, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, sha256: str | None = None) -> None: ...

    async def create(self, key: str, body: bytes, *, content_type: str = "application/octet-stream") -> bool:
        """Store ``body`` under ``key`` only if no object exists there (atomically: of concurrent
        callers exactly one wins). Returns whether this call created it."""

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]: ...


def _read_all(body: Body) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    body.seek(0)
    return body.read()


class MemoryObjectStore:
    """In-memory :class:`ObjectStore` for unit tests, with failure injection.

    Set ``unavailable`` to make every call fail as if the store were down, or ``fail_puts`` to a
    number of upcoming ``put`` calls that should fail.
    """

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self.unavailable = False
        self.fail_puts = 0
        self.put_calls = 0
        self.started = False
        self.closed = False

    def _check(self) -> None:
        if self.unavailable:
            raise Unavailable("object store unavailable (injected)")

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def ping(self) -> None:
        self._check()

    async def ensure_bucket(self) -> None:
        self._check()

    async def put(self, key: str, body: Body, *, size: int, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, sha256: str | None = None) -> None:
        self._check()
        self.put_calls += 1
        if self.fail_puts:
            self.fail_puts -= 1
            raise Unavailable("object store put failed (injected)")
        data = _read_all(body)
        if len(data) != size:
            raise ValueError(f"body is {len(data)} bytes, declared {size}")
        await asyncio.sleep(0)  # a real store yields here; keep interleavings honest
        self.objects[key] = (data, ObjectInfo(key, len(data), etag=f'"{len(data)}"', content_type=content_type,
                                              metadata=dict(metadata or {}),
                                              last_modified=datetime.now(timezone.utc)))

    async def create(self, key: str, body: bytes, *, content_type: str = "application/octet-stream") -> bool:
        self._check()
        await asyncio.sleep(0)  # a real store yields before it decides; keep interleavings honest
        if key in self.objects:
            return False
        self.objects[key] = (bytes(body), ObjectInfo(key, len(body), etag=f'"{len(body)}"', content_type=content_type,
                                                     last_modified=datetime.now(timezone.utc)))
        return True

    async def head(self, key: str) -> ObjectInfo | None:
        self._check()
        entry = self.objects.get(key)
        return entry[1] if entry else None

    async def get(self, key: str) -> bytes | None:
        self._check()
        entry = self.objects.get(key)
        return entry[0] if entry else None

    async def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._check()
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self.objects[key][1]


def _read_part(body: IO[bytes], size: int) -> tuple[bytes, str]:
    chunk = body.read(size)
    return chunk, base64.b64encode(hashlib.md5(chunk).digest()).decode()


def _not_found(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


#: Attempts of a direct PUT on connection errors and 5xx (botocore's standard retry mode: 3).
_DIRECT_ATTEMPTS: Final = 3


def _xml_field(answer: bytes, name: str) -> str:
    """``<name>...</name>`` of an S3 error document (no XML parser for two fields)."""
    start = answer.find(f"<{name}>".encode())
    end = answer.find(f"</{name}>".encode(), start)
    return answer[start + len(name) + 2:end].decode(errors="replace") if start >= 0 and end > start else ""


#: Answers to a conditional create that mean "another writer has (or is creating) this key":
#: 412 when it exists, and AWS's 409 when a concurrent conditional write to the key is in flight.
_LOST_RACE: Final = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


@dataclass(eq=False, repr=False)
class S3ObjectStore:
    """:class:`ObjectStore` on any S3-compatible server, with aiobotocore.

    ``start()`` opens one pooled client for the life of the process. Options that matter:

    * ``request_checksum_calculation`` / ``response_checksum_validation`` = ``when_required``:
      botocore >= 1.36 otherwise adds CRC checksums that s3proxy (and other S3 look-alikes) reject.
    * path-style addressing: local servers have no wildcard DNS for virtual-hosted buckets.
    * ``payload_signing``: over plain HTTP botocore SHA-256-hashes every body to sign it. Callers
      that already know the body's SHA-256 can turn that off and pass ``sha256=`` to ``put``,
      which then travels as ``x-amz-checksum-sha256`` for the server to verify.
    """

    config: S3Config
    _: KW_ONLY
    max_pool_connections: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    payload_signing: bool = True
    send_sha256_checksum: bool = False
    multipart_threshold: int = MULTIPART_THRESHOLD
    part_size: int = MULTIPART_PART_SIZE
    #: Attempts per request (botocore's standard retry mode); 1 for a health check that must
    #: answer at once.
    max_attempts: int = 3
    _stack: contextlib.AsyncExitStack | None = field(default=None, init=False)
    _client: Any = field(default=None, init=False)
    _http: Any = field(default=None, init=False)

    @property
    def bucket(self) -> str:
        """The configured bucket every call addresses."""
        return self.config.bucket

    def __repr__(self) -> str:
        return f"S3ObjectStore(endpoint={self.config.endpoint_url!r}, bucket={self.bucket!r})"

    @property
    def client(self) -> Any:
        """The underlying aiobotocore client (for callers that need a raw S3 call)."""
        if self._client is None:
            raise RuntimeError("S3ObjectStore.start() was not awaited")
        return self._client

    async def start(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        if self._client is not None:
            return
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path", "payload_signing_enabled": self.payload_signing},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=self.max_pool_connections,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                region_name=self.config.region,
                aws_access_key_id=str(self.config.access_key),
                aws_secret_access_key=str(self.config.secret_key),
                config=config,
            )
        )
        self._stack = stack
        if not self.payload_signing:
            import aiohttp

            # The direct PUT path (see _direct_put): its own keep-alive pool to the same endpoint.
            self._http = await stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_pool_connections),
                timeout=aiohttp.ClientTimeout(sock_connect=self.connect_timeout, sock_read=self.read_timeout),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Content-Type")))

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None
        self._http = None

    @contextlib.asynccontextmanager
    async def _errors(self, action: str) -> AsyncIterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise Unavailable(f"object store {action} failed: {error.get('Code')} {error.get('Message', '')}".strip(),
                              dependency="s3") from exc
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"object store {action} failed: {exc}", dependency="s3") from exc

    async def ping(self) -> None:
        async with self._errors("health check"):
            await self.client.head_bucket(Bucket=self.bucket)

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (idempotent)."""
        from botocore.exceptions import ClientError

        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _not_found(exc):
                raise Unavailable(f"object store bucket check failed: {exc}", dependency="s3") from exc
        async with self._errors("create bucket"):
            try:
                await self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                       "BucketAlreadyExists"):
                    raise

    async def put(self, key: str, body: Body, *, size: int, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, sha256: str | None = None) -> None:
        """Store ``body`` (bytes, or a seekable binary file read from its start) under ``key``.

        Single PUT below the multipart threshold, multipart upload above it. Returns once the
        server acknowledged the whole object.
        """
        if self._http is not None and isinstance(body, bytes) and size < self.multipart_threshold:
            headers = {"Content-Type": content_type}
            headers.update((f"x-amz-meta-{k}", v) for k, v in (metadata or {}).items())
            if sha256 and self.send_sha256_checksum:
                headers["x-amz-checksum-sha256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
            await self._direct_put(key, body, headers)
            return
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": dict(metadata or {})}
        if size >= self.multipart_threshold and not isinstance(body, (bytes, bytearray, memoryview)):
            await self._put_multipart(key, body, extra)
            return
        if sha256 and self.send_sha256_checksum:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        if not isinstance(body, (bytes, bytearray, memoryview)):
            body.seek(0)
        async with self._errors(f"put {key}"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size, **extra)

    async def create(self, key: str, body: bytes, *, content_type: str = "application/octet-stream") -> bool:
        """A conditional PUT (``If-None-Match: *``): S3 and s3proxy decide atomically on the
        server, so of concurrent creators of one key exactly one gets ``True``."""
        from botocore.exceptions import ClientError

        if self._http is not None:
            status = await self._direct_put(key, body, {"Content-Type": content_type, "If-None-Match": "*"},
                                            lost_race=True)
            return status < 300
        async with self._errors(f"create {key}"):
            try:
                await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=len(body),
                                             ContentType=content_type, IfNoneMatch="*")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _LOST_RACE:
                    return False
                raise
        return True

    async def _direct_put(self, key: str, body: bytes, headers: dict[str, str], *, lost_race: bool = False) -> int:
        """PUT ``body`` with aiohttp and our own SigV4 (:mod:`imgstream.adapters.sigv4`): about a
        third of botocore's CPU per call, and the hot path of every upload. Unsigned payload: the
        caller's ``x-amz-checksum-sha256`` (when given) is what the server verifies. Connection
        errors and 5xx are retried like botocore's standard mode (3 attempts). Returns the status;
        with ``lost_race``, a 412/409 (a conditional create that lost) is returned, not raised."""
        import aiohttp
        from yarl import URL

        url = urlsplit(self.config.endpoint_url)
        path = f"/{self.bucket}/{key}"
        target = f"{self.config.endpoint_url.rstrip('/')}{sigv4.canonical_uri(path)}"
        for attempt in range(1, _DIRECT_ATTEMPTS + 1):
            signed = sigv4.sign("PUT", url.netloc, path, headers, access_key=str(self.config.access_key),
                                secret_key=str(self.config.secret_key), region=self.config.region,
                                now=datetime.now(timezone.utc))
            try:
                async with self._http.put(URL(target, encoded=True), data=body, headers=signed) as response:
                    answer = await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                if attempt == _DIRECT_ATTEMPTS:
                    raise Unavailable(f"object store put {key} failed: {exc!r}", dependency="s3") from exc
                continue
            if status < 300 or (lost_race and status in (409, 412)):
                return status
            if status < 500 or attempt == _DIRECT_ATTEMPTS:
                code = _xml_field(answer, "Code")
                raise Unavailable(f"object store put {key} failed: {status} {code} {_xml_field(answer, 'Message')}",
                                  dependency="s3")
        raise AssertionError("unreachable")

    async def _put_multipart(self, key: str, body: IO[bytes], extra: Mapping[str, Any]) -> None:
        async with self._errors(f"multipart put {key}"):
            created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
            upload_id = created["UploadId"]
            try:
                parts = []
                body.seek(0)
                number = 1
                while True:
                    # One part in memory at a time, read (and MD5-summed, so the server verifies
                    # every part) off the event loop.
                    chunk, md5 = await asyncio.to_thread(_read_part, body, self.part_size)
                    if not chunk:
                        break
                    answer = await self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                           PartNumber=number, Body=chunk, ContentMD5=md5)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    number += 1
                await self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                            MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise

    async def _object_or_none(self, action: str, key: str) -> Any:
        """``head_object``/``get_object`` of ``key``: the answer, or ``None`` when it is absent."""
        from botocore.exceptions import ClientError

        call = self.client.head_object if action == "head" else self.client.get_object
        async with self._errors(f"{action} {key}"):
            try:
                return await call(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise

    async def head(self, key: str) -> ObjectInfo | None:
        answer = await self._object_or_none("head", key)
        if answer is None:
            return None
        return ObjectInfo(key=key, size=int(answer.get("ContentLength", 0)), etag=answer.get("ETag", ""),
                          content_type=answer.get("ContentType", ""), metadata=answer.get("Metadata", {}),
                          last_modified=answer.get("LastModified"))

    async def get(self, key: str) -> bytes | None:
        answer = await self._object_or_none("get", key)
        if answer is None:
            return None
        async with self._errors(f"get {key}"):
            async with answer["Body"] as stream:
                data: bytes = await stream.read()
        return data

    async def delete(self, key: str) -> None:
        async with self._errors(f"delete {key}"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        async with self._errors(f"list {prefix!r}"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"], size=int(item.get("Size", 0)), etag=item.get("ETag", ""),
                                     last_modified=item.get("LastModified"))
