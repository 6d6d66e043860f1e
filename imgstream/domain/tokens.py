"""Signed bearer tokens: issued by the CLI, verified by every HTTP service without a database.

A token is ``isv1.<kid>.<payload>.<signature>``:

* ``kid`` names the signing key in the key file, so keys can be rotated: a new key becomes the
  *active* one (new tokens are signed with it) while older keys keep verifying the tokens they
  signed until they are retired.
* ``payload`` is base64url JSON ``{"sub", "role", "iat", "exp", "jti"}``; ``role`` is
  ``producer`` (may upload and read its own statistics) or ``analyst`` (reads everything).
* ``signature`` is HMAC-SHA256 over ``isv1.<kid>.<payload>`` with the key's secret.

The key file is JSON, mode 0600, holding every key's secret; it never leaves the host. Services
re-read it when it changes (:class:`ReloadingKeyRing`), so a rotation needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Final, Mapping, Protocol

from imgstream.domain.errors import Unauthorized
from imgstream.domain.producers import NAME_PATTERN
from imgstream.domain.timefmt import format_seconds

ROLE_PRODUCER: Final = "producer"
ROLE_ANALYST: Final = "analyst"
ROLES: Final = frozenset({ROLE_PRODUCER, ROLE_ANALYST})


#: Where the local stack keeps the key file (relative to the repository root) and the variable
#: that overrides it. Read by entry points only.
DEFAULT_KEYS_FILE: Final = Path(".stack/secrets/token-keys.json")
KEYS_FILE_ENV: Final = "IMGSTREAM_TOKEN_KEYS_FILE"

#: Default token lifetime: long enough for a batch producer's config to live a month, short enough
#: that a leaked token dies on its own; rotate keys to kill every token at once.
DEFAULT_TTL: Final = timedelta(days=30)
#: Upper bound on a token's lifetime, so no token outlives a yearly key rotation.
MAX_TTL: Final = timedelta(days=366)
#: Tokens are ~200 bytes; anything far longer is garbage and not worth decoding.
MAX_TOKEN_LENGTH: Final = 2048

_PREFIX: Final = "isv1"
_SECRET_BYTES: Final = 32  # 256-bit HMAC keys, the SHA-256 block-size sweet spot


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: Unpadded base64url, nothing else: Python's decoder would skip other characters, so
#: ``<token>!!!!`` verified like ``<token>``.
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url strictly: its alphabet only, and only the canonical spelling
    (the unused low bits of the last character must be zero), so one token has one text."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data



@dataclass(frozen=True)
class SigningKey:
    """One HMAC key. The secret never appears in ``repr``."""

    kid: str
    secret: bytes = field(repr=False)
    created_at: str = ""

    @classmethod
    def generate(cls, now: float | None = None) -> "SigningKey":
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d")
        return cls(kid=f"k{stamp}-{secrets.token_hex(3)}", secret=secrets.token_bytes(_SECRET_BYTES),
                   created_at=format_seconds(now))


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    name: str
    role: str
    key_id: str
    expires_at: int
    token_id: str = ""

    @property
    def is_analyst(self) -> bool:
        return self.role == ROLE_ANALYST

    @property
    def may_upload(self) -> bool:
        return self.role == ROLE_PRODUCER

    def may_read(self, producer: str) -> bool:
        """Analysts read every producer's data; a producer reads only its own."""
        return self.is_analyst or self.name == producer


class TokenVerifier(Protocol):
    """What a service needs to check bearer tokens: a :class:`KeyRing` or a :class:`ReloadingKeyRing`."""

    def verify(self, token: str, *, now: float | None = None) -> Principal: ...


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid producer/analyst name, else raise ``ValueError``."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_ttl(text: str) -> timedelta:
    """``"90"`` (seconds), ``"45m"``, ``"12h"``, ``"30d"`` or ``"2w"`` as a duration."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use e.g. 3600, 45m, 12h, 30d, 2w")
    amount, unit = int(match.group(1)), match.group(2) or "s"
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    if seconds <= 0:
        raise ValueError("a token lifetime must be positive")
    return timedelta(seconds=seconds)


class KeyRing:
    """The set of signing keys and which one signs new tokens. Immutable; changes return a copy."""

    def __init__(self, keys: Mapping[str, SigningKey], active: str, revoked: Mapping[str, int] | None = None) -> None:
        if active not in keys:
            raise ValueError(f"active key {active!r} is not in the key ring")
        self._keys = dict(keys)
        self.active = active
        #: Revoked token ids (``jti``) -> until when to remember them (epoch seconds).
        self._revoked: dict[str, int] = dict(revoked or {})

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active!r}, kids={sorted(self._keys)!r})"

    @property
    def key_ids(self) -> list[str]:
        """Every key id, oldest first."""
        return [k.kid for k in sorted(self._keys.values(), key=lambda k: (k.created_at, k.kid))]

    def key(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def generate(cls, now: float | None = None) -> "KeyRing":
        """A new ring with one random key."""
        key = SigningKey.generate(now)
        return cls({key.kid: key}, key.kid)

    def rotated(self, now: float | None = None) -> "KeyRing":
        """A copy with a fresh active key; the old keys still verify what they signed."""
        key = SigningKey.generate(now)
        while key.kid in self._keys:  # same day and a 24-bit collision: draw again
            key = SigningKey.generate(now)
        return KeyRing({**self._keys, key.kid: key}, key.kid, self._revoked)

    def retired(self, kid: str) -> "KeyRing":
        """A copy without ``kid``: every token it signed stops verifying."""
        if kid == self.active:
            raise ValueError(f"{kid} is the active key; rotate first, then retire it")
        if kid not in self._keys:
            raise ValueError(f"no key {kid!r} in the key ring")
        return KeyRing({k: v for k, v in self._keys.items() if k != kid}, self.active, self._revoked)

    @property
    def revoked_ids(self) -> list[str]:
        """Ids of the tokens revoked one by one (and not yet past the longest token lifetime)."""
        return sorted(self._revoked)

    def with_revoked(self, token_id: str, now: float | None = None) -> "KeyRing":
        """A copy that refuses the token with id ``token_id`` (its ``jti``), whichever key
        signed it. The id is remembered for :data:`MAX_TTL`, the longest any token lives;
        entries older than that are dropped, so the list stays as long as the live tokens'."""
        if not _TOKEN_ID.fullmatch(token_id):
            raise ValueError(f"not a token id: {token_id!r} (16 hex digits, see `imgstream token verify`)")
        now = time.time() if now is None else now
        kept = {jti: until for jti, until in self._revoked.items() if until > now}
        kept[token_id] = int(now + MAX_TTL.total_seconds())
        return KeyRing(self._keys, self.active, kept)

    # -- persistence ----------------------------------------------------------------------------

    def to_json(self) -> str:
        body = {
            "version": 1,
            "active": self.active,
            "keys": [
                {"kid": k.kid, "secret": base64.b64encode(k.secret).decode(), "created_at": k.created_at}
                for k in (self._keys[kid] for kid in self.key_ids)
            ],
            "revoked": dict(sorted(self._revoked.items())),
        }
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "KeyRing":
        try:
            data = json.loads(text)
            keys = {
                entry["kid"]: SigningKey(entry["kid"], base64.b64decode(entry["secret"], validate=True),
                                         entry.get("created_at", ""))
                for entry in data["keys"]
            }
            revoked = {str(jti): int(until) for jti, until in data.get("revoked", {}).items()}
            return cls(keys, data["active"], revoked)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed key file: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> "KeyRing":
        """Read a key file (see :func:`ensure_key_file` to create one)."""
        return cls.from_json(Path(path).read_text())

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename) with mode 0600 in a 0700 directory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".token-keys.", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- tokens ---------------------------------------------------------------------------------

    def issue(self, name: str, role: str, *, ttl: timedelta = DEFAULT_TTL, now: float | None = None) -> str:
        """A token for ``name`` with ``role``, signed by the active key, valid for ``ttl``."""
        validate_name(name)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {sorted(ROLES)}")
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ValueError(f"token lifetime must be between 1 s and {MAX_TTL.days} days")
        now = time.time() if now is None else now
        claims = {"sub": name, "role": role, "iat": int(now), "exp": int(now + ttl.total_seconds()),
                  "jti": secrets.token_hex(8)}
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        key = self._keys[self.active]
        signing_input = f"{_PREFIX}.{key.kid}.{payload}"
        return f"{signing_input}.{_b64(_sign(key.secret, signing_input))}"

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal a token speaks for; :class:`Unauthorized` if it is not valid now."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("invalid token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX:
            raise Unauthorized("invalid token: not an imgstream token")
        _, kid, payload, signature = parts
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("invalid token: unknown signing key (retired by a rotation?)")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise Unauthorized("invalid token: bad signature") from None
        if not hmac.compare_digest(given, _sign(key.secret, f"{_PREFIX}.{kid}.{payload}")):
            raise Unauthorized("invalid token: bad signature")
        claims = _claims(payload)
        if claims.get("jti") in self._revoked:
            raise Unauthorized("token revoked")
        now = time.time() if now is None else now
        if claims["exp"] <= now:
            raise Unauthorized(f"token expired at {format_seconds(claims['exp'])}")
        return Principal(name=claims["sub"], role=claims["role"], key_id=kid,
                         expires_at=claims["exp"], token_id=claims.get("jti", ""))


#: A token id as :meth:`KeyRing.issue` makes it (``jti``).
_TOKEN_ID: Final = re.compile(r"[0-9a-f]{16}")


def _sign(secret: bytes, signing_input: str) -> bytes:
    return hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()


def _claims(payload: str) -> dict[str, Any]:
    # Only reached after the signature matched, so a failure here means a signing bug or a
    # leaked key, not a random client; still, fail closed with a 401.
    try:
        claims = json.loads(_unb64(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Unauthorized("invalid token: unreadable claims") from None
    if (
        not isinstance(claims, dict)
        or not isinstance(claims.get("sub"), str)
        or not NAME_PATTERN.fullmatch(claims["sub"])
        or claims.get("role") not in ROLES
        or not isinstance(claims.get("exp"), int)
        or not isinstance(claims.get("jti", ""), str)
    ):
        raise Unauthorized("invalid token: unexpected claims")
    return claims


def ensure_key_file(path: Path) -> KeyRing:
    """Load the key file at ``path``, creating it with one random key (mode 0600) if missing."""
    path = Path(path)
    if path.exists():
        return KeyRing.load(path)
    ring = KeyRing.generate()
    ring.save(path)
    return ring


def keys_file_from_env(env: Mapping[str, str]) -> Path:
    """The key-file path an entry point should use: ``$IMGSTREAM_TOKEN_KEYS_FILE`` or the default."""
    return Path(env.get(KEYS_FILE_ENV) or DEFAULT_KEYS_FILE)


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header value; :class:`Unauthorized` if absent."""
    if not authorization:
        raise Unauthorized("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must use the Bearer scheme: 'Authorization: Bearer <token>'")
    return token.strip()


class ReloadingKeyRing:
    """A key ring backed by a file, re-read when the file changes (checked at most every
    ``check_interval`` seconds), so ``imgstream token rotate`` takes effect without restarts.

    A missing or malformed file keeps the last good ring (and ``last_error`` says why): a botched
    edit must not lock every producer out.
    """

    def __init__(self, path: Path, *, check_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self.last_error: str | None = None
        self._ring = KeyRing.load(self.path)
        self._stamp = self._file_stamp()
        self._checked_at = clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    @property
    def ring(self) -> KeyRing:
        """The current ring, reloading first if the file changed."""
        now = self._clock()
        if now - self._checked_at >= self.check_interval:
            self._checked_at = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._ring = KeyRing.load(self.path)
                    self._stamp = stamp
                    self.last_error = None
                except (OSError, ValueError) as exc:
                    self.last_error = f"keeping previous keys, cannot reload {self.path}: {exc}"
        return self._ring

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        return self.ring.verify(token, now=now)
