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
                f"image. Limits: {config.max_upload_bytes} bytes per image, {config.max_request_bytes} bytes and "
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
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness of this process (not draining); S3 and Kafka are "
                                           "checked only with ?deps=1 and never fail it",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
