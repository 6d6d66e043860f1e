"""The domain's pure schema checker agrees with the reference validator (jsonschema) on the
event contract: same verdict, same first-error location, on valid, mutated and hostile events."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgstream.domain import events
from imgstream.domain.schema_check import UnsupportedSchema, compile_schema

SCHEMA = events.schema()
REFERENCE = jsonschema.Draft202012Validator(SCHEMA)
CHECK = compile_schema(SCHEMA)

VALID: dict[str, Any] = {
    "schema_version": 1, "event_type": "image.uploaded", "image_id": "0b7e6f1c-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
    "producer": "alice", "sha256": "a" * 64, "phash": "0123456789abcdef", "size": 10, "content_type": "image/png",
    "width": 1, "height": 2, "storage_key": "sha256/aa/aa/" + "a" * 64, "received_at": "2026-12-04T10:00:00.000Z",
    "idempotency_key": None, "gateway": "gw-1",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=70) | st.sampled_from(["image/png", "image.uploaded", "a" * 64, "0123456789abcdef"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


def reference_first(instance: Any) -> tuple[bool, str | None]:
    errors = sorted(REFERENCE.iter_errors(instance), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return True, None
    return False, "/".join(str(p) for p in errors[0].path) or "(root)"


def ours(instance: Any) -> tuple[bool, str | None]:
    error = CHECK(instance)
    return (True, None) if error is None else (False, error.field)


def test_a_valid_event_passes_both() -> None:
    assert ours(VALID) == reference_first(VALID) == (True, None)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(sorted(SCHEMA["properties"]) + ["extra"]), value=json_values,
       drop=st.sets(st.sampled_from(SCHEMA["required"]), max_size=2))
def test_mutated_events_get_the_reference_verdict_and_location(field: str, value: Any, drop: set[str]) -> None:
    event = {k: v for k, v in VALID.items() if k not in drop}
    event[field] = value
    verdict, where = reference_first(event)
    assert ours(event)[0] == verdict
    if not verdict:
        # a single broken rule is located exactly like the reference does
        if len(list(REFERENCE.iter_errors(event))) == 1:
            assert ours(event)[1] == where


@pytest.mark.parametrize("value, valid", [(1.0, True), (True, False), ("1", False), (0, False), (10**30, True)])
def test_integer_rules_follow_json_semantics(value: Any, valid: bool) -> None:
    event = dict(VALID, size=value)
    assert (CHECK(event) is None) is valid is reference_first(event)[0]


def test_messages_name_the_rule() -> None:
    error = CHECK(dict(VALID, size=0))
    assert error is not None and error.field == "size" and "minimum" in error.message
    error = CHECK({k: v for k, v in VALID.items() if k != "sha256"})
    assert error is not None and error.field == "(root)" and "'sha256' is a required property" in error.message


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string", "format": "email", "oneOf": []}}},
    {"type": "object", "allOf": []},
    {"type": "array"},
    {"type": "object", "properties": {"a": {"type": "strung"}}},
])
def test_keywords_it_cannot_enforce_are_refused_at_compile_time(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema(schema)


def test_the_schema_writes_the_producer_rule_of_the_domain() -> None:
    from imgstream.domain.producers import NAME_PATTERN, is_valid_name

    assert SCHEMA["properties"]["producer"]["pattern"] == NAME_PATTERN.pattern
    assert is_valid_name("alice.b-2_c") and not is_valid_name("alice\n") and not is_valid_name(7)
