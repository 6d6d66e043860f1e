"""Resumable uploads: the tus 1.0 protocol under ``/v1/uploads/`` (core, creation,
creation-with-upload, checksum, termination, expiration).

Same auth, rate limit, admission, size limit, sniffing, bomb checks, receipts and events as
``POST /v1/images``: the finished body goes through the very same :class:`Ingestor`. The partial
upload lives in the object store, so any replica continues an upload another one started:

* ``uploads/<id>/info.json``: the :class:`~imgstream.domain.tus.UploadState` (offset, parts, expiry);
* an S3 multipart upload of ``uploads/<id>/data`` holding the bytes in whole 5 MiB parts;
* ``uploads/<id>/tail-<offset>``: the bytes short of a whole part, until the next PATCH;
* ``uploads/<id>/lock``: a conditional create held while a PATCH runs (one writer at a time).

The final PATCH joins the parts, streams the object back through the same checks as a POST body
(SHA-256, sniffing, markup scan, then the header probe, pixel limit and decode), stores it under its
content address, publishes and answers the receipt (200 with JSON; other PATCHes answer 204).
Every upload has an idempotency key (``idempotency_key`` metadata, else ``tus-<id>``) claimed like
a POST's, so finishing twice, or on two replicas, yields one event and one receipt.

``Upload-Metadata`` ``sha256`` (hex) of content the same producer already stored by a resumable
upload completes the upload at creation, without the bytes: a new event from that producer's own
earlier receipt. Other producers' content is never found this way (the index is per producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable, Final

import orjson
from aiohttp import hdrs, web

from api.gateway.ingest import Spool, Stored, receive
from api.gateway.keys import checked_key
from imgstream.adapters.multipart import PartStore
from imgstream.domain import tus
from imgstream.domain.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ImgstreamError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from imgstream.domain.events import image_id_for
from imgstream.domain.imaging import SNIFF_BYTES, require_supported
from imgstream.domain.storage_layout import owned_content_key, upload_key
from imgstream.domain.timefmt import format_time, parse_time
from imgstream.domain.tokens import Principal

log = logging.getLogger("imgstream.gateway.tus")

ROUTE: Final = "/v1/uploads/"
#: A lock older than this belongs to a PATCH that died with its process: a PATCH lasts at most
#: the request timeout (120 s); the margin covers the part uploads after its last byte.
LOCK_STALE: Final = timedelta(seconds=180)
#: Read size of a PATCH body and of the joined object when it is checked.
READ_BYTES: Final = 256 * 1024


def _http_date(ts: datetime) -> str:
    return ts.strftime("%a, %d %b %Y %H:%M:%S GMT")


class TusUploads:
    """The ``/v1/uploads/`` handlers of one gateway (see the module docstring)."""

    def __init__(self, gateway: Any, parts: PartStore, *, expiry: timedelta,
                 clock: Callable[[], datetime], part_bytes: int = tus.PART_BYTES) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.parts = parts
        self.expiry = expiry
        self.clock = clock
        self.part_bytes = part_bytes

    # -- routes -------------------------------------------------------------------------------------

    def add_routes(self, app: web.Application, expect: Callable[..., Any]) -> None:
        app.router.add_route("OPTIONS", ROUTE, self.options)
        app.router.add_post(ROUTE, self.create, expect_handler=expect)
        app.router.add_route("HEAD", ROUTE + "{upload_id}", self.head)
        app.router.add_get(ROUTE + "{upload_id}", self.status, allow_head=False)
        app.router.add_patch(ROUTE + "{upload_id}", self.patch, expect_handler=expect)
        app.router.add_delete(ROUTE + "{upload_id}", self.terminate)

    def headers(self, state: tus.UploadState | None = None, **extra: str) -> dict[str, str]:
        out = {"Tus-Resumable": tus.TUS_VERSION, hdrs.CACHE_CONTROL: "no-store", **extra}
        if state is not None:
            out["Upload-Offset"] = str(state.offset)
            out["Upload-Expires"] = _http_date(parse_time(state.expires_at))
        return out

    @staticmethod
    def _version_refused(request: web.Request) -> web.Response | None:
        if request.headers.get("Tus-Resumable") != tus.TUS_VERSION:
            return web.Response(status=412, headers={"Tus-Version": tus.TUS_VERSION,
                                                     "Tus-Resumable": tus.TUS_VERSION})
        return None

    async def options(self, request: web.Request) -> web.StreamResponse:
        """Capabilities (no auth): version, extensions, the size limit, checksum algorithms."""
        return web.Response(status=204, headers={
            "Tus-Resumable": tus.TUS_VERSION, "Tus-Version": tus.TUS_VERSION,
            "Tus-Extension": ",".join(tus.EXTENSIONS), "Tus-Max-Size": str(self.gateway.config.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS)})

    # -- creation -----------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/uploads/``: a new upload (with its first bytes, if the body has any)."""
        refused = self._version_refused(request)
        if refused is not None:
            return refused
        async with self.gateway.admitted():
            principal = self.gateway.authenticate(request)
            if "Upload-Defer-Length" in request.headers:
                raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length", field="Upload-Length")
            length = self._length(request.headers.get("Upload-Length"))
            metadata = tus.parse_metadata(request.headers.get("Upload-Metadata"))
            key = checked_key(metadata.get("idempotency_key"), "Upload-Metadata idempotency_key")
            declared = tus.declared_sha256(metadata)
            self.gateway.charge(principal.name)
            upload_id = uuid.uuid4().hex
            key = key or f"tus-{upload_id}"
            now = self.clock()
            state = tus.UploadState(
                upload_id=upload_id, producer=principal.name, length=length,
                image_id=image_id_for(principal.name, key), idempotency_key=key, created_at=format_time(now),
                expires_at=format_time(now + self.expiry), metadata=metadata)
            if declared is not None:
                known = await self._owned(principal.name, declared, length)
                if known is not None:
                    state = await self._finish_known(state, known)
                    await self._save(state)
                    return self._answer(request, state, 201)
            await self._save(state)
            if request.body_exists and request.content_type == tus.OFFSET_OCTET_STREAM:
                async with self._locked(upload_id):
                    state = await self._append(request, state, principal)
            else:
                await self.gateway.continue_if_expected(request)
            return self._answer(request, state, 201)

    def _length(self, header: str | None) -> int:
        if header is None or not header.isdigit():
            raise BadRequest("Upload-Length must be given as a whole number of bytes", field="Upload-Length")
        length = int(header)
        if length < 1:
            raise BadRequest("Upload-Length must be at least 1: an image has bytes", field="Upload-Length")
        limit = self.gateway.config.max_upload_bytes
        if length > limit:
            raise PayloadTooLarge(f"Upload-Length {length} exceeds the limit of {limit} bytes", limit=limit)
        return length

    def _answer(self, request: web.Request, state: tus.UploadState, status: int) -> web.Response:
        headers = self.headers(state)
        if status == 201:
            headers[hdrs.LOCATION] = f"{ROUTE}{state.upload_id}"
        if state.receipt is not None:
            # The upload is complete: its receipt, as a POST /v1/images would answer it.
            return web.Response(status=201 if status == 201 else 200, body=orjson.dumps(state.receipt),
                                content_type="application/json", headers=headers)
        return web.Response(status=status, headers=headers)

    # -- HEAD / GET / DELETE ------------------------------------------------------------------------

    async def head(self, request: web.Request) -> web.StreamResponse:
        refused = self._version_refused(request)
        if refused is not None:
            return refused
        state = await self._own_state(request)
        headers = self.headers(state, **{"Upload-Length": str(state.length)})
        if state.metadata:
            headers["Upload-Metadata"] = tus.encode_metadata(state.metadata)
        return web.Response(status=200, headers=headers)

    async def status(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/uploads/{id}`` (not tus): the upload's offset and, once complete, its receipt,
        for a client that lost the answer to its final PATCH."""
        state = await self._own_state(request)
        body = {"upload_id": state.upload_id, "offset": state.offset, "length": state.length,
                "expires_at": state.expires_at, "receipt": state.receipt}
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self.headers(state))

    async def terminate(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/uploads/{id}`` (termination): the parts are aborted, the upload is gone."""
        refused = self._version_refused(request)
        if refused is not None:
            return refused
        state = await self._own_state(request)
        async with self._locked(state.upload_id):
            await self.drop(state)
        return web.Response(status=204, headers=self.headers())

    # -- PATCH --------------------------------------------------------------------------------------

    async def patch(self, request: web.Request) -> web.StreamResponse:
        refused = self._version_refused(request)
        if refused is not None:
            return refused
        async with self.gateway.admitted():
            principal = self.gateway.authenticate(request)
            if request.content_type != tus.OFFSET_OCTET_STREAM:
                raise UnsupportedMediaType(f"PATCH bodies must be {tus.OFFSET_OCTET_STREAM}",
                                           detected=request.content_type)
            offset_header = request.headers.get("Upload-Offset", "")
            if not offset_header.isdigit():
                raise BadRequest("Upload-Offset must be given as a whole number of bytes", field="Upload-Offset")
            state = await self._own_state(request)
            async with self._locked(state.upload_id):
                state = await self._own_state(request)  # as of now, under the lock
                if state.complete and int(offset_header) == state.length:
                    return self._answer(request, state, 200)  # a repeated final PATCH: the same receipt
                if int(offset_header) != state.offset:
                    raise Conflict(f"Upload-Offset {offset_header} does not match the upload's offset {state.offset}; "
                                   "HEAD the upload and continue from its offset", reason="offset_mismatch")
                state = await self._append(request, state, principal)
            return self._answer(request, state, 200 if state.complete else 204)

    async def _append(self, request: web.Request, state: tus.UploadState, principal: Principal) -> tus.UploadState:
        """Read the body into whole parts (plus a new tail), commit the new offset, and finish the
        upload when the last byte arrived. With ``Upload-Checksum`` nothing is committed unless
        the whole body matches it; without, a body broken off keeps what arrived."""
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
        left = state.length - state.offset
        if request.content_length is not None and request.content_length > left:
            raise PayloadTooLarge(f"the body is {request.content_length} bytes but only {left} remain of "
                                  f"Upload-Length {state.length}", limit=state.length)
        await self.gateway.continue_if_expected(request)
        digest = hashlib.new(checksum[0]) if checksum else None
        buffer = bytearray(await self._tail(state))
        new_parts = list(state.parts)
        received = 0
        broken: ImgstreamError | None = None
        try:
            while True:
                chunk = await self._read(request)
                if not chunk:
                    break
                received += len(chunk)
                if received > left:
                    raise PayloadTooLarge(f"the body goes past Upload-Length {state.length}", limit=state.length)
                if state.offset == 0 and received == len(chunk) and len(chunk) >= SNIFF_BYTES:
                    await self._sniff(state, chunk, principal)  # 415 from the first bytes: nothing is kept
                if digest is not None:
                    digest.update(chunk)
                buffer += chunk
                while len(buffer) >= self.part_bytes:
                    state = await self._ensure_multipart(state)
                    new_parts.append(await self._put_part(state, len(new_parts) + 1, bytes(buffer[: self.part_bytes])))
                    del buffer[: self.part_bytes]
        except BadRequest as exc:
            if exc.details.get("reason") != "incomplete_body" or checksum is not None:
                raise
            broken = exc  # keep what arrived (tus: the server should store the bytes it received)
        if checksum is not None and digest is not None and digest.digest() != checksum[1]:
            raise ChecksumMismatch(f"the body does not match its Upload-Checksum ({checksum[0]})")
        final = state.stored + sum(p.size for p in new_parts[len(state.parts):]) + len(buffer) == state.length
        if final and buffer:
            state = await self._ensure_multipart(state)
            new_parts.append(await self._put_part(state, len(new_parts) + 1, bytes(buffer)))
            buffer.clear()
        old_tail = upload_key(state.upload_id, f"tail-{state.offset}") if state.tail else None
        committed = replace(state, parts=tuple(new_parts), tail=len(buffer)).touched(self.clock(), self.expiry)
        if buffer:
            await self.store.put(upload_key(state.upload_id, f"tail-{committed.offset}"), bytes(buffer),
                                 size=len(buffer), content_type="application/octet-stream")
        await self._save(committed)
        if old_tail is not None and old_tail != upload_key(state.upload_id, f"tail-{committed.offset}"):
            await self._quietly(self.store.delete(old_tail))
        if broken is not None:
            raise broken
        if final:
            return await self._finish(committed, principal)
        return committed

    async def _sniff(self, state: tus.UploadState, first: bytes, principal: Principal) -> None:
        try:
            require_supported(first[:SNIFF_BYTES])
        except UnsupportedMediaType as exc:
            self.gateway.rejected(exc, principal, None, state.metadata.get("filename"))
            await self.drop(state)  # no upload left to continue: its bytes can never be an image
            raise

    async def _read(self, request: web.Request) -> bytes:
        reader = self.gateway._reader(lambda: request.content.read(READ_BYTES))
        try:
            async with asyncio.timeout(self.gateway.config.idle_read_timeout):
                chunk: bytes = await reader()
        except TimeoutError:
            raise BadRequest(f"client sent nothing for {self.gateway.config.idle_read_timeout:g} s",
                             reason="incomplete_body") from None
        return chunk

    async def _tail(self, state: tus.UploadState) -> bytes:
        if not state.tail:
            return b""
        data = await self.store.get(upload_key(state.upload_id, f"tail-{state.offset}"))
        if data is None or len(data) != state.tail:
            raise Unavailable(f"tail of upload {state.upload_id} missing or short", reason="upload_state")
        return data

    async def _ensure_multipart(self, state: tus.UploadState) -> tus.UploadState:
        if state.multipart_id is not None:
            return state
        multipart_id = await self.parts.begin(upload_key(state.upload_id, "data"), "application/octet-stream")
        state = replace(state, multipart_id=multipart_id)
        await self._save(state)  # recorded at once, so an expiry can abort it even if this PATCH dies
        return state

    async def _put_part(self, state: tus.UploadState, number: int, data: bytes) -> tus.Part:
        assert state.multipart_id is not None
        etag = await self.parts.put_part(upload_key(state.upload_id, "data"), state.multipart_id, number, data)
        return tus.Part(number=number, etag=etag, size=len(data))

    # -- completion ---------------------------------------------------------------------------------

    async def _finish(self, state: tus.UploadState, principal: Principal) -> tus.UploadState:
        """Join the parts, check the whole body like a POST's, store, publish, receipt."""
        data_key = upload_key(state.upload_id, "data")
        assert state.multipart_id is not None
        if await self.store.head(data_key) is None:  # joined already by an attempt that failed later
            await self.parts.complete(data_key, state.multipart_id, [(p.number, p.etag) for p in state.parts])
        config = self.gateway.config
        spool = Spool(config.max_upload_bytes, config.spool_memory_bytes, config.spool_dir)
        try:
            stream = self.parts.read(data_key, READ_BYTES)
            summary = await receive(spool, _reader(stream), idle_timeout=config.idle_read_timeout,
                                    deadline=time.monotonic() + config.request_timeout)
            declared = tus.declared_sha256(state.metadata)
            if declared is not None and declared != summary.sha256:
                raise BadRequest("the bytes do not match the sha256 declared in Upload-Metadata",
                                 field="Upload-Metadata")
            outcome = await self.gateway.ingestor.ingest(spool, summary, producer=state.producer,
                                                         image_id=state.image_id,
                                                         idempotency_key=state.idempotency_key)
        except Unavailable:
            raise  # the joined object stays: the client's retry of the final PATCH finishes it
        except ImgstreamError as exc:
            self.gateway.rejected(exc, principal, None, state.metadata.get("filename"))
            await self.drop(replace(state, multipart_id=None))
            await self._quietly(self.store.delete(data_key))
            raise
        finally:
            spool.close()
        self.gateway.stored(outcome, principal)
        done = replace(state, receipt=outcome.receipt)
        await self._save(done)
        await self._quietly(self.store.delete(data_key))
        await self._remember(state.producer, outcome.receipt)
        return done

    async def _finish_known(self, state: tus.UploadState, known: dict[str, Any]) -> tus.UploadState:
        """Content this producer already stored: a new upload of it, without the bytes."""
        outcome = await self.gateway.ingestor.ingest(None, Stored.from_receipt(known), producer=state.producer,
                                                     image_id=state.image_id, idempotency_key=state.idempotency_key)
        log.info("resumable upload completed from a declared sha256", extra={
            "producer": state.producer, "image_id": state.image_id, "sha256": known["sha256"]})
        return replace(state, parts=(), tail=0, receipt=outcome.receipt,
                       length=int(known["size"]))

    async def _owned(self, producer: str, sha256: str, length: int) -> dict[str, Any] | None:
        """This producer's own receipt for ``sha256``, if its object is still stored with that size."""
        raw = await self.store.get(owned_content_key(producer, sha256))
        if raw is None:
            return None
        try:
            receipt = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(receipt, dict) or receipt.get("sha256") != sha256 or receipt.get("size") != length:
            return None
        stored = await self.store.head(receipt["storage_key"])
        return receipt if stored is not None and stored.size == length else None

    async def _remember(self, producer: str, receipt: dict[str, Any]) -> None:
        body = orjson.dumps(receipt)
        await self._quietly(self.store.put(owned_content_key(producer, receipt["sha256"]), body, size=len(body),
                                           content_type="application/json"))

    # -- state, locks, expiry -----------------------------------------------------------------------

    async def _load(self, upload_id: str) -> tus.UploadState | None:
        raw = await self.store.get(upload_key(upload_id, "info.json"))
        if raw is None:
            return None
        try:
            return tus.UploadState.from_json(raw)
        except (ValueError, TypeError, KeyError):
            return None

    async def _save(self, state: tus.UploadState) -> None:
        body = state.to_json()
        await self.store.put(upload_key(state.upload_id, "info.json"), body, size=len(body),
                             content_type="application/json")

    async def _own_state(self, request: web.Request) -> tus.UploadState:
        """The caller's upload, or 404: unknown, expired and another producer's look the same."""
        principal = self.gateway.authenticate(request)
        upload_id = request.match_info["upload_id"]
        state = await self._load(upload_id) if tus.is_upload_id(upload_id) else None
        if state is None or state.producer != principal.name or state.expired(self.clock()):
            raise NotFound("no such upload (unknown, expired, or not yours)")
        return state

    @contextlib.asynccontextmanager
    async def _locked(self, upload_id: str) -> AsyncIterator[None]:
        key = upload_key(upload_id, "lock")
        body = format_time(self.clock()).encode()
        if not await self.store.create(key, body, content_type="text/plain"):
            held = await self.store.get(key)
            try:
                stale = held is None or parse_time(held.decode()) + LOCK_STALE < self.clock()
            except ValueError:
                stale = True
            if not stale:
                raise Conflict("another request is writing this upload; retry shortly", reason="upload_locked")
            await self.store.delete(key)  # its owner died: take over
            if not await self.store.create(key, body, content_type="text/plain"):
                raise Conflict("another request is writing this upload; retry shortly", reason="upload_locked")
        try:
            yield
        finally:
            await self._quietly(self.store.delete(key))

    async def drop(self, state: tus.UploadState) -> None:
        """Abort the parts and delete every object of the upload."""
        if state.multipart_id is not None:
            await self.parts.abort(upload_key(state.upload_id, "data"), state.multipart_id)
        async for info in self.store.list(upload_key(state.upload_id, "")):
            if not info.key.endswith("/lock"):
                await self.store.delete(info.key)

    async def sweep(self) -> int:
        """Drop every expired upload (abandoned, or completed and kept for late retries); how many."""
        now, dropped = self.clock(), 0
        infos = [info.key async for info in self.store.list("uploads/") if info.key.endswith("/info.json")]
        for key in infos:
            state = await self._load(key.split("/")[1])
            if state is not None and state.expired(now):
                await self.drop(state)
                log.info("resumable upload expired", extra={"upload_id": state.upload_id,
                                                             "producer": state.producer, "offset": state.offset})
                dropped += 1
        return dropped

    async def sweep_forever(self, interval: float) -> None:
        """:meth:`sweep` every ``interval`` s (jittered, so replicas do not sweep in step)."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.sweep()
            except Unavailable as exc:
                log.warning("upload sweep failed", extra={"error": str(exc)})

    @staticmethod
    async def _quietly(pending: Any) -> None:
        try:
            await pending
        except Unavailable as exc:
            log.warning("upload bookkeeping failed", extra={"error": str(exc)})


def _reader(stream: AsyncIterator[bytes]) -> Callable[[], Any]:
    async def read() -> bytes:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return b""

    return read

