import base64
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from imgstream.domain import events
from imgstream.domain.cleaning import (
    MAX_DLQ_RAW_BYTES,
    MAX_EVENT_BYTES,
    Cleaned,
    DeadLetter,
    Heartbeat,
    Source,
    clean,
    encode_raw,
    heartbeat_value,
    refuse,
)
from imgstream.domain.errors import InvalidEvent

SEEN = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
SRC = Source("images.uploaded", 2, 41, 1_700_000_000_000)


def event(**over):
    e = {
        "schema_version": 1,
        "event_type": "image.uploaded",
        "image_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "producer": "alice",
        "sha256": "ab" * 32,
        "phash": "00ff00ff00ff00ff",
        "size": 1234,
        "content_type": "image/png",
        "width": 10,
        "height": 20,
        "storage_key": "sha256/ab/abab.png",
        "received_at": "2026-11-26T10:00:00.123Z",
    }
    e.update(over)
    return e


def raw(**over):
    return json.dumps(event(**over)).encode()


def test_valid_event_is_cleaned_with_event_time():
    out = clean(raw(), SRC, seen_at=SEEN)
    assert isinstance(out, Cleaned)
    assert out.event.image_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert out.event_time == int(datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=timezone.utc).timestamp() * 1000)
    assert out.source == SRC


def test_str_input_is_accepted():
    assert isinstance(clean(raw().decode(), SRC), Cleaned)


def test_normalisation():
    out = clean(
        raw(
            sha256="AB" * 32,
            phash="00FF00FF00FF00FF",
            image_id="0F8FAD5B-D9CB-469F-A165-70867728950E",
            content_type="Image/JPG; q=1",
            received_at="2026-11-26T12:00:00.5+02:00",
        ),
        SRC,
    )
    assert isinstance(out, Cleaned)
    e = out.event
    assert e.sha256 == "ab" * 32 and e.phash == "00ff00ff00ff00ff"
    assert e.image_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert e.content_type == "image/jpeg"
    assert e.received_at == "2026-11-26T10:00:00.500Z"


def test_hex_fields_lose_ascii_white_space_only():
    """The job's SQL routes a record by the SHA-256 before cleaning sees it, and strips what
    Java's regex ``\\s`` matches: cleaning strips exactly that, so both read one SHA-256."""
    tabbed = clean(raw(sha256="\t " + "AB" * 32 + "\r\n\x0b\x0c"), SRC)
    assert isinstance(tabbed, Cleaned) and tabbed.event.sha256 == "ab" * 32
    for space in ("\u00a0", "\u2003", "\x1c"):  # Unicode white space: str.strip() would take it, \\s does not
        out = clean(raw(sha256=space + "ab" * 32), SRC)
        assert isinstance(out, DeadLetter) and out.reason == "schema", space


def test_a_refused_event_is_a_dead_letter_attributed_like_any_other():
    out = refuse(raw(producer="bob"), SRC, "misrouted", "belongs to shard 3", seen_at=SEEN)
    assert (out.reason, out.code, out.error) == ("misrouted", "invalid_event", "belongs to shard 3")
    assert (out.image_id, out.producer, out.content_type) == ("0f8fad5b-d9cb-469f-a165-70867728950e", "bob", "image/png")
    assert out.source == SRC and json.loads(out.raw)["producer"] == "bob"
    assert refuse(b"\xff", SRC, "misrouted", "x").producer == "unknown"  # nothing readable: attributed as such


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[1,2]", "not_an_object"),
        (json.dumps(event(schema_version=2)).encode(), "unknown_version"),
        (json.dumps(event(size=0)).encode(), "schema"),
        (json.dumps(event(content_type="image/svg+xml")).encode(), "schema"),
        (json.dumps(event(received_at="2026-11-26T10:00:00")).encode(), "schema"),
        (json.dumps(event(extra=1)).encode(), "schema"),
        (b"x" * (MAX_EVENT_BYTES + 1), "too_large"),
    ],
)
def test_bad_values_become_dead_letters(value, reason):
    out = clean(value, SRC, seen_at=SEEN)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert out.code == "invalid_event"
    assert out.error
    d = out.to_dict()
    assert {"reason", "code", "error", "raw", "topic", "partition", "offset", "seen_at"} <= set(d)
    assert (d["topic"], d["partition"], d["offset"]) == ("images.uploaded", 2, 41)
    assert d["seen_at"] == "2026-11-26T12:00:00.000Z"
    json.loads(out.to_json())


def test_missing_field_names_the_field():
    e = event()
    del e["sha256"]
    out = clean(json.dumps(e).encode(), SRC)
    assert isinstance(out, DeadLetter) and "sha256" in out.error


def test_dead_letter_keeps_attribution_when_possible():
    out = clean(raw(size=-5), SRC)
    assert isinstance(out, DeadLetter)
    assert out.image_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert out.producer == "alice" and out.content_type == "image/png"
    assert out.event_time == clean(raw(), SRC).event_time


def test_dead_letter_without_attribution_gets_deterministic_id_and_kafka_time():
    a = clean(b"garbage", SRC)
    b = clean(b"other garbage", SRC)
    c = clean(b"garbage", Source("images.uploaded", 2, 42, 0))
    assert isinstance(a, DeadLetter) and isinstance(b, DeadLetter) and isinstance(c, DeadLetter)
    assert a.image_id == b.image_id != c.image_id
    assert (a.producer, a.content_type, a.event_time) == ("unknown", "unknown", SRC.timestamp)


def test_raw_encoding_text_vs_base64():
    assert encode_raw(b"hello") == ("hello", "text", False)
    text, enc, trunc = encode_raw(b"\xff\x00binary")
    assert enc == "base64" and base64.b64decode(text) == b"\xff\x00binary" and not trunc
    big = ("é" * MAX_DLQ_RAW_BYTES).encode()
    text, enc, trunc = encode_raw(big)
    assert enc == "text" and trunc and len(text.encode()) <= MAX_DLQ_RAW_BYTES


@given(st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300)))
def test_clean_never_raises(value):
    out = clean(value, SRC)
    assert isinstance(out, (Cleaned, Heartbeat, DeadLetter))


def test_heartbeats_carry_only_time():
    out = clean(heartbeat_value(SEEN), SRC)
    assert out == Heartbeat(int(SEEN.timestamp() * 1000), SRC)
    bad = clean(b'{"event_type": "stream.heartbeat", "received_at": "yesterday"}', SRC)
    assert isinstance(bad, DeadLetter) and bad.reason == "schema"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(sorted(event())), json_values, max_size=6))
def test_clean_never_raises_on_mangled_events(over):
    out = clean(json.dumps(event(**over)).encode(), SRC)
    assert isinstance(out, (Cleaned, Heartbeat, DeadLetter))
    if isinstance(out, DeadLetter):
        json.loads(out.to_json())


@given(
    st.dictionaries(st.sampled_from(sorted(event())), json_values, max_size=4),
    st.sets(st.sampled_from(sorted(event())), max_size=2),
    st.dictionaries(st.sampled_from(["idempotency_key", "gateway", "extra", "Size"]), json_values, max_size=2),
)
def test_validate_accepts_exactly_what_the_reference_validator_accepts(over, dropped, added):
    """The domain checks events in pure Python; the schema's reference validator (jsonschema)
    must agree on every verdict (received_at's date-time is checked by validate() on top)."""
    import jsonschema

    data = {k: v for k, v in event(**over, **added).items() if k not in dropped}
    reference = jsonschema.Draft202012Validator(events.schema()).is_valid(data)
    try:
        events.validate(data)
        ours = True
    except InvalidEvent:
        ours = False
    if reference and isinstance(data.get("received_at"), str):
        try:
            events.parse_time(data["received_at"])
        except ValueError:
            reference = False
    if isinstance(data.get("schema_version"), bool):
        reference = False  # JSON true is not the version 1 (validate refuses it as unknown_version)
    assert ours == reference, data


def test_a_schema_error_names_the_field_and_the_rule():
    with pytest.raises(InvalidEvent) as err:
        events.validate(event(size=0))
    assert err.value.details["field"] == "size" and "minimum" in err.value.message
