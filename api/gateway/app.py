"""HTTP layer of the upload gateway: routes, auth, limits, receipts, errors, health and metrics.

Everything the app talks to is passed in (:func:`create_app`), so tests build it with in-memory
fakes and the entry point (``api/gateway/__main__.py``) with the real S3 and Kafka adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BodyPartReader

from imgstream.domain import imaging
from imgstream.adapters.kafka import EventPublisher
from imgstream.adapters.multipart import PartStore, part_store_for
from imgstream.adapters.s3 import ObjectStore
from imgstream.domain.errors import (
    BadRequest,
    Forbidden,
    ImgstreamError,
    RequestTimeout,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    UnsupportedMediaType,
    http_status,
)
from imgstream.domain.events import image_id_for
from api.common.httpkit import (check, error_response, errors_middleware, healthz, metrics_response,
                                observe_middleware)
from imgstream.domain.ratelimit import RateLimiter
from imgstream.domain.tokens import Principal, TokenVerifier, bearer_token

from api.gateway.config import READ_CHUNK, GatewayConfig
from api.gateway.decoding import DecodeBudget
from api.gateway.keys import IDEMPOTENCY_KEY, checked_key, server_key
from api.gateway.ingest import Ingestor, Outcome, Spool, receive
from api.gateway.metrics import GatewayMetrics
from api.gateway.openapi import openapi_document
from api.gateway.deletes import Deletions
from api.gateway.owners import OwnerLookup
from api.gateway.tus import TusUploads

log = logging.getLogger("imgstream.gateway")

#: How long /readyz waits for each dependency before calling it unreachable.
_READY_TIMEOUT = 3.0
#: Per-request state: whether the client waits for "100 Continue", and whether part of the body
#: was left unread (then the connection must close after the response).
EXPECTS_CONTINUE = web.RequestKey("expects_continue", bool)
BODY_UNREAD = web.RequestKey("body_unread", bool)
#: Errors while reading a part that mean the request, not just the part, cannot go on.
_REQUEST_LEVEL_REASONS = frozenset({"timeout", "incomplete_body", "malformed_multipart"})


class _Budget:
    """Bytes a multipart request may still send across all its parts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.used > self.limit

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {self.limit} bytes", limit=self.limit,
                                  scope="request")


class Gateway:
    """State and handlers of one gateway app."""

    def __init__(self, config: GatewayConfig, store: ObjectStore, publisher: EventPublisher,
                 keyring: TokenVerifier, *, limiter: RateLimiter, metrics: GatewayMetrics,
                 executor: Executor | None, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.publisher = publisher
        self.keyring = keyring
        self.limiter = limiter
        self.metrics = metrics
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=config.inspect_workers,
                                                       thread_name_prefix="inspect")
        self.decode_budget = DecodeBudget(config.decode_memory_bytes)
        self.ingestor = Ingestor(store=store, publisher=publisher, executor=self.executor, topic=config.topic,
                                 max_pixels=config.max_pixels, gateway_id=config.gateway_id, metrics=metrics,
                                 clock=clock, decode_budget=self.decode_budget)
        self.draining = False
        self.uploads: TusUploads | None = None  # set by create_app
        self._uploads = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """Start the dependencies before serving; after the last in-flight request finished,
        flush and close them (aiohttp runs cleanup contexts after its shutdown timeout)."""
        await self.store.start()
        await self.publisher.start()
        log.info("gateway started", extra={"topic": self.config.topic, "gateway": self.config.gateway_id})
        sweeper = (asyncio.create_task(self.uploads.sweep_forever(self.config.upload_sweep_interval))
                   if self.uploads is not None and self.config.upload_sweep_interval > 0 else None)
        yield
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        log.info("gateway stopping: closing the event publisher and the object store")
        await self.publisher.close()
        await self.store.close()
        if self._own_executor and isinstance(self.executor, ThreadPoolExecutor):
            self.executor.shutdown(wait=True)

    async def on_shutdown(self, app: web.Application) -> None:
        # Load balancers poll /readyz: fail it first so no new uploads are routed here.
        if not self.draining:
            log.info("gateway draining: finishing in-flight uploads")
        self.draining = True

    # -- request checks -----------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Principal:
        principal = self.keyring.verify(bearer_token(request.headers.get(hdrs.AUTHORIZATION)))
        if not principal.may_upload:
            raise Forbidden(f"{principal.role} tokens cannot upload images; use a producer token")
        return principal

    def charge(self, producer: str) -> None:
        """Take one image's worth of the producer's rate budget, or raise 429."""
        wait = self.limiter.acquire(producer)
        if wait > 0:
            self.metrics.rate_limited.inc()
            raise RateLimited(f"rate limit for producer {producer} exceeded "
                              f"({self.limiter.rate:g} images/s, burst {self.limiter.burst:g}); "
                              f"retry in {math.ceil(wait)} s", retry_after=math.ceil(wait))

    # -- POST /v1/images ----------------------------------------------------------------------------

    async def post_images(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/images`` (see :meth:`admitted`)."""
        async with self.admitted():
            return await self._post_images(request)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """One upload (a POST, or a tus creation or PATCH) in flight: counted so a shutdown can
        wait for it (``drain``), and refused with 503 from its headers alone while
        ``max_concurrent_uploads`` are in flight."""
        if self._uploads >= self.config.max_concurrent_uploads:
            self.metrics.images.labels("overloaded").inc()
            raise Unavailable(f"{self._uploads} uploads in flight, the limit of this process",
                              reason="overloaded", limit=self.config.max_concurrent_uploads)
        self._uploads += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._uploads -= 1
            if self._uploads == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Fail /readyz and wait (up to ``timeout`` s) until no upload is in flight.

        Call after the listening socket is closed and before ``AppRunner.cleanup()``: aiohttp stops
        reading from every connection once its own shutdown starts, which would cut off uploads
        whose bodies are still arriving. Returns whether everything finished in time.
        """
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _post_images(self, request: web.Request) -> web.StreamResponse:
        principal = self.authenticate(request)
        self.charge(principal.name)
        key = checked_key(request.headers.get(IDEMPOTENCY_KEY))
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Compressed bodies would make the byte limit meaningless (a zip bomb inflates past
            # it) and images are compressed already.
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted: send the image bytes as "
                                       "they are", detected="content-encoding")
        multipart = request.content_type.startswith("multipart/")
        if multipart and request.content_type != "multipart/form-data":
            raise BadRequest(f"{request.content_type} is not accepted; use multipart/form-data with 'file' parts")
        limit = self.config.max_request_bytes if multipart else self.config.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            # Refused from the header alone: not one body byte is read.
            raise PayloadTooLarge(f"Content-Length {request.content_length} exceeds the limit of {limit} bytes",
                                  limit=limit)
        await self.continue_if_expected(request)
        deadline = time.monotonic() + self.config.request_timeout
        if multipart:
            return await self.post_multipart(request, principal, key, deadline)
        return await self.post_raw(request, principal, key, deadline)

    async def continue_if_expected(self, request: web.Request) -> None:
        """Send ``100 Continue`` now that the headers passed every check (see ``expect`` in create_app)."""
        if request.get(EXPECTS_CONTINUE):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

    async def _guarded(self, pending: Awaitable[Any]) -> Any:
        """Await a body read, turning transport and framing failures into 400s."""
        try:
            return await pending
        except (HttpProcessingError, ConnectionError) as exc:
            raise BadRequest(f"request body broken off: {exc}", reason="incomplete_body") from None
        except (ValueError, AssertionError) as exc:  # the multipart parser's way of saying "malformed"
            raise BadRequest(f"malformed multipart body: {exc}", reason="malformed_multipart") from None

    def _reader(self, read: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[bytes]]:
        """``read`` with failures as 400s and byte accounting for /metrics."""

        async def guarded() -> bytes:
            chunk: bytes = await self._guarded(read())
            self.metrics.received_bytes.inc(len(chunk))
            return chunk

        return guarded

    async def post_raw(self, request: web.Request, principal: Principal, key: str | None,
                       deadline: float) -> web.StreamResponse:
        spool = Spool(self.config.max_upload_bytes, self.config.spool_memory_bytes, self.config.spool_dir)
        try:
            started = time.perf_counter()
            try:
                summary = await receive(spool, self._reader(request.content.readany),
                                        idle_timeout=self.config.idle_read_timeout, deadline=deadline)
            except ImgstreamError:
                request[BODY_UNREAD] = not request.content.at_eof()
                raise
            self.metrics.stage.labels("receive").observe(time.perf_counter() - started)
            retry_key = None if key is not None else server_key()
            image_id = image_id_for(principal.name, key or retry_key)
            outcome = await self.ingestor.ingest(spool, summary, producer=principal.name, image_id=image_id,
                                                 idempotency_key=key, retry_key=retry_key)
        except Unavailable as exc:
            self.rejected(exc, principal, None, None)
            response = error_response(exc)
            retry_with = exc.details.get("idempotency_key")
            if retry_with is not None:
                response.headers[IDEMPOTENCY_KEY] = retry_with
            return response
        except ImgstreamError as exc:
            self.rejected(exc, principal, None, None)
            raise
        finally:
            spool.close()
        self.stored(outcome, principal)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return web.Response(body=orjson.dumps(outcome.receipt), status=201, headers=headers,
                            content_type="application/json")

    async def post_multipart(self, request: web.Request, principal: Principal, key: str | None,
                             deadline: float) -> web.StreamResponse:
        """Each part is spooled in turn and, once complete, ingested in a task while the next
        part is read; results come back in body order, one receipt or one error per part."""
        try:
            reader = await request.multipart()
        except (ValueError, KeyError, AssertionError) as exc:
            raise BadRequest(f"malformed multipart request: {exc}") from None
        budget = _Budget(self.config.max_request_bytes)
        results: list[dict[str, Any] | asyncio.Task[dict[str, Any]]] = []
        try:
            while not budget.exhausted:
                try:
                    async with asyncio.timeout(self.config.idle_read_timeout):
                        part = await self._guarded(reader.next())
                except TimeoutError:
                    raise RequestTimeout(f"client sent nothing for {self.config.idle_read_timeout:g} s",
                                     reason="timeout") from None
                if part is None:
                    break
                results.append(await self.take_part(part, len(results), principal, key, budget, deadline))
        except ImgstreamError as exc:
            # The body is broken or over its limits: the parts read so far are answered, the rest
            # is not read at all.
            request[BODY_UNREAD] = not request.content.at_eof()
            if not results:
                raise
            self.rejected(exc, principal, len(results), None)
            results.append(self.part_error(exc, len(results), None, None))
        finally:
            answered = [r if isinstance(r, dict) else await r for r in results]
        if not answered:
            raise BadRequest("multipart body has no parts: send one or more parts named 'file'")
        return web.Response(body=orjson.dumps({"results": answered}), status=200, content_type="application/json")

    async def take_part(self, part: Any, index: int, principal: Principal, key: str | None, budget: _Budget,
                        deadline: float) -> dict[str, Any] | asyncio.Task[dict[str, Any]]:
        """Read part ``index``. Returns its error, or a task that ingests it while later parts are
        read. Raises only when the request as a whole cannot go on."""
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not accepted", reason="malformed_multipart")
        name, filename = part.name, part.filename
        read_chunk = self._reader(lambda: part.read_chunk(READ_CHUNK))

        async def read() -> bytes:
            chunk = await read_chunk()
            budget.spend(len(chunk))
            return chunk

        error: ImgstreamError | None = None
        if index >= self.config.max_parts:
            error = PayloadTooLarge(f"more than {self.config.max_parts} parts in one request; this part was not "
                                    "stored, send it in another request", limit=self.config.max_parts)
        elif name != "file":
            error = BadRequest(f"unexpected part name {name!r}; send images in parts named 'file'")
        elif index > 0:
            try:
                self.charge(principal.name)  # the request's own charge paid for the first image
            except RateLimited as exc:
                error = exc
        if error is not None:
            await self.discard_part(read, deadline)
            self.rejected(error, principal, index, filename)
            return self.part_error(error, index, name, filename)

        spool = Spool(self.config.max_upload_bytes, self.config.spool_memory_bytes, self.config.spool_dir)
        try:
            started = time.perf_counter()
            summary = await receive(spool, read, idle_timeout=self.config.idle_read_timeout, deadline=deadline)
            self.metrics.stage.labels("receive").observe(time.perf_counter() - started)
        except (PayloadTooLarge, UnsupportedMediaType, BadRequest, RequestTimeout) as exc:
            spool.close()
            if budget.exhausted or exc.details.get("reason") in _REQUEST_LEVEL_REASONS:
                raise  # the request itself is over its budget or broken: stop reading it
            # Only this part is bad: skip the rest of it and go on with the next.
            await self.discard_part(read, deadline)
            self.rejected(exc, principal, index, filename)
            return self.part_error(exc, index, name, filename)
        except BaseException:
            spool.close()
            raise
        part_key = None if key is None else f"{key}#{index}"
        retry_key = None if part_key is not None else server_key()
        image_id = image_id_for(principal.name, part_key or retry_key)
        return asyncio.create_task(self.ingest_part(spool, summary, index, filename, principal, image_id, part_key,
                                                    retry_key))

    async def ingest_part(self, spool: Spool, summary: imaging.StreamSummary, index: int, filename: str | None,
                          principal: Principal, image_id: str, key: str | None,
                          retry_key: str | None) -> dict[str, Any]:
        try:
            outcome = await self.ingestor.ingest(spool, summary, producer=principal.name, image_id=image_id,
                                                 idempotency_key=key, retry_key=retry_key)
        except ImgstreamError as exc:
            self.rejected(exc, principal, index, filename)
            return self.part_error(exc, index, "file", filename)
        finally:
            spool.close()
        self.stored(outcome, principal)
        result = {"part": index, "filename": filename, **outcome.receipt}
        if outcome.replayed:
            result["replayed"] = True
        return result

    async def discard_part(self, read: Callable[[], Awaitable[bytes]], deadline: float) -> None:
        """Read and discard the rest of a refused part (within the request's time and byte budget)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout("request body not received in time", reason="timeout")
            try:
                async with asyncio.timeout(min(left, self.config.idle_read_timeout)):
                    if not await read():
                        return
            except TimeoutError:
                raise RequestTimeout(f"client sent nothing for {self.config.idle_read_timeout:g} s",
                                 reason="timeout") from None

    @staticmethod
    def part_error(exc: ImgstreamError, index: int, name: str | None, filename: str | None) -> dict[str, Any]:
        return {"part": index, "name": name, "filename": filename, "status": "error",
                "http_status": http_status(exc), **exc.to_dict()}

    def stored(self, outcome: Outcome, principal: Principal) -> None:
        receipt = outcome.receipt
        log.info("image replayed" if outcome.replayed else "image stored",
                 extra={"producer": principal.name, "image_id": receipt["image_id"], "sha256": receipt["sha256"],
                        "size": receipt["size"], "content_type": receipt["content_type"]})

    def rejected(self, exc: ImgstreamError, principal: Principal, index: int | None, filename: str | None) -> None:
        self.metrics.images.labels(exc.code).inc()
        # (not "filename": LogRecord reserves that attribute)
        log.info("image rejected", extra={"producer": principal.name, "code": exc.code, "reason": exc.message,
                                          "part": index, "file": filename})

    # -- operations ---------------------------------------------------------------------------------

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Readiness of this process only: ready unless draining. S3 and Kafka are shared by every
        replica, so failing readiness on them would take all pods out of the load balancer at
        once for one blip; uploads then fail fast with 503 + a retry key instead. ``?deps=1``
        adds a live check of both for operators (reported, never failing the probe)."""
        checks = {"uploads_in_flight": str(self._uploads), "upload_limit": str(self.config.max_concurrent_uploads)}
        if request.query.get("deps") == "1":
            checks["s3"], checks["kafka"] = await asyncio.gather(check(self.store.ping, _READY_TIMEOUT),
                                                                 check(self.publisher.ping, _READY_TIMEOUT))
        ready = not self.draining
        body = {"status": "ready" if ready else "draining", "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def prestop(self) -> None:
        """First step of a SIGTERM: fail /readyz and keep serving for ``prestop_delay`` seconds, so
        load balancers stop routing here before the listening socket closes."""
        self.draining = True
        log.info("draining: readiness failed, still serving", extra={"prestop_delay_s": self.config.prestop_delay})
        await asyncio.sleep(self.config.prestop_delay)

    async def metrics_endpoint(self, request: web.Request) -> web.StreamResponse:
        return metrics_response(self.metrics.registry)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi_document(self.config))


def create_app(config: GatewayConfig, store: ObjectStore, publisher: EventPublisher, keyring: TokenVerifier, *,
               limiter: RateLimiter | None = None, metrics: GatewayMetrics | None = None,
               executor: Executor | None = None, parts: PartStore | None = None, owners: OwnerLookup | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> web.Application:
    """Build the gateway application from explicit dependencies.

    ``store`` and ``publisher`` are started when the app starts and closed after it stopped
    serving; ``keyring`` verifies bearer tokens; ``limiter`` defaults to the config's
    per-producer rate; ``clock`` gives ``received_at`` and the resumable uploads' expiry;
    ``parts`` (multipart uploads for ``/v1/uploads/``) defaults to the store's own; ``owners``
    answers who owns an image for ``DELETE /v1/images/{image_id}`` (without one, it answers 503).
    """
    metrics = metrics or GatewayMetrics()
    limiter = limiter or RateLimiter(config.rate_per_second, config.rate_burst)
    gateway = Gateway(config, store, publisher, keyring, limiter=limiter, metrics=metrics, executor=executor,
                      clock=clock)

    def on_response(request: web.Request, response: web.StreamResponse) -> None:
        # Close the connection when part of the request body was left unread (it cannot be
        # reused) and while draining (keep-alive clients reconnect, to an instance that stays).
        if request.get(BODY_UNREAD) or gateway.draining:
            response.force_close()

    async def expect(request: web.Request) -> None:
        # Defer "100 Continue" until the handler has checked the headers (token, rate, size):
        # a client that waits for it never sends a body we would refuse.
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="only 'Expect: 100-continue' is supported")
        request[EXPECTS_CONTINUE] = True

    observe = observe_middleware(metrics, log, on_response=on_response)
    app = web.Application(middlewares=[observe, errors_middleware(log)], client_max_size=1024)
    app[GATEWAY] = gateway
    app.router.add_post("/v1/images", gateway.post_images, expect_handler=expect)
    Deletions(gateway, owners, BODY_UNREAD).add_routes(app)
    gateway.uploads = TusUploads(gateway, parts or part_store_for(store),
                                 expiry=timedelta(seconds=config.upload_expiry), clock=clock)
    gateway.uploads.add_routes(app, expect)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_endpoint)
    app.router.add_get("/openapi.json", gateway.openapi)
    app.cleanup_ctx.append(gateway.lifecycle)
    app.on_shutdown.append(gateway.on_shutdown)
    return app


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def server_options(config: GatewayConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` / ``aiohttp.test_utils.TestServer``."""
    return {
        "shutdown_timeout": config.shutdown_timeout,
        "lingering_time": config.linger_seconds,
        "auto_decompress": False,  # see the Content-Encoding check in post_images
        "access_log": None,  # the observe middleware logs every request as JSON
        # handler_cancellation stays off: once a body has arrived, the upload completes even if
        # the client hangs up, and its idempotent retry then gets the receipt.
    }
