"""Errors as data: one root exception with a stable machine-readable ``code``.

Codes are part of the public contract (clients switch on them); messages are for humans.
Mapping a code to an HTTP status happens in exactly one place per service
(see :data:`HTTP_STATUS`).
"""

from __future__ import annotations

from typing import Any, Mapping


class ImgstreamError(Exception):
    """Root of every error imgstream raises on purpose.

    ``code`` is stable and documented; ``message`` names the offending input;
    ``details`` carries structured context (the field, the limit, the part index...).
    """

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON body every service returns: ``{"error": {"code", "message", ...}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}


class BadRequest(ImgstreamError):
    """The request itself is malformed (a bad parameter, header or multipart body).

    HTTP 400. Retrying the same request gets the same answer: fix it first.
    """

    code = "bad_request"


class Unauthorized(ImgstreamError):
    """No bearer token, or one that is malformed, forged, expired or signed by a retired key (401)."""

    code = "unauthorized"


class Forbidden(ImgstreamError):
    """A valid token asking for another producer's data: producer tokens see only their own
    producer's statistics, analyst tokens see everything (403).
    """

    code = "forbidden"


class NotFound(ImgstreamError):
    """The resource does not exist for this caller (404): an unknown id, or a producer's
    image that another producer asks to delete.
    """

    code = "not_found"


class PayloadTooLarge(ImgstreamError):
    """The body (or one multipart part) is over the size limit (413). Nothing past the limit is
    read, and nothing of the refused upload is stored or published.
    """

    code = "payload_too_large"


class UnsupportedMediaType(ImgstreamError):
    """The sniffed bytes are not a supported image format (415): SVG, text, executables,
    JPEG+HTML polyglots. The ``Content-Type`` header and file name are never consulted.
    """

    code = "unsupported_media_type"


class CorruptImage(ImgstreamError):
    """The bytes claim a supported format but do not decode (422): truncated, bad structure or CRC."""

    code = "corrupt_image"


class ImageTooLarge(ImgstreamError):
    """Over the pixel limit (a decompression bomb or simply too big to process)."""

    code = "image_too_large"


class RequestTimeout(ImgstreamError):
    """The client did not send its body in time (stalled or trickling): the request is dropped."""

    code = "request_timeout"


class Conflict(ImgstreamError):
    """The request contradicts an earlier one (an Idempotency-Key reused for other content)."""

    code = "conflict"


class ChecksumMismatch(ImgstreamError):
    """A resumable upload's chunk does not match its ``Upload-Checksum`` (tus status 460): the
    chunk is discarded and the upload's offset stays where it was."""

    code = "checksum_mismatch"


class RateLimited(ImgstreamError):
    """The producer is over its request budget (429).

    ``retry_after`` (seconds) goes out as the ``Retry-After`` header.
    """

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class InvalidEvent(ImgstreamError):
    """An event that failed schema validation or cleaning; it goes to the dead-letter topic."""

    code = "invalid_event"


class Unavailable(ImgstreamError):
    """A dependency (S3, Kafka, PostgreSQL...) is not reachable right now; retry later (503).

    ``message`` and most ``details`` describe the inside (hosts, driver errors): they are for the
    logs. The body a client gets (:meth:`to_dict`) says only :data:`UNAVAILABLE_MESSAGE` plus the
    details named in :data:`PUBLIC_DETAILS`.
    """

    code = "unavailable"

    #: Details a client may see: a stable ``reason`` code and the ``idempotency_key`` to retry with.
    PUBLIC_DETAILS = ("reason", "idempotency_key")

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": UNAVAILABLE_MESSAGE}
        body.update((k, self.details[k]) for k in self.PUBLIC_DETAILS if k in self.details)
        return {"error": body}


#: The one message of every 503: what went wrong inside is logged, not sent.
UNAVAILABLE_MESSAGE = "the service cannot complete this request right now; retry after the Retry-After delay"


#: The single code -> HTTP status table shared by the HTTP services.
HTTP_STATUS: Mapping[str, int] = {
    BadRequest.code: 400,
    Unauthorized.code: 401,
    Forbidden.code: 403,
    NotFound.code: 404,
    RequestTimeout.code: 408,
    Conflict.code: 409,
    PayloadTooLarge.code: 413,
    UnsupportedMediaType.code: 415,
    CorruptImage.code: 422,
    ImageTooLarge.code: 422,
    InvalidEvent.code: 422,
    RateLimited.code: 429,
    ChecksumMismatch.code: 460,
    Unavailable.code: 503,
    ImgstreamError.code: 500,
}


def http_status(error: ImgstreamError) -> int:
    """HTTP status for an error, 500 for codes that have no mapping."""
    return HTTP_STATUS.get(error.code, 500)
