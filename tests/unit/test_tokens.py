"""Signed bearer tokens: issue, verify, expiry, tampering, rotation, key file handling."""

from __future__ import annotations

import base64
import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from imgstream.domain.errors import Unauthorized
from imgstream.domain.tokens import (
    MAX_TTL,
    KeyRing,
    ReloadingKeyRing,
    bearer_token,
    ensure_key_file,
    keys_file_from_env,
    parse_ttl,
)

NOW = 1_800_000_000.0


def test_round_trip_producer_and_analyst() -> None:
    ring = KeyRing.generate(NOW)
    producer = ring.verify(ring.issue("cam-01", "producer", now=NOW), now=NOW + 1)
    assert (producer.name, producer.role, producer.key_id) == ("cam-01", "producer", ring.active)
    assert producer.may_upload and producer.may_read("cam-01") and not producer.may_read("cam-02")
    analyst = ring.verify(ring.issue("ana", "analyst", now=NOW), now=NOW + 1)
    assert analyst.is_analyst and not analyst.may_upload and analyst.may_read("cam-02")


def test_expiry_is_enforced() -> None:
    ring = KeyRing.generate(NOW)
    token = ring.issue("cam", "producer", ttl=timedelta(hours=1), now=NOW)
    assert ring.verify(token, now=NOW + 3599).name == "cam"
    with pytest.raises(Unauthorized, match="expired"):
        ring.verify(token, now=NOW + 3600)


def _swap_claims(token: str, **changes: object) -> str:
    prefix, kid, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join((prefix, kid, forged, sig))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: _swap_claims(t, sub="someone-else"),
        lambda t: _swap_claims(t, role="analyst"),
        lambda t: _swap_claims(t, exp=4_000_000_000),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.replace("isv1.", "isv2.", 1),
        lambda t: t + ".extra",
        lambda t: "",
        lambda t: "x" * 5000,
        lambda t: "isv1.nokey.e30.AAAA",
        lambda t: t.rsplit(".", 1)[0] + ".!!!",
    ],
)
def test_tampered_tokens_are_refused(mangle) -> None:
    ring = KeyRing.generate(NOW)
    with pytest.raises(Unauthorized):
        ring.verify(mangle(ring.issue("cam", "producer", now=NOW)), now=NOW)


def test_token_of_another_ring_is_refused() -> None:
    ring, other = KeyRing.generate(NOW), KeyRing.generate(NOW)
    token = other.issue("cam", "producer", now=NOW)
    with pytest.raises(Unauthorized):
        ring.verify(token, now=NOW)
    # Same kid, different secret: still refused (the signature is what counts).
    impostor = KeyRing({ring.active: other.key(other.active).__class__(ring.active, other.key(other.active).secret)},
                       ring.active)
    with pytest.raises(Unauthorized, match="signature"):
        ring.verify(impostor.issue("cam", "producer", now=NOW), now=NOW)


def test_rotation_keeps_old_tokens_until_their_key_is_retired() -> None:
    ring = KeyRing.generate(NOW)
    old_token = ring.issue("cam", "producer", now=NOW)
    rotated = ring.rotated(NOW + 10)
    assert rotated.active != ring.active and ring.active in rotated.key_ids
    new_token = rotated.issue("cam", "producer", now=NOW + 10)
    assert new_token.split(".")[1] == rotated.active
    assert rotated.verify(old_token, now=NOW + 11).key_id == ring.active
    retired = rotated.retired(ring.active)
    with pytest.raises(Unauthorized, match="unknown signing key"):
        retired.verify(old_token, now=NOW + 12)
    assert retired.verify(new_token, now=NOW + 12).name == "cam"


def test_the_active_key_cannot_be_retired() -> None:
    ring = KeyRing.generate(NOW)
    with pytest.raises(ValueError, match="active"):
        ring.retired(ring.active)


@pytest.mark.parametrize("name", ["", "with space", "-leading", "a" * 65, "ünïcode", "a/b", "alice\n"])
def test_invalid_names_are_not_issued(name: str) -> None:
    with pytest.raises(ValueError):
        KeyRing.generate(NOW).issue(name, "producer", now=NOW)


def test_unknown_role_and_excessive_ttl_are_not_issued() -> None:
    ring = KeyRing.generate(NOW)
    with pytest.raises(ValueError):
        ring.issue("cam", "admin", now=NOW)
    with pytest.raises(ValueError):
        ring.issue("cam", "producer", ttl=MAX_TTL + timedelta(days=1), now=NOW)


def test_secrets_never_show_in_repr() -> None:
    ring = KeyRing.generate(NOW)
    secret = ring.key(ring.active).secret
    for text in (repr(ring), repr(ring.key(ring.active))):
        assert secret.hex() not in text and base64.b64encode(secret).decode() not in text


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token-keys.json"
    ring = ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = ensure_key_file(path)  # exists: loaded, not replaced
    assert again.active == ring.active
    token = ring.issue("cam", "producer", now=NOW)
    assert KeyRing.load(path).verify(token, now=NOW).name == "cam"
    rotated = again.rotated()
    rotated.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load(path).key_ids == rotated.key_ids


def test_malformed_key_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"active": "k1", "keys": [{"kid": "k1", "secret": "not base64!"}]}')
    with pytest.raises(ValueError, match="malformed key file"):
        KeyRing.load(path)


def test_reloading_ring_picks_up_a_rotation_and_survives_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = ensure_key_file(path)
    clock = [0.0]
    live = ReloadingKeyRing(path, check_interval=1.0, clock=lambda: clock[0])
    rotated = ring.rotated()
    rotated.save(path)
    token = rotated.issue("cam", "producer")
    with pytest.raises(Unauthorized):
        live.verify(token)  # not re-checked yet: within the interval
    clock[0] = 1.5
    assert live.verify(token).key_id == rotated.active
    path.write_text("{ truncated")
    clock[0] = 3.0
    assert live.verify(token).name == "cam"  # previous keys kept
    assert live.last_error and "cannot reload" in live.last_error


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer abc", True), ("bearer abc", True), ("  Bearer   abc  ", True), (None, False), ("", False),
     ("Basic dXNlcjpwYXNz", False), ("Bearer", False), ("Bearer   ", False)],
)
def test_bearer_header_parsing(header: str | None, ok: bool) -> None:
    if ok:
        assert bearer_token(header) == "abc"
    else:
        with pytest.raises(Unauthorized):
            bearer_token(header)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("45m", 2700), ("12h", 43200), ("30d", 2592000),
                                               ("2w", 1209600)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1y", "ten"])
def test_parse_ttl_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_keys_file_from_env() -> None:
    assert keys_file_from_env({"IMGSTREAM_TOKEN_KEYS_FILE": "/x/k.json"}) == Path("/x/k.json")
    assert keys_file_from_env({}) == Path(".stack/secrets/token-keys.json")


@pytest.mark.parametrize("suffix", ["!!!!", "=", "==", " ", "\n", "A", "$", "+/"])
def test_only_the_exact_base64url_text_verifies(suffix: str) -> None:
    """Python's base64 decoder skips characters outside the alphabet and ignores extra bits;
    a token is accepted only in the one spelling it was issued in."""
    ring = KeyRing.generate(NOW)
    token = ring.issue("cam", "producer", now=NOW)
    assert ring.verify(token, now=NOW).name == "cam"
    with pytest.raises(Unauthorized):
        ring.verify(token + suffix, now=NOW)


def test_a_signature_with_non_zero_padding_bits_is_refused() -> None:
    ring = KeyRing.generate(NOW)
    token = ring.issue("cam", "producer", now=NOW)
    head, signature = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # a 32-byte HMAC is 43 characters: the last one carries 4 data bits and 2 unused ones
    last = alphabet.index(signature[-1])
    twin = signature[:-1] + alphabet[last | 1]
    assert twin != signature and base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(signature + "=")
    with pytest.raises(Unauthorized):
        ring.verify(f"{head}.{twin}", now=NOW)


def test_one_token_can_be_revoked_by_id_and_the_revocation_survives_the_key_file(tmp_path: Path) -> None:
    ring = KeyRing.generate(NOW)
    kept, gone = ring.issue("cam", "producer", now=NOW), ring.issue("cam", "producer", now=NOW)
    gone_id = ring.verify(gone, now=NOW).token_id
    path = tmp_path / "keys.json"
    ring.with_revoked(gone_id, now=NOW).rotated(NOW).save(path)
    loaded = KeyRing.load(path)
    assert loaded.revoked_ids == [gone_id]
    assert loaded.verify(kept, now=NOW + 1).name == "cam"
    with pytest.raises(Unauthorized, match="revoked"):
        loaded.verify(gone, now=NOW + 1)


def test_revocations_are_forgotten_once_no_token_could_still_be_alive() -> None:
    ring = KeyRing.generate(NOW).with_revoked("00112233aabbccdd", now=NOW)
    later = NOW + MAX_TTL.total_seconds() + 1
    assert ring.with_revoked("ffeeddccbbaa9988", now=later).revoked_ids == ["ffeeddccbbaa9988"]
    with pytest.raises(ValueError):
        ring.with_revoked("not-an-id", now=NOW)
