"""Duplicate decisions: replay drop, exact (SHA-256) and near (perceptual hash) duplicates.

Every decision here is a small pure function of *(the image, the state its key holds)* that
returns *(the decision, the new state)*. The Flink job keeps that state in keyed state and
only wires the functions; :class:`Deduplicator` wires them over plain dicts and is the
reference implementation the tests (and the job's tests) compare against.

Semantics
---------
* **Order.** "Earlier" means *decided earlier*. The Flink job decides images of one key in
  event-time order (``received_at``, then ``image_id``) once the watermark has passed them, so
  a replay after a failure reaches the same verdicts. A *late* image (behind the watermark
  on arrival) is decided on arrival against what is already known: it can be a duplicate of
  an image with a later ``received_at``, never the other way round (history is not rewritten).
* **Replay drop.** The same ``image_id`` seen again (a producer or gateway retry) is dropped:
  it is processed once.
* **Exact.** The first image with a SHA-256 (within the producer's scope, below) is
  ``accepted``; later ones are ``duplicate``/``exact`` with ``duplicate_of`` = that first image
  and ``distance`` 0.
* **Near.** Among earlier images within ``near_max_distance`` bits (found through the band
  index, which never misses one: see :mod:`imgstream.domain.hashing`), the *closest* is the original; ties go to the earliest
  ``(event_time, image_id)``. Every image that is not an exact duplicate is registered as a
  candidate, so ``duplicate_of`` of a near duplicate may itself be a near duplicate (the link
  always names a concrete earlier image and its pairwise ``distance``).
* **Scope (per-producer policy).** ``global``: a producer's uploads are checked against
  everyone's images; ``producer``: only against its own. Every image is registered in both
  indexes, so the scope only chooses where to *look*. ``near=False`` opts a producer out of
  near-duplicate detection (exact still applies).
* **TTL.** State ages by *event time*, so replays decide the same way: an exact original
  older than ``exact_ttl_ms`` (measured from the original's event time to the new image's)
  no longer counts and the new image becomes the first again; near candidates older than
  ``near_ttl_ms`` are pruned; replay marks are forgotten after ``replay_ttl_ms`` (a retry later
  than that is processed as a new upload, with the same verdict logic). The job also sets
  Flink state TTL (processing time, a multiple of these) purely to garbage-collect keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from sys import intern
from enum import Enum
from typing import Any, Iterable, Mapping, MutableMapping, NamedTuple

from imgstream.domain.hashing import BandKey, BandPlan, parse_hash

STATUS_PENDING = "pending"
STATUS_ACCEPTED = "accepted"
STATUS_DUPLICATE = "duplicate"
STATUS_REJECTED = "rejected"
KIND_EXACT = "exact"
KIND_NEAR = "near"

#: Default near-duplicate threshold in bits of a 64-bit pHash. Re-encoded/resized copies of
#: one photo typically land within 0-6 bits while unrelated photos sit near 32.
DEFAULT_NEAR_MAX_DISTANCE = 6
#: Cap on candidates kept per band key. Degenerate hashes (blank or single-colour images all
#: hash alike) would otherwise grow one key without bound; the oldest candidates go first.
#: With 16-bit bands a key of random hashes holds ~15 at 1,000,000 images: only such
#: degenerate keys reach the cap.
MAX_BAND_CANDIDATES = 512
DAY_MS = 24 * 3600 * 1000
#: Default TTLs (event time). A week of exact/near memory bounds state for ~1000 uploads/s.
DEFAULT_EXACT_TTL_MS = 7 * DAY_MS
DEFAULT_NEAR_TTL_MS = 7 * DAY_MS
#: Producer retries arrive within minutes; a day is generous.
DEFAULT_REPLAY_TTL_MS = 1 * DAY_MS


class Scope(str, Enum):
    """Where a producer's uploads look for their originals."""

    GLOBAL = "global"
    PRODUCER = "producer"


@dataclass(frozen=True)
class ProducerPolicy:
    """Dedup policy of one producer."""

    scope: Scope = Scope.GLOBAL
    near: bool = True


@dataclass(frozen=True)
class DedupPolicy:
    """All dedup knobs; built once from config and shipped to the job's functions."""

    near_max_distance: int = DEFAULT_NEAR_MAX_DISTANCE
    default: ProducerPolicy = ProducerPolicy()
    producers: Mapping[str, ProducerPolicy] = field(default_factory=dict)
    exact_ttl_ms: int = DEFAULT_EXACT_TTL_MS
    near_ttl_ms: int = DEFAULT_NEAR_TTL_MS
    replay_ttl_ms: int = DEFAULT_REPLAY_TTL_MS
    max_band_candidates: int = MAX_BAND_CANDIDATES
    #: Bands of the near-duplicate index; ``None`` = :func:`imgstream.domain.hashing.default_bands`.
    #: Changing it re-bands a stored index on the next start (:meth:`Deduplicator.reband`).
    near_bands: int | None = None

    def __post_init__(self) -> None:
        self.band_plan  # validates the threshold and the band count
        if self.max_band_candidates < 1:
            raise ValueError("max_band_candidates must be >= 1")
        for name in ("exact_ttl_ms", "near_ttl_ms", "replay_ttl_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    @cached_property
    def band_plan(self) -> BandPlan:
        """Band keys of the near-duplicate index: where an image registers and looks."""
        return BandPlan.for_distance(self.near_max_distance, self.near_bands)

    def for_producer(self, producer: str) -> ProducerPolicy:
        """The policy that applies to ``producer``."""
        return self.producers.get(producer, self.default)

    @staticmethod
    def parse_producers(spec: str) -> tuple[ProducerPolicy, dict[str, ProducerPolicy]]:
        """Parse ``"*=global;alice=producer;bob=global,no-near"`` into (default, overrides).

        Each entry is ``NAME=SCOPE[,near|,no-near]``; ``*`` names the default. Empty -> defaults.
        """
        default = ProducerPolicy()
        overrides: dict[str, ProducerPolicy] = {}
        for entry in filter(None, (part.strip() for part in spec.split(";"))):
            name, sep, rest = entry.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"bad dedup policy entry {entry!r} (want NAME=SCOPE[,no-near])")
            words = [w.strip() for w in rest.split(",") if w.strip()]
            if not words:
                raise ValueError(f"bad dedup policy entry {entry!r}: no scope")
            try:
                scope = Scope(words[0])
            except ValueError:
                raise ValueError(f"unknown scope {words[0]!r} in {entry!r}") from None
            near = True
            for flag in words[1:]:
                if flag not in ("near", "no-near"):
                    raise ValueError(f"unknown flag {flag!r} in {entry!r}")
                near = flag == "near"
            policy = ProducerPolicy(scope, near)
            if name.strip() == "*":
                default = policy
            else:
                overrides[name.strip()] = policy
        return default, overrides


class ImageRef(NamedTuple):
    """What dedup needs to know of one upload. ``event_time`` is epoch milliseconds. A named
    tuple, like :class:`Seen`: one is built per image and near shard, at 0.4 of a dataclass's cost."""

    image_id: str
    producer: str
    sha256: str
    phash: int
    event_time: int

    @property
    def order(self) -> tuple[int, str]:
        """Deterministic position in event-time order (tie-break on ``image_id``)."""
        return (self.event_time, self.image_id)


class Seen(NamedTuple):
    """An image remembered in state: enough to name it as an original.

    A named tuple, not a dataclass: one is built for every band candidate of every image
    (the hot path of near dedup), and building a tuple from the stored list costs a tenth of
    a frozen dataclass. Its fields are in the order of the stored list.
    """

    image_id: str
    producer: str
    event_time: int
    phash: int = 0

    @classmethod
    def of(cls, image: ImageRef) -> "Seen":
        """What the index stores of ``image`` (every stored one is made here), the producer's
        name interned: each near shard decodes its own copy of an image, and one copy of the
        name per candidate was ~16 % of the near index's memory."""
        return cls(image.image_id, intern(image.producer), image.event_time, image.phash)

    def to_list(self) -> list[Any]:
        """Compact, JSON-able form for Flink state."""
        return list(self)

    @classmethod
    def from_list(cls, data: list[Any]) -> "Seen":
        # the lists come from to_list, so their fields already have the right types
        return cls._make(data)


#: Where a stored candidate (a :meth:`Seen.to_list`) keeps its pHash.
_PHASH = Seen._fields.index("phash")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The processing result of one image."""

    image_id: str
    status: str
    duplicate_of: str | None = None
    duplicate_kind: str | None = None
    distance: int | None = None

    @classmethod
    def accepted(cls, image_id: str) -> "Verdict":
        return cls(image_id, STATUS_ACCEPTED)

    @classmethod
    def exact(cls, image_id: str, original: str) -> "Verdict":
        return cls(image_id, STATUS_DUPLICATE, original, KIND_EXACT, 0)

    @classmethod
    def near(cls, image_id: str, original: str, distance: int) -> "Verdict":
        return cls(image_id, STATUS_DUPLICATE, original, KIND_NEAR, distance)

    @classmethod
    def rejected(cls, image_id: str) -> "Verdict":
        return cls(image_id, STATUS_REJECTED)

    def to_dict(self) -> dict[str, Any]:
        """The verdict's fields by name (the columns of ``images`` it decides)."""
        return {name: getattr(self, name) for name in _VERDICT_FIELDS}


_VERDICT_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Verdict))


# --- replay drop (state keyed by image_id: the event time of the first sighting) -----------


def replay_decision(first_seen_at: int | None, image: ImageRef, ttl_ms: int) -> tuple[bool, int]:
    """Whether ``image`` is a replay of an already processed ``image_id``; the new state.

    ``first_seen_at`` is the event time stored for this ``image_id`` (``None`` = never seen).
    A mark older than ``ttl_ms`` (event time) is forgotten and the image is processed anew.
    """
    if first_seen_at is not None and abs(image.event_time - first_seen_at) <= ttl_ms:
        return True, first_seen_at
    return False, image.event_time


# --- exact dedup (state keyed by sha256) ---------------------------------------------------


class ExactDecision(NamedTuple):
    """Outcome of :func:`exact_decision`: the original (if a duplicate) and the new state."""

    original: Seen | None
    first_global: Seen
    first_own: Seen


def _alive(seen: Seen | None, image: ImageRef, ttl_ms: int) -> Seen | None:
    if seen is None or image.event_time - seen.event_time > ttl_ms:
        return None
    return seen


def exact_decision(
    image: ImageRef,
    scope: Scope,
    first_global: Seen | None,
    first_own: Seen | None,
    ttl_ms: int = DEFAULT_EXACT_TTL_MS,
) -> ExactDecision:
    """Decide ``image`` against the first image with its SHA-256 (globally / by its producer).

    ``first_global`` is the first image with this content from anyone, ``first_own`` the
    first from ``image.producer``; both are registered independently of the scope so that
    switching a producer's scope later needs no state migration.
    """
    first_global = _alive(first_global, image, ttl_ms)
    first_own = _alive(first_own, image, ttl_ms)
    candidate = first_global if scope is Scope.GLOBAL else first_own
    original = candidate if candidate is not None and candidate.image_id != image.image_id else None
    me = Seen.of(image)
    return ExactDecision(original, first_global or me, first_own or me)


# --- near dedup (state keyed by band key: the candidates sharing that band) ----------------


@dataclass(frozen=True, slots=True)
class NearMatch:
    """The closest earlier image found for one image (in one band, or merged over all)."""

    original: str
    distance: int
    original_time: int

    @property
    def rank(self) -> tuple[int, int, str]:
        """Lower is better: closest, then earliest, then smallest id."""
        return (self.distance, self.original_time, self.original)

    def to_list(self) -> list[Any]:
        return [self.original, self.distance, self.original_time]

    @classmethod
    def from_list(cls, data: list[Any] | None) -> "NearMatch | None":
        return None if data is None else cls(str(data[0]), int(data[1]), int(data[2]))


def best_match(a: NearMatch | None, b: NearMatch | None) -> NearMatch | None:
    """The better of two matches (``None`` = no match); associative and commutative."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.rank <= b.rank else b


def near_match(
    image: ImageRef,
    candidates: Iterable[Seen],
    scope: Scope,
    max_distance: int,
) -> NearMatch | None:
    """The closest candidate within ``max_distance`` bits that ``image``'s scope may see.

    Candidates with the image's own id are ignored; the result does not depend on the order
    of ``candidates``.
    """
    best: NearMatch | None = None
    for seen in candidates:
        if seen.image_id == image.image_id:
            continue
        if scope is Scope.PRODUCER and seen.producer != image.producer:
            continue
        distance = (seen.phash ^ image.phash).bit_count()  # both ints: hamming() without parsing
        if distance <= max_distance:
            best = best_match(best, NearMatch(seen.image_id, distance, seen.event_time))
    return best


def register_candidate(
    candidates: list[Seen], image: ImageRef, *, ttl_ms: int, cap: int
) -> list[Seen]:
    """Band state after ``image`` joins: expired candidates pruned, at most ``cap`` kept.

    Expiry is by event time relative to ``image``; when over ``cap`` the oldest go first.
    """
    kept = [c for c in candidates if image.event_time - c.event_time <= ttl_ms and c.image_id != image.image_id]
    kept.append(Seen.of(image))
    if len(kept) > cap:
        kept = kept[len(kept) - cap:]
    return kept


NeedsNear = Enum("NeedsNear", "NEEDS_NEAR")
#: :meth:`Deduplicator.exact_step`'s answer for an image that goes on to the near index.
NEEDS_NEAR = NeedsNear.NEEDS_NEAR


def near_verdict(image: ImageRef, match: NearMatch | None) -> Verdict:
    """The verdict of an image that passed the exact step, given its best near match."""
    return Verdict.accepted(image.image_id) if match is None else Verdict.near(image.image_id, match.original, match.distance)


# --- the deduplicator: replay drop, exact and near dedup over one store ---------------------


class Deduplicator:
    """Replay drop, exact and near dedup over images fed in (event-time) order.

    ``process`` returns ``None`` for a dropped replay, else the verdict. The state lives in
    three mappings of plain lists (so a Flink job can back them with MapState):

    * ``replays``: ``image_id`` -> event time of its first sighting;
    * ``exact``: ``sha256`` -> ``[first image (Seen list) or None, {producer: Seen list}]``;
    * ``bands``: band key (an ``int``; a string: an older layout's, :meth:`reband` moves it) -> Seen lists.

    Given plain dicts it is the in-memory reference the tests compare the job against; the
    job passes state-backed mappings and gets the same decisions by construction. Values are
    replaced, never mutated in place, so a backing store sees every change.
    """

    def __init__(
        self,
        policy: DedupPolicy | None = None,
        *,
        replays: MutableMapping[str, int] | None = None,
        exact: MutableMapping[str, list[Any]] | None = None,
        bands: MutableMapping[BandKey | str, list[list[Any]]] | None = None,
    ) -> None:
        self.policy = policy or DedupPolicy()
        self.replays: MutableMapping[str, int] = {} if replays is None else replays
        self.exact: MutableMapping[str, list[Any]] = {} if exact is None else exact
        self.bands: MutableMapping[BandKey | str, list[list[Any]]] = {} if bands is None else bands

    def process(self, image: ImageRef) -> Verdict | None:
        """The verdict of the next image in decision order (``None``: a replay, dropped)."""
        verdict = self.exact_step(image)
        if verdict is not NEEDS_NEAR:
            return verdict
        plan = self.policy.band_plan
        return near_verdict(image, self.near_step(image, plan.probe_keys(image.phash), plan.keys(image.phash)))

    def exact_step(self, image: ImageRef) -> "Verdict | None | NeedsNear":
        """Replay drop and exact dedup: ``None`` (a replay, dropped), an exact duplicate's
        verdict, or :data:`NEEDS_NEAR`. Touches ``replays`` and ``exact`` only under the
        image's ``image_id`` and ``sha256`` (so a shard of SHA-256s decides it alone)."""
        policy = self.policy
        replay, mark = replay_decision(self.replays.get(image.image_id), image, policy.replay_ttl_ms)
        self.replays[image.image_id] = mark
        if replay:
            return None
        producer_policy = policy.for_producer(image.producer)
        stored_global, own = self.exact.get(image.sha256) or [None, {}]
        stored_own = own.get(image.producer)
        exact = exact_decision(image, producer_policy.scope, None if stored_global is None else Seen.from_list(stored_global),
                               None if stored_own is None else Seen.from_list(stored_own), policy.exact_ttl_ms)  # fmt: skip
        self.exact[image.sha256] = [exact.first_global.to_list(), {**own, image.producer: exact.first_own.to_list()}]
        if exact.original is not None:
            return Verdict.exact(image.image_id, exact.original.image_id)
        return NEEDS_NEAR

    def near_step(self, image: ImageRef, probe_keys: Iterable[BandKey], register_keys: Iterable[BandKey]) -> NearMatch | None:
        """The closest earlier candidate under ``probe_keys`` (``None``: none, or the producer
        opted out), then ``image`` registered under ``register_keys``. A shard passes the keys
        it owns; the :func:`best_match` of the shards' answers is the whole index's."""
        policy, bands = self.policy, self.bands
        producer_policy = policy.for_producer(image.producer)
        match = None
        if producer_policy.near:
            # the stored lists are compared as they are; only the close ones become Seen
            phash, limit = image.phash, policy.near_max_distance
            close = [c for key in probe_keys for c in bands.get(key, ()) if (c[_PHASH] ^ phash).bit_count() <= limit]
            match = near_match(image, map(Seen._make, close), producer_policy.scope, limit) if close else None
        for key in register_keys:
            candidates = list(map(Seen._make, bands.get(key, ())))
            kept = register_candidate(candidates, image, ttl_ms=policy.near_ttl_ms, cap=policy.max_band_candidates)
            bands[key] = [c.to_list() for c in kept]
        return match

    def reband(self) -> int:
        """Move candidates stored under another band layout to this policy's; returns how many
        were moved (0 when the index already uses it).

        The job calls this when it opens its state: an index written with other bands (an
        older version, or ``near_bands`` changed) keeps deciding the same way, because every
        stored candidate carries its full pHash. Candidates are registered in event-time order,
        so each new list keeps the newest :attr:`~DedupPolicy.max_band_candidates`.
        """
        plan, bands = self.policy.band_plan, self.bands
        stale = [key for key in bands if not plan.owns(key)]
        if not stale:
            return 0
        moved: dict[str, Seen] = {}
        for key in stale:
            for candidate in map(Seen._make, bands[key]):
                moved[candidate.image_id] = candidate
            del bands[key]
        regrouped: dict[BandKey, list[Seen]] = {}
        for candidate in sorted(moved.values(), key=lambda c: (c.event_time, c.image_id)):
            for key in plan.keys(candidate.phash):
                regrouped.setdefault(key, []).append(candidate)
        cap = self.policy.max_band_candidates
        for key, candidates in regrouped.items():
            merged = {c.image_id: c for c in map(Seen._make, bands.get(key, ()))}
            merged.update((c.image_id, c) for c in candidates)
            ordered = sorted(merged.values(), key=lambda c: (c.event_time, c.image_id))[-cap:]
            bands[key] = [c.to_list() for c in ordered]
        return len(moved)

    def prune(self, now: int) -> int:
        """Forget what no image at event time ``now`` or later can match; returns the number
        of entries removed. Entries expire by the same event-time TTLs the decisions use."""
        policy, removed = self.policy, 0
        for image_id in [i for i, seen_at in self.replays.items() if now - seen_at > policy.replay_ttl_ms]:
            del self.replays[image_id]
            removed += 1
        for sha, (first, own) in list(self.exact.items()):
            alive = {p: s for p, s in own.items() if now - int(s[2]) <= policy.exact_ttl_ms}
            if first is not None and now - int(first[2]) > policy.exact_ttl_ms:
                first = None
            if first is None and not alive:
                del self.exact[sha]
                removed += 1
            elif len(alive) != len(own) or first is not self.exact[sha][0]:
                self.exact[sha] = [first, alive]
        for key, candidates in list(self.bands.items()):
            kept = [c for c in candidates if now - int(c[2]) <= policy.near_ttl_ms]
            if not kept:
                del self.bands[key]
                removed += 1
            elif len(kept) != len(candidates):
                self.bands[key] = kept
        return removed


def image_ref(image_id: str, producer: str, sha256: str, phash: str | int, event_time: int) -> ImageRef:
    """Build an :class:`ImageRef`, parsing the hex pHash."""
    return ImageRef(image_id, producer, sha256, parse_hash(phash), event_time)
