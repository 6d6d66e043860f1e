"""What every imgstream HTTP service shares: JSON logs, the error body, request ids, route names.

A thin adapter over aiohttp (the services are aiohttp apps); no domain logic lives here. The
error body is :meth:`imgstream.errors.ImgstreamError.to_dict` and the status comes from the one
:data:`imgstream.errors.HTTP_STATUS` table, so every service answers errors the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Final

import orjson
from aiohttp import hdrs, web

from imgstream.errors import ImgstreamError, RateLimited, Unauthorized, Unavailable, http_status

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


def configure_logging(level: str = "INFO", quiet: tuple[str, ...] = ("aiohttp.access", "asyncio")) -> None:
    """Route every logger to stderr as JSON lines (call once, at a service's entry point)."""
    handler = logging.StreamHandler(sys.stderr)
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
        response.headers[hdrs.RETRY_AFTER] = "1"
    return response


def errors_middleware(logger: logging.Logger = log) -> Any:
    """Turn :class:`ImgstreamError` and aiohttp's own HTTP errors into the JSON error body; any
    other exception is logged with its traceback and answered ``500 internal_error`` (no details
    leak to the client)."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ImgstreamError as exc:
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
