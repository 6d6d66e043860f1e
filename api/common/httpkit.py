"""What every imgstream HTTP service shares: JSON logs, the error body, request ids, route names,
the request metrics and log line (:func:`observe_middleware`), health and readiness answers.

A thin adapter over aiohttp (the services are aiohttp apps); no domain logic lives here. The
error body is :meth:`imgstream.domain.errors.ImgstreamError.to_dict` and the status comes from the one
:data:`imgstream.domain.errors.HTTP_STATUS` table, so every service answers errors the same way. How a
service runs as a process lives in :mod:`api.common.runtime`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Final, Mapping, Sequence

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imgstream.domain.errors import ImgstreamError, RateLimited, Unauthorized, Unavailable, http_status

log = logging.getLogger("imgstream.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Request ids a client may choose (``X-Request-Id``); anything else gets a fresh one, so a hostile
#: header never reaches the logs verbatim.
REQUEST_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID: Final = web.RequestKey("request_id", str)

#: Stable codes for the errors aiohttp raises itself (unknown route, wrong method...).
HTTP_CODES: Final = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                     405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout",
                     413: "payload_too_large", 415: "unsupported_media_type", 431: "bad_request"}

#: Retry-After of a 503, drawn uniformly from this range of seconds: a constant would bring every
#: client refused in one blip back in the same second, a second blip of their own making.
UNAVAILABLE_RETRY_AFTER: Final = (1, 5)

#: Routes polled by load balancers and Prometheus: counted in the metrics, not logged per request.
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD: Final = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts", "level", "logger", "msg", ...extra}``; exceptions under ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # orjson: a request log line per request is a hot path; default=str covers any extra value.
        return orjson.dumps(entry, default=str).decode()


#: Log lines are written out at least this often (and at once from WARNING up, and at exit): one
#: write per request line cost the stats API about a quarter of its CPU per cheap request
#: (measured: image by id, 0.32 vs 0.24 ms with the request log off); a fifth of a second of delay
#: in a log file costs nothing.
LOG_FLUSH_INTERVAL: Final = 0.2


class BufferedLineHandler(logging.StreamHandler):
    """A :class:`logging.StreamHandler` that gathers formatted lines and writes them in one call
    every :data:`LOG_FLUSH_INTERVAL` seconds (a daemon thread), at once for WARNING and above, and
    on ``flush``/``close`` (``logging.shutdown`` at exit). A process killed with SIGKILL loses at
    most the last interval's lines."""

    def __init__(self, stream: Any = None, interval: float = LOG_FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._stopped = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, args=(interval,), name="log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if not self._pending:
                return
            text, self._pending = "\n".join(self._pending) + "\n", []
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stream closed at exit: nothing left to tell
                pass

    def _flush_every(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def configure_logging(level: str = "INFO", quiet: tuple[str, ...] = ("aiohttp.access", "asyncio")) -> None:
    """Route every logger to stderr as JSON lines (call once, at a service's entry point)."""
    handler = BufferedLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is well formed, else a new random one."""
    given = request.headers.get("X-Request-Id", "")
    return given if REQUEST_ID_PATTERN.match(given) else uuid.uuid4().hex


def route_name(request: web.Request) -> str:
    """The route template (``/v1/images/{image_id}``), never the raw path: bounded metric labels."""
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def error_response(exc: ImgstreamError, dumps: Callable[[Any], str] = json.dumps) -> web.Response:
    """The JSON error body and headers for ``exc`` (the one place codes become statuses)."""
    response = web.json_response(exc.to_dict(), status=http_status(exc), dumps=dumps)
    if isinstance(exc, RateLimited):
        response.headers[hdrs.RETRY_AFTER] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, Unauthorized):
        response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="imgstream"'
    elif isinstance(exc, Unavailable):
        response.headers[hdrs.RETRY_AFTER] = str(random.randint(*UNAVAILABLE_RETRY_AFTER))
    return response


def errors_middleware(logger: logging.Logger = log) -> Middleware:
    """Turn :class:`ImgstreamError` and aiohttp's own HTTP errors into the JSON error body; any
    other exception is logged with its traceback and answered ``500 internal_error`` (no details
    leak to the client)."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ImgstreamError as exc:
            if isinstance(exc, Unavailable):  # the body is generic: the inside goes to the log
                logger.warning("unavailable", extra={"request_id": request.get(REQUEST_ID), "path": request.path,
                                                     "error": exc.message, **exc.details})
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(
                {"error": {"code": HTTP_CODES.get(exc.status, "http_error"), "message": exc.reason}},
                status=exc.status,
                headers={k: v for k, v in exc.headers.items() if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID), "path": request.path})
            return web.json_response({"error": {"code": "internal_error", "message": "internal error"}}, status=500)

    return errors


class HttpMetrics:
    """The request metrics every service exports, on a registry of the app's own (so tests can build
    many apps in one process): ``<namespace>_requests`` (by route, method and status),
    ``<namespace>_request_duration_seconds`` and ``<namespace>_requests_in_flight``.

    A service subclasses it to add metrics of its own to :attr:`registry`.
    """

    def __init__(self, namespace: str, latency_buckets: Sequence[float],
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{namespace}_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram(f"{namespace}_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=latency_buckets, registry=r)
        self.in_flight = Gauge(f"{namespace}_requests_in_flight", "HTTP requests being served", registry=r)
        # Label children are looked up once and kept: ``labels()`` costs a lock and a tuple hash per
        # call, twice per request; the label sets are bounded (routes x methods x statuses), so the
        # cache is too.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one served request and its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def observe_middleware(metrics: HttpMetrics, logger: logging.Logger, *,
                       log_fields: Callable[[web.Request, str], Mapping[str, Any]] | None = None,
                       on_response: Callable[[web.Request, web.StreamResponse], None] | None = None,
                       quiet_routes: frozenset[str] = QUIET_ROUTES) -> Middleware:
    """The outermost middleware of a service: gives each request its id (:func:`request_id`, echoed
    as ``X-Request-Id``), keeps :class:`HttpMetrics` and logs one ``request`` line per request
    (``request_id, method, path, status, duration_ms, remote`` plus ``log_fields(request, route)``),
    except for ``quiet_routes``. ``on_response`` may adjust each response before it is sent.

    Place it before :func:`errors_middleware`, so error answers are counted with their status.
    """

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request)
        request[REQUEST_ID] = rid
        started = time.perf_counter()
        metrics.in_flight.inc()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-Id"] = rid
            if on_response is not None:
                on_response(request, response)
            return response
        finally:
            metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = route_name(request)
            metrics.request(route, request.method, status, elapsed)
            if route not in quiet_routes:
                fields = {"request_id": rid, "method": request.method, "path": request.path, "status": status,
                          "duration_ms": round(elapsed * 1000, 2), "remote": request.remote}
                if log_fields is not None:
                    fields.update(log_fields(request, route))
                logger.info("request", extra=fields)

    return observe


async def healthz(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: the process serves HTTP (liveness; no dependency is checked)."""
    return web.json_response({"status": "ok"})


async def check(probe: Callable[[], Awaitable[str | None]], timeout: float) -> str:
    """One readiness check: ``"ok"`` when ``probe()`` returns nothing within ``timeout`` seconds,
    else what it returned, the :class:`~imgstream.domain.errors.Unavailable` message or ``"timed out"``."""
    try:
        problem = await asyncio.wait_for(probe(), timeout)
    except (Unavailable, TimeoutError) as exc:
        return str(exc) or "timed out"
    return problem or "ok"


def readiness(checks: Mapping[str, str], *, draining: bool) -> web.Response:
    """``GET /readyz``: 200 ``ready`` when every check is ``"ok"`` and the service is not draining,
    else 503 ``draining`` or ``unavailable``; the checks are in the body either way."""
    ready = not draining and all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else ("draining" if draining else "unavailable"), "checks": dict(checks)}
    return web.json_response(body, status=200 if ready else 503)


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """``GET /metrics``: ``registry`` in the Prometheus text format."""
    response = web.Response(body=generate_latest(registry))
    response.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE_LATEST
    return response
