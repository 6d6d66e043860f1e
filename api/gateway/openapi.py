"""The gateway's OpenAPI 3.1 document, served at ``/openapi.json`` (limits filled in from the config)."""

from __future__ import annotations

from typing import Any

from imgstream.domain.imaging import SUPPORTED

from api.gateway.config import GatewayConfig


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(config: GatewayConfig) -> dict[str, Any]:
    """The OpenAPI description of the upload gateway."""
    types = sorted(SUPPORTED)
    receipt = {
        "type": "object",
        "required": ["image_id", "sha256", "size", "content_type", "width", "height", "storage_key", "status",
                     "received_at"],
        "properties": {
            "image_id": {"type": "string", "format": "uuid"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "size": {"type": "integer"},
            "content_type": {"type": "string", "enum": types, "description": "sniffed from the bytes"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "storage_key": {"type": "string", "description": "content-addressed: sha256/<2>/<2>/<sha256>"},
            "status": {"const": "stored"},
            "received_at": {"type": "string", "format": "date-time"},
            "producer": {"type": "string"},
            "phash": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "partition": {"type": "integer", "description": "Kafka partition of the image.uploaded event"},
            "offset": {"type": "integer", "description": "Kafka offset of the image.uploaded event"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgstream upload gateway",
            "version": "1",
            "description": (
                "Streams image uploads into the object store and publishes one image.uploaded event per stored "
                "image; DELETE publishes one image.deleted event per deleted image. "
                f"Limits: {config.max_upload_bytes} bytes per image, {config.max_request_bytes} bytes and "
                f"{config.max_parts} parts per multipart request, {config.max_pixels} pixels per image, "
                f"{config.rate_per_second:g} images/s per producer (burst {config.rate_burst:g}) per instance."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "imgstream token create --producer NAME"}},
            "schemas": {
                "Receipt": receipt,
                "PartResult": {
                    "oneOf": [
                        {"allOf": [{"$ref": "#/components/schemas/Receipt"},
                                   {"type": "object", "properties": {"part": {"type": "integer"},
                                                                     "filename": {"type": ["string", "null"]},
                                                                     "replayed": {"type": "boolean"}}}]},
                        {"type": "object", "required": ["part", "status", "error"],
                         "properties": {"part": {"type": "integer"}, "name": {"type": ["string", "null"]},
                                        "filename": {"type": ["string", "null"]}, "status": {"const": "error"},
                                        "http_status": {"type": "integer"},
                                        "error": {"$ref": "#/components/schemas/ErrorBody"}}},
                    ]
                },
                "ErrorBody": {"type": "object", "required": ["code", "message"],
                              "properties": {"code": {"type": "string", "enum": [
                                  "bad_request", "unauthorized", "forbidden", "conflict", "payload_too_large",
                                  "unsupported_media_type", "corrupt_image", "image_too_large", "rate_limited",
                                  "checksum_mismatch", "not_found",
                                  "unavailable", "internal_error"]},
                                  "message": {"type": "string"},
                                  "idempotency_key": {"type": "string",
                                                      "description": "503 only: the key to retry with"}},
                              "additionalProperties": True},
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}}},
            },
        },
        "paths": {
            "/v1/images": {
                "post": {
                    "summary": "Upload one image (raw body) or several (multipart/form-data, parts named 'file')",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "maxLength": 200},
                         "description": "A retry with the same key gets the same receipt and counts once"},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                                         "description": "Any Content-Type: the format is sniffed"},
                            "multipart/form-data": {"schema": {"type": "object", "properties": {
                                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                        },
                    },
                    "responses": {
                        "201": {"description": "Raw body stored; its receipt",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}},
                        "200": {"description": "Multipart: one receipt or one error per part, in body order",
                                "content": {"application/json": {"schema": {
                                    "type": "object", "properties": {"results": {
                                        "type": "array", "items": {"$ref": "#/components/schemas/PartResult"}}}}}}},
                        "400": _error("Malformed request (empty body, bad multipart, bad Idempotency-Key)"),
                        "408": _error("The client did not send the body in time"),
                        "409": _error("Idempotency-Key already used for different bytes"),
                        "401": _error("Missing or invalid bearer token"),
                        "403": _error("The token may not upload (analyst token)"),
                        "413": _error("Body over the size limit (refused from Content-Length when declared)"),
                        "415": _error(f"Not a supported image format; accepted: {', '.join(types)}"),
                        "422": _error("Corrupt/truncated image, or over the pixel limit (decompression bomb)"),
                        "429": {**_error("Per-producer rate limit; see Retry-After"),
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                        "503": {**_error("Object store or Kafka unreachable, or the gateway is at its limit of "
                                         "concurrent uploads. The body is generic (the cause is logged) and "
                                         "carries error.idempotency_key: retry with that key (also in the "
                                         "Idempotency-Key header) so the upload counts once even if it was "
                                         "published after all"),
                                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                                            "description": "seconds, spread over 1-5 s"},
                                            "Idempotency-Key": {"schema": {"type": "string"},
                                                                "description": "the key to retry with"}}},
                    },
                }
            },
            "/v1/images/{image_id}": {
                "delete": {
                    "summary": "Delete one of this producer's images: its status becomes 'deleted' (the upload "
                               "still counts in past windows); its bytes go when no live image references them "
                               "(batch GC)",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "image_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid", "maxLength": 36},
                                    "description": "the receipt's image_id (hex case-insensitive)"}],
                    "responses": {
                        "204": {"description": "Deleted, or deleted already (a retry is safe: nothing more "
                                               "happens). The status on the stats API follows within seconds"},
                        "400": _error("image_id is not a UUID (error.reason: invalid_image_id)"),
                        "401": _error("Missing or invalid bearer token"),
                        "403": _error("The token may not delete (analyst token)"),
                        "404": _error("No such image of this producer: unknown, not yet processed (status "
                                      "pending), or another producer's - one answer for all "
                                      "(error.reason: image_not_found)"),
                        "429": {**_error("Per-producer rate limit (shared with uploads); see Retry-After"),
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                        "503": _error("Cassandra (owner look-up) or Kafka unreachable; retry"),
                    },
                }
            },
            **_tus_paths(config),
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness of this process (not draining); S3 and Kafka are "
                                           "checked only with ?deps=1 and never fail it",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }


def _tus_paths(config: GatewayConfig) -> dict[str, Any]:
    """``/v1/uploads/``: the tus 1.0 resumable upload protocol (see docs/gateway.md)."""
    tus = {"name": "Tus-Resumable", "in": "header", "required": True, "schema": {"const": "1.0.0"}}
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string",
                                                                                 "pattern": "^[0-9a-f]{32}$"}}
    receipt = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}}
    offset = {"Upload-Offset": {"schema": {"type": "integer"}}, "Upload-Expires": {"schema": {"type": "string"}},
              "Tus-Resumable": {"schema": {"const": "1.0.0"}}}
    common = {"401": _error("Missing or invalid bearer token"),
              "404": _error("No such upload: unknown, expired, or another producer's"),
              "412": {"description": "Tus-Resumable is not 1.0.0 (Tus-Version says what is)"},
              "503": _error("Object store or Kafka unreachable, or at the upload limit; retry")}
    return {
        "/v1/uploads/": {
            "options": {"summary": "tus capabilities: Tus-Version, Tus-Extension (creation, creation-with-upload, "
                                   "checksum, termination, expiration), Tus-Max-Size, Tus-Checksum-Algorithm",
                        "responses": {"204": {"description": "capabilities in the headers"}}},
            "post": {
                "summary": "Create a resumable upload (tus creation; a body of application/offset+octet-stream "
                           "is its first bytes: creation-with-upload)",
                "security": [{"bearer": []}],
                "parameters": [
                    tus,
                    {"name": "Upload-Length", "in": "header", "required": True,
                     "schema": {"type": "integer", "minimum": 1, "maximum": config.max_upload_bytes}},
                    {"name": "Upload-Metadata", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "comma-separated 'key base64(value)': filename, idempotency_key, and sha256 "
                                    "(hex): when this producer already stored that content by a resumable upload, "
                                    "the upload completes at once (Upload-Offset = Upload-Length, receipt in the "
                                    "body) without the bytes; other producers' content is never matched"},
                ],
                "responses": {
                    "201": {"description": "Created: Location is the upload's URL. With a complete body (or a "
                                           "declared sha256 of own content) the body is the receipt",
                            "headers": {"Location": {"schema": {"type": "string"}}, **offset}, **receipt},
                    "400": _error("Upload-Length missing or 0, Upload-Defer-Length, malformed Upload-Metadata"),
                    "413": _error("Upload-Length over the size limit"),
                    "429": _error("Per-producer rate limit (one image per upload)"),
                    **common,
                },
            },
        },
        "/v1/uploads/{upload_id}": {
            "parameters": [upload_id],
            "head": {"summary": "The upload's offset (tus core)", "security": [{"bearer": []}], "parameters": [tus],
                     "responses": {"200": {"description": "Upload-Offset, Upload-Length, Upload-Metadata, "
                                                          "Upload-Expires; Cache-Control: no-store",
                                           "headers": offset}, **common}},
            "patch": {
                "summary": "Append bytes at Upload-Offset (tus core, checksum). The last PATCH finishes the upload: "
                           "the same checks, store, event and receipt as POST /v1/images",
                "security": [{"bearer": []}],
                "parameters": [tus, {"name": "Upload-Offset", "in": "header", "required": True,
                                     "schema": {"type": "integer"}},
                               {"name": "Upload-Checksum", "in": "header", "required": False,
                                "schema": {"type": "string"}, "description": "'sha256 <base64>' or 'sha1 <base64>'"}],
                "requestBody": {"required": True, "content": {"application/offset+octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "204": {"description": "Bytes stored; the new Upload-Offset", "headers": offset},
                    "200": {"description": "The upload is complete: its receipt", "headers": offset, **receipt},
                    "400": _error("Bad Upload-Offset or Upload-Checksum; bytes not matching a declared sha256"),
                    "409": _error("Upload-Offset is not the upload's offset, or another request is writing it"),
                    "413": _error("More bytes than Upload-Length"),
                    "415": _error("Not application/offset+octet-stream, or the bytes are not a supported image"),
                    "422": _error("Corrupt/truncated image, or over the pixel limit"),
                    "460": _error("The body does not match Upload-Checksum; nothing was kept"),
                    **common,
                },
            },
            "delete": {"summary": "Terminate the upload; its parts are aborted (tus termination)",
                       "security": [{"bearer": []}], "parameters": [tus],
                       "responses": {"204": {"description": "gone"}, **common}},
            "get": {"summary": "The upload's offset and, once complete, its receipt (not tus: for a client that "
                               "lost the answer to its last PATCH)", "security": [{"bearer": []}],
                    "responses": {"200": {"description": "upload_id, offset, length, expires_at, receipt (or null)"},
                                  **common}},
        },
    }
