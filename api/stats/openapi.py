"""The stats API's OpenAPI 3.1 document, served at ``/openapi.json`` (limits filled in from the
query modules, so the document cannot drift from what the parser enforces)."""

from __future__ import annotations

from typing import Any

from imgstream.domain.producers import NAME_PATTERN
from imgstream.domain.windows import Interval

from api.stats.config import StatsConfig
from api.stats.params import DIMENSIONS, DUPLICATE_KINDS, LIST_LIMIT, SERIES_LIMIT, TOP_LIMIT, TOP_MEASURES
from api.stats.ranges import MAX_SERIES_SPAN, MAX_TOTALS_SPAN
from api.stats.sql import MEASURES

_TIME = {"type": "string", "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "ETag": {"schema": {"type": "string"}, "description": "weak validator over the data (not the freshness)"},
            "Cache-Control": {"schema": {"type": "string"},
                              "description": "private, max-age=N when every window is closed; else no-cache"},
        },
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


_FROM = _param("from", "start of the range, ISO-8601 with a zone (Z or +HH:MM, '+' sent as %2B); rounded down to "
               "a window boundary", _TIME)
_TO = _param("to", "end of the range (exclusive), ISO-8601 with a zone; rounded up to a window boundary; default now",
             _TIME)
_PRODUCER = _param("producer", "only this producer (analyst tokens; a producer token may name only itself)",
                   {"type": "string", "pattern": NAME_PATTERN.pattern})
_CONTENT_TYPE = _param("content_type", "only this content type, e.g. image/png", {"type": "string"})


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return _param("limit", "page size", {"type": "integer", "minimum": 1, "maximum": maximum, "default": default})


_CURSOR = _param("cursor", "next_cursor of the previous page (only valid with the same parameters; simplest is to "
                 "follow 'next')", {"type": "string"})


def _measures() -> dict[str, Any]:
    return {m: _COUNT for m in MEASURES}


def _common(responses: dict[str, Any], *, forbidden: str | None = None) -> dict[str, Any]:
    out = {
        **responses,
        "304": {"description": "Not modified (If-None-Match matched the ETag)"},
        "400": _error("A parameter is malformed, unknown, repeated or out of range; error.field names it"),
        "401": _error("Missing, invalid or expired bearer token"),
        "503": _error("PostgreSQL unreachable, too slow, or the analytics views missing; retry after "
                      "Retry-After (1-5 s). The message is generic, error.reason a stable code "
                      "(connection, timeout, saturated, schema); the cause is logged"),
    }
    if forbidden:
        out["403"] = _error(forbidden)
    return out


def openapi_document(config: StatsConfig) -> dict[str, Any]:
    """The OpenAPI description of the stats API."""
    span = {i.value: MAX_SERIES_SPAN[i].days for i in Interval}
    freshness_table = {
        "type": ["object", "null"],
        "properties": {"newest_change_at": {**_TIME, "type": ["string", "null"]},
                       "newest_applied_at": {**_TIME, "type": ["string", "null"]},
                       "lag_seconds": {"type": ["number", "null"]},
                       "final_until": {**_TIME, "type": ["string", "null"],
                                       "description": "upload_stats only: every window ending by then is final"}},
    }
    schemas: dict[str, Any] = {
        "ErrorBody": {"type": "object", "required": ["code", "message"],
                      "properties": {"code": {"type": "string", "enum": [
                          "bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed",
                          "unavailable", "internal_error"]},
                          "message": {"type": "string"},
                          "field": {"type": "string", "description": "the offending parameter"}},
                      "additionalProperties": True},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}}},
        "Freshness": {"type": "object", "required": ["measured_at", "tables"],
                      "properties": {"measured_at": _TIME,
                                     "tables": {"type": "object", "additionalProperties": freshness_table}}},
        "Window": {"type": "object",
                   "required": ["window_start", "window_end", *MEASURES, "final"],
                   "properties": {"window_start": _TIME, "window_end": _TIME, "producer": {"type": "string"},
                                  "content_type": {"type": "string"}, **_measures(),
                                  "final": {"type": "boolean", "description": "the window will not change again"}}},
        "Uploads": {"type": "object", "required": ["from", "to", "interval", "windows", "freshness"],
                    "properties": {"from": _TIME, "to": _TIME, "interval": {"enum": [i.value for i in Interval]},
                                   "group_by": {"type": "array", "items": {"enum": list(DIMENSIONS)}},
                                   "producer": {"type": ["string", "null"]},
                                   "content_type": {"type": ["string", "null"]},
                                   "windows": {"type": "array", "items": {"$ref": "#/components/schemas/Window"}},
                                   "next_cursor": {"type": ["string", "null"]},
                                   "next": {"type": ["string", "null"], "description": "URL of the next page"},
                                   "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "Summary": {"type": "object", "required": ["from", "to", *MEASURES, "producers", "final", "freshness"],
                    "properties": {"from": _TIME, "to": _TIME, "producer": {"type": ["string", "null"]},
                                   "content_type": {"type": ["string", "null"]}, **_measures(),
                                   "producers": _COUNT, "final": {"type": "boolean"},
                                   "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "Top": {"type": "object", "required": ["from", "to", "by", "dimension", "top", "freshness"],
                "properties": {"from": _TIME, "to": _TIME, "by": {"enum": list(TOP_MEASURES)},
                               "dimension": {"enum": list(DIMENSIONS)}, "limit": {"type": "integer"},
                               "top": {"type": "array", "items": {"type": "object", "properties": {
                                   "rank": {"type": "integer"}, "producer": {"type": "string"},
                                   "content_type": {"type": "string"}, **_measures()}}},
                               "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "Usage": {"type": "object", "required": ["producer", "from", "to", "totals", "by_content_type", "freshness"],
                  "properties": {"producer": {"type": "string"}, "from": _TIME, "to": _TIME,
                                 "totals": {"type": "object", "properties": _measures()},
                                 "by_content_type": {"type": "array", "items": {"type": "object", "properties": {
                                     "content_type": {"type": "string"}, **_measures()}}},
                                 "final": {"type": ["boolean", "null"]},
                                 "first_upload_at": {**_TIME, "type": ["string", "null"]},
                                 "last_upload_at": {**_TIME, "type": ["string", "null"]},
                                 "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "Duplicate": {"type": "object", "properties": {
            "image_id": {"type": "string", "format": "uuid"}, "duplicate_of": {"type": "string", "format": "uuid"},
            "duplicate_kind": {"enum": list(DUPLICATE_KINDS)}, "distance": {"type": "integer"},
            "producer": {"type": "string"}, "sha256": {"type": "string"}, "received_at": _TIME,
            "processed_at": _TIME}},
        "Duplicates": {"type": "object", "required": ["from", "to", "total", "duplicates", "freshness"],
                       "properties": {"from": _TIME, "to": _TIME, "kind": {"type": ["string", "null"]},
                                      "producer": {"type": ["string", "null"]}, "total": _COUNT, "exact": _COUNT,
                                      "near": _COUNT,
                                      "duplicates": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Duplicate"}},
                                      "next_cursor": {"type": ["string", "null"]}, "next": {"type": ["string", "null"]},
                                      "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "Image": {"type": "object", "required": ["image_id", "status", "freshness"], "properties": {
            "image_id": {"type": "string", "format": "uuid"},
            "status": {"enum": ["pending", "accepted", "duplicate", "rejected"],
                       "description": "pending: no processing result yet"},
            "producer": {"type": "string"}, "duplicate_of": {"type": "string", "format": "uuid"},
            "duplicate_kind": {"enum": list(DUPLICATE_KINDS)}, "distance": {"type": "integer"},
            "sha256": {"type": "string"}, "phash": {"type": ["string", "null"]}, "size": {"type": ["integer", "null"]},
            "content_type": {"type": ["string", "null"]}, "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]}, "storage_key": {"type": ["string", "null"]},
            "received_at": _TIME, "lateness": {"type": ["string", "null"]},
            "reject_reason": {"type": ["string", "null"]}, "processed_at": _TIME,
            "freshness": {"$ref": "#/components/schemas/Freshness"}}},
        "FreshnessAnswer": {"type": "object", "required": ["tables", "freshness"], "properties": {
            "tables": {"type": "object", "additionalProperties": freshness_table},
            "freshness": {"$ref": "#/components/schemas/Freshness"}}},
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/v1/images/{image_id}": {"get": {
            "summary": "An image's metadata and processing result (status, duplicate_of, duplicate_kind, distance)",
            "security": secured,
            "parameters": [_param("image_id", "the image_id of the upload receipt",
                                  {"type": "string", "format": "uuid"}, where="path", required=True)],
            "responses": _common({"200": _ok("The image (status pending until processed). For a producer "
                                             "token, another producer's image answers exactly like an unknown "
                                             "id: pending", "Image")}),
        }},
        "/v1/stats/uploads": {"get": {
            "summary": "Upload windows (uploads, bytes, duplicates, rejected, final) by minute, hour or day",
            "description": f"Longest range per interval (days): {span}. Windows without uploads are absent.",
            "security": secured,
            "parameters": [_FROM, _TO,
                           _param("interval", "window size (UTC)", {"enum": [i.value for i in Interval],
                                                                     "default": "hour"}),
                           _param("group_by", "comma-separated dimensions", {"type": "string",
                                                                              "example": "producer,content_type"}),
                           _PRODUCER, _CONTENT_TYPE, _limit(*SERIES_LIMIT), _CURSOR],
            "responses": _common({"200": _ok("A page of windows, oldest first", "Uploads")},
                                 forbidden="A producer token asked for another producer"),
        }},
        "/v1/stats/summary": {"get": {
            "summary": "Totals over whole minutes [from, to)",
            "description": f"Longest range: {MAX_TOTALS_SPAN.days} days; default the last day.",
            "security": secured,
            "parameters": [_FROM, _TO, _PRODUCER, _CONTENT_TYPE],
            "responses": _common({"200": _ok("Totals", "Summary")},
                                 forbidden="A producer token asked for another producer"),
        }},
        "/v1/stats/top": {"get": {
            "summary": "Producers (or content types) ranked by uploads or bytes over [from, to)",
            "security": secured,
            "parameters": [_FROM, _TO, _param("by", "ranking measure", {"enum": list(TOP_MEASURES),
                                                                         "default": "uploads"}),
                           _param("dimension", "what is ranked", {"enum": list(DIMENSIONS), "default": "producer"}),
                           _PRODUCER, _CONTENT_TYPE, _limit(*TOP_LIMIT)],
            "responses": _common({"200": _ok("The ranking", "Top")},
                                 forbidden="dimension=producer with a producer token, or another producer"),
        }},
        "/v1/duplicates": {"get": {
            "summary": "Duplicates received in [from, to), oldest first, with what each duplicates",
            "security": secured,
            "parameters": [_FROM, _TO, _param("kind", "exact or near", {"enum": list(DUPLICATE_KINDS)}),
                           _PRODUCER, _param("duplicate_of", "only copies of this image",
                                             {"type": "string", "format": "uuid"}),
                           _limit(*LIST_LIMIT), _CURSOR],
            "responses": _common({"200": _ok("A page of duplicates and the range's totals", "Duplicates")},
                                 forbidden="A producer token asked for another producer"),
        }},
        "/v1/usage/{producer}": {"get": {
            "summary": "A producer's usage over whole UTC days [from, to), by content type",
            "security": secured,
            "parameters": [_param("producer", "producer name", {"type": "string", "pattern": NAME_PATTERN.pattern},
                                  where="path", required=True),
                           _param("from", "start day (rounded down to UTC midnight); default 30 days before to", _TIME),
                           _param("to", "end (rounded up to UTC midnight); default now", _TIME)],
            "responses": _common({"200": _ok("Usage", "Usage")},
                                 forbidden="A producer token asked for another producer"),
        }},
        "/v1/freshness": {"get": {
            "summary": "How far behind real time each replicated table is",
            "security": secured,
            "responses": _common({"200": _ok("Per table freshness", "FreshnessAnswer")}),
        }},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: PostgreSQL reachable and the analytics views present",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgstream stats API",
            "version": "1",
            "description": (
                "The analysts' numbers over HTTP: every answer is read from the documented PostgreSQL views of "
                "schema analytics (so it equals what SQL gives) and carries the data's freshness. Producer tokens "
                "read only their own producer's data; analyst tokens read everything. Answers about closed windows "
                f"may be cached for {config.closed_max_age} s."
            ),
        },
        "servers": [{"url": f"http://{config.host}:{config.port}"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "imgstream token create --producer NAME | --analyst NAME"}},
            "schemas": schemas,
        },
        "paths": paths,
    }
