"""The upload pipeline, free of HTTP: spool a body while checking it, then inspect, store, publish.

``receive`` pulls chunks from any async source into a :class:`Spool` (memory up to a threshold,
then a temporary file), feeding a :class:`~imgstream.domain.imaging.StreamInspector` on the way, so the
body is never held whole in memory and a bad body is refused as early as its bytes allow.
:class:`Ingestor` then runs the blocking image checks in a worker thread, writes the object,
and only after the store acknowledged it publishes the event.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Awaitable, Callable, Final

from imgstream.domain import imaging
from imgstream.adapters.kafka import EventPublisher
from imgstream.adapters.s3 import MULTIPART_THRESHOLD, ObjectStore
from imgstream.domain.errors import BadRequest, Conflict, ImgstreamError, RequestTimeout, Unavailable
from imgstream.domain.events import ImageUploaded
from imgstream.domain.timefmt import format_time
from imgstream.domain.imaging import StreamInspector, StreamSummary
from api.gateway.receipts import ReceiptStore, Record
from imgstream.domain.receipts import build_receipt
from imgstream.domain.storage_layout import image_key

from api.gateway.decoding import DecodeBudget
from api.gateway.metrics import GatewayMetrics

log = logging.getLogger("imgstream.gateway")

#: Bodies at least this big are HEADed before the PUT: if the same bytes are already stored
#: (content addressing), re-sending them costs more than one small round trip. Below it, a blind
#: PUT (idempotent for identical bytes) is cheaper: for the unique uploads that are nearly all of
#: them, a HEAD is a wasted round trip and store CPU. From the multipart threshold up, an upload
#: takes several round trips and tens of MB anyway, and one HEAD is noise.
HEAD_BEFORE_PUT_BYTES: Final = MULTIPART_THRESHOLD

#: How long a request waits for the receipt of a concurrent upload of the same bytes under the
#: same Idempotency-Key before taking the key over. Storing and publishing the largest body takes
#: about a second on a healthy stack; a claim still open after this long lost its owner.
IN_FLIGHT_WAIT: Final = 10.0


class Spool:
    """A body on its way in: checked by a :class:`StreamInspector`, kept in memory up to
    ``memory_bytes`` and in an anonymous temporary file (deleted on close) beyond."""

    def __init__(self, max_bytes: int, memory_bytes: int, directory: str | None = None) -> None:
        self.inspector = StreamInspector(max_bytes)
        self.memory_bytes = memory_bytes
        self.directory = directory
        self._memory: io.BytesIO | None = io.BytesIO()
        self._disk: IO[bytes] | None = None

    @property
    def size(self) -> int:
        return self.inspector.size

    @property
    def in_memory(self) -> bool:
        return self._disk is None

    @property
    def file(self) -> IO[bytes]:
        """The spooled bytes as a seekable binary file."""
        if self._disk is not None:
            return self._disk
        assert self._memory is not None
        return self._memory

    def write(self, chunk: bytes) -> None:
        """Check ``chunk`` (may raise before anything is kept) and keep it."""
        self.inspector.feed(chunk)
        if self._disk is None:
            assert self._memory is not None
            if self._memory.tell() + len(chunk) <= self.memory_bytes:
                self._memory.write(chunk)
                return
            self._disk = tempfile.TemporaryFile(dir=self.directory)
            self._disk.write(self._memory.getbuffer())
            self._memory = None
        self._disk.write(chunk)

    def finish(self) -> StreamSummary:
        self.file.flush()
        return self.inspector.finish()

    def body(self) -> bytes | IO[bytes]:
        """What to hand the object store: the bytes if they are in memory, else the file."""
        if self._memory is not None:
            return self._memory.getvalue()
        assert self._disk is not None
        self._disk.seek(0)
        return self._disk

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
        self._memory = None


async def receive(spool: Spool, read: Callable[[], Awaitable[bytes]], *, idle_timeout: float,
                  deadline: float) -> StreamSummary:
    """Pull chunks from ``read`` (``b""`` at the end) into ``spool`` until the end of the body.

    Raises what the inspector raises (413/415 as soon as the bytes show it), and
    :class:`RequestTimeout` when the client stalls for ``idle_timeout`` seconds or the body is not
    complete by ``deadline`` (a ``time.monotonic()`` value).
    """
    while True:
        left = deadline - time.monotonic()
        wait = min(idle_timeout, left)
        if wait <= 0:
            raise RequestTimeout("request body not received in time; upload faster or in smaller parts",
                             reason="timeout")
        try:
            async with asyncio.timeout(wait):
                chunk = await read()
        except TimeoutError:
            if wait < idle_timeout:
                raise RequestTimeout("request body not received in time; upload faster or in smaller parts",
                                 reason="timeout") from None
            raise RequestTimeout(f"client sent nothing for {idle_timeout:g} s", reason="timeout") from None
        if not chunk:
            return spool.finish()
        spool.write(chunk)


@dataclass(frozen=True, slots=True)
class Stored:
    """Facts about content in the store: what an event needs besides who uploaded it and when."""

    sha256: str
    size: int
    content_type: str
    width: int
    height: int
    phash: str
    storage_key: str

    @classmethod
    def from_receipt(cls, receipt: dict[str, Any]) -> "Stored":
        """The facts an earlier receipt of the same content recorded."""
        return cls(sha256=receipt["sha256"], size=int(receipt["size"]), content_type=receipt["content_type"],
                   width=int(receipt["width"]), height=int(receipt["height"]), phash=receipt["phash"],
                   storage_key=receipt["storage_key"])


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one ingested image: its receipt, and whether it is a replay of an earlier
    idempotent upload (then nothing was stored or published this time)."""

    receipt: dict[str, Any]
    replayed: bool = False


class Ingestor:
    """Inspect, store, publish: the part of an upload that comes after its body arrived."""

    def __init__(self, *, store: ObjectStore, publisher: EventPublisher, executor: Executor, topic: str,
                 max_pixels: int, gateway_id: str, metrics: GatewayMetrics,
                 clock: Callable[[], datetime], in_flight_wait: float = IN_FLIGHT_WAIT,
                 decode_budget: DecodeBudget | None = None) -> None:
        self.store = store
        self.publisher = publisher
        self.receipts = ReceiptStore(store)
        self.executor = executor
        self.topic = topic
        self.max_pixels = max_pixels
        self.gateway_id = gateway_id
        self.metrics = metrics
        self.clock = clock
        self.in_flight_wait = in_flight_wait
        self.decode_budget = decode_budget or DecodeBudget()

    async def ingest(self, spool: Spool | None, summary: StreamSummary | Stored, *, producer: str, image_id: str,
                     idempotency_key: str | None, retry_key: str | None = None) -> Outcome:
        """Take one fully received body to a receipt. Raises an :class:`ImgstreamError` when the
        image is refused (422), its key was used for other bytes (409) or a dependency is down
        (503).

        ``image_id`` is derived from ``idempotency_key`` (the client's) or, without one, from
        ``retry_key`` (made by the server): a 503 carries that key as ``idempotency_key``, so a
        client whose upload may have been counted after all (a lost Kafka acknowledgement)
        retries under the same ``image_id`` and the stream counts it once.

        ``summary`` may instead be :class:`Stored`: content already in the store, checked when it
        was first uploaded (a resumable upload that declared its SHA-256); then nothing is
        inspected or stored, and only a new event and receipt are made (``spool`` is ``None``).
        """
        received_at = format_time(self.clock())
        owned = False
        if idempotency_key is not None:
            previous = await self._claim(producer, image_id, summary.sha256, received_at)
            if previous is not None:
                self.metrics.images.labels("replayed").inc()
                return Outcome(previous, replayed=True)
            owned = True
        stored = isinstance(summary, Stored)
        try:
            if isinstance(summary, Stored):
                facts = summary
            else:
                assert spool is not None
                facts = await self._check_and_store(spool, summary, producer, image_id, owned)
                stored = True

            # The object is durable: only now may the event exist.
            event = ImageUploaded(
                image_id=image_id, producer=producer, sha256=facts.sha256, phash=facts.phash, size=facts.size,
                content_type=facts.content_type, width=facts.width, height=facts.height,
                storage_key=facts.storage_key, received_at=received_at, idempotency_key=idempotency_key,
                gateway=self.gateway_id,
            )
            started = time.perf_counter()
            published = await self.publisher.publish(
                self.topic, key=image_id.encode(), value=event.to_json(),
                headers=(("event_type", event.event_type.encode()),
                         ("schema_version", str(event.schema_version).encode())),
            )
            self.metrics.stage.labels("publish").observe(time.perf_counter() - started)
        except Unavailable as exc:
            retry_with = idempotency_key or retry_key
            if (owned or stored) and retry_with is not None:
                # The event may exist although the publish failed (a lost acknowledgement): record
                # the bytes under the key, so its retry takes over at once and other bytes get 409.
                marking: Awaitable[Any]
                if owned:
                    marking = self.receipts.mark_unpublished(producer, image_id, summary.sha256,
                                                             claimed_at=received_at)
                else:
                    marking = self.receipts.claim(producer, image_id, summary.sha256, claimed_at=received_at,
                                                  state="unpublished")
                await self._quietly(marking, image_id)
            if retry_with is not None:
                exc.details["idempotency_key"] = retry_with
            raise
        receipt = build_receipt(event, partition=published.partition, offset=published.offset)

        if idempotency_key is not None:
            try:
                await self.receipts.put(producer, receipt)
            except Unavailable as exc:
                # The upload itself succeeded. A retry finds the claim, waits IN_FLIGHT_WAIT for
                # the receipt, then stores and publishes again with the same image_id, which the
                # stream drops as a repeat: still counted once.
                log.warning("receipt not saved", extra={"image_id": image_id, "error": str(exc)})
        self.metrics.images.labels("stored").inc()
        self.metrics.stored_bytes.inc(summary.size)
        return Outcome(receipt)

    async def _check_and_store(self, spool: Spool, summary: StreamSummary, producer: str, image_id: str,
                               owned: bool) -> Stored:
        """The image checks (in a worker, within the decode budget), then the durable write."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(
                self.executor, lambda: imaging.inspect(spool.file, summary.format, summary.size,
                                                       max_pixels=self.max_pixels,
                                                       reserve=self.decode_budget.reserve))
        except ImgstreamError:
            if owned:  # refused bytes: the key stays free for the client's corrected upload
                await self._quietly(self.receipts.release(producer, image_id), image_id)
            raise
        self.metrics.stage.labels("inspect").observe(time.perf_counter() - started)

        key = image_key(summary.sha256)
        started = time.perf_counter()
        if not await self._already_stored(key, summary.size):
            body = spool.body()
            if not isinstance(body, bytes) and summary.size < MULTIPART_THRESHOLD:
                # One read in a worker thread beats the HTTP client's 64 KiB reads through the
                # executor (~5 ms less CPU per 5 MB); multipart bodies stay on disk, part by part.
                body = await loop.run_in_executor(self.executor, body.read)
            # No user metadata: the key is the SHA-256 already, and every x-amz-meta header is
            # stored (extended attributes on s3proxy's file system) and signed per request.
            await self.store.put(key, body, size=summary.size, content_type=info.format.content_type,
                                 sha256=summary.sha256)
        self.metrics.stage.labels("store").observe(time.perf_counter() - started)
        return Stored(sha256=summary.sha256, size=summary.size, content_type=info.format.content_type,
                      width=info.width, height=info.height, phash=info.phash, storage_key=key)

    async def _claim(self, producer: str, image_id: str, sha256: str, claimed_at: str) -> dict[str, Any] | None:
        """Own the idempotency key (``None``) or return the receipt to replay; raise 409 when the
        key holds other bytes."""
        record = await self.receipts.claim(producer, image_id, sha256, claimed_at=claimed_at)
        if record is None:
            return None
        deadline = time.monotonic() + self.in_flight_wait
        pause = 0.02
        while True:
            if record.sha256 is not None and record.sha256 != sha256:
                raise Conflict("Idempotency-Key was already used for a different image; use a new key "
                               "for new content", reason="idempotency_key_reused")
            if record.state == "stored" and record.receipt is not None:
                return record.receipt
            if record.state != "claimed" or time.monotonic() >= deadline:
                # Unpublished, unreadable, or its owner went quiet: take over under the same
                # image_id (content addressing makes the store idempotent, the stream drops a
                # repeated id).
                log.info("idempotency claim taken over", extra={"image_id": image_id, "state": record.state})
                return None
            # Same bytes, in flight elsewhere: wait for its receipt rather than publish twice.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
            record = await self.receipts.get(producer, image_id) or Record("unknown")

    @staticmethod
    async def _quietly(pending: Awaitable[Any], image_id: str) -> None:
        """Best-effort bookkeeping of a claim: a failure is logged, never the client's answer."""
        try:
            await pending
        except Unavailable as exc:
            log.warning("idempotency record not updated", extra={"image_id": image_id, "error": str(exc)})

    async def _already_stored(self, key: str, size: int) -> bool:
        if size < HEAD_BEFORE_PUT_BYTES:
            return False
        existing = await self.store.head(key)
        return existing is not None and existing.size == size
