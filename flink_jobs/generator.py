"""A deterministic event generator with known truth: duplicates, near duplicates, replays,
malformed and late events, so loss or double counting shows up as a wrong number.

Used by the job's tests, the end-to-end and fault tests, and ``bench/``. Content is synthetic
(hashes only): the jobs never read image bytes. So are the producers: every name is in the
reserved synthetic namespace (:data:`imgstream.domain.producers.SYNTHETIC_PREFIX`), and
malformed events name one too wherever their kind of damage leaves a field to read, so what a
plan writes to a shared stack never shows up as a user's data (docs/local-stack.md).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from imgstream.domain.cleaning import Cleaned, Source, clean
from imgstream.domain.dedup import DedupPolicy, Deduplicator, ImageRef, Verdict
from imgstream.domain.events import ImageUploaded
from imgstream.domain.timefmt import format_time, from_millis, parse_time, to_millis
from imgstream.domain.hashing import HASH_BITS, format_hash
from imgstream.domain.producers import dedup_realm, synthetic
from imgstream.domain.windows import aggregate, window_start

CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
#: The generator's default producers: synthetic names (``synthetic-alice``), never a user's.
PRODUCERS = (synthetic("alice"), synthetic("bob"))
#: Malformed values, ``{producer}`` filled with a plan's producer. The first two cannot name
#: a producer at all (not JSON, not an object): read from a synthetic topic they are attributed
#: to ``synthetic-unknown`` (:mod:`imgstream.domain.cleaning`), anywhere else to ``unknown``.
MALFORMED = ('{not json', '[]', '{"schema_version": 9, "producer": "{producer}"}',
             '{"schema_version": 1, "producer": "{producer}"}')


@dataclass(frozen=True)
class Planned:
    """One Kafka value to send, in send order, and what it is."""

    value: bytes
    kind: str  # original | exact | near | replay | malformed
    event_time: int | None
    image_id: str | None
    #: When it is sent on the plan's clock: a Kafka record timestamp consistent with the event
    #: times (an unreadable event's event time is its record timestamp; "now" would push the
    #: watermark past every planned event and make them all late).
    sent_at: int | None = None


@dataclass
class Truth:
    """What the job must produce for a plan."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    images: dict[str, ImageUploaded] = field(default_factory=dict)
    malformed: int = 0

    def windows(self, window_ms: int) -> dict[tuple[int, str, str], dict[str, int]]:
        """Upload stats per (window_start, producer, content_type) of the valid images."""
        groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
        for image_id, verdict in self.verdicts.items():
            image = self.images[image_id]
            event_time = _ms(image.received_at)
            key = (window_start(event_time, window_ms), image.producer, image.content_type)
            groups.setdefault(key, []).append(
                {"status": verdict.status, "duplicate_kind": verdict.duplicate_kind, "size": image.size}
            )
        return {key: aggregate(records) for key, records in groups.items()}


def _ms(text: str) -> int:
    return to_millis(parse_time(text))


def _flip(phash: int, bits: int, rnd: random.Random) -> int:
    for bit in rnd.sample(range(HASH_BITS), bits):
        phash ^= 1 << bit
    return phash


def plan(
    *,
    seed: int = 7,
    originals: int = 40,
    exact_copies: int = 10,
    near_copies: int = 10,
    replays: int = 5,
    malformed: int = 4,
    producers: tuple[str, ...] = PRODUCERS,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
    step_ms: int = 1_000,
    near_bits: int = 3,
) -> list[Planned]:
    """Events in send order, event time increasing by ``step_ms``. Copies always come after
    their original (in time and in order), so the truth does not depend on interleaving.
    Near copies flip ``near_bits`` bits; unrelated originals are random 64-bit hashes."""
    rnd = random.Random(seed)
    out: list[Planned] = []
    sent: list[ImageUploaded] = []
    clock = start_ms

    def event(producer: str, sha: str, phash: int, content_type: str) -> ImageUploaded:
        nonlocal clock
        clock += step_ms
        image_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        return ImageUploaded(
            image_id=image_id,
            producer=producer,
            sha256=sha,
            phash=format_hash(phash),
            size=rnd.randint(1_000, 5_000_000),
            content_type=content_type,
            width=rnd.randint(1, 4000),
            height=rnd.randint(1, 4000),
            storage_key=f"sha256/{sha[:2]}/{sha}",
            received_at=format_time(from_millis(clock)),
            gateway="generator",
        )

    kinds = (
        ["original"] * originals + ["exact"] * exact_copies + ["near"] * near_copies
        + ["replay"] * replays + ["malformed"] * malformed
    )  # fmt: skip
    first, rest = kinds[: max(1, originals // 4)], kinds[max(1, originals // 4):]
    rnd.shuffle(rest)
    for kind in first + rest:
        if kind != "original" and kind != "malformed" and not sent:
            kind = "original"
        if kind == "original":
            e = event(rnd.choice(producers), f"{rnd.getrandbits(256):064x}", rnd.getrandbits(64), rnd.choice(CONTENT_TYPES))
        elif kind == "exact":
            o = rnd.choice(sent)
            e = event(rnd.choice(producers), o.sha256, int(o.phash, 16), o.content_type)
        elif kind == "near":
            o = rnd.choice(sent)
            e = event(rnd.choice(producers), f"{rnd.getrandbits(256):064x}", _flip(int(o.phash, 16), near_bits, rnd), o.content_type)
        elif kind == "replay":
            o = rnd.choice(sent)
            out.append(Planned(o.to_json(), "replay", None, o.image_id, clock))
            continue
        else:
            clock += step_ms
            bad = rnd.choice(MALFORMED).replace("{producer}", producers[0]).encode()
            out.append(Planned(bad, "malformed", None, None, clock))
            continue
        sent.append(e)
        out.append(Planned(e.to_json(), kind, _ms(e.received_at), e.image_id, clock))
    return out


def in_decision_order(events: Iterable[Planned]) -> tuple[list[Cleaned], int]:
    """The plan's valid events cleaned, in the order the pipeline decides them (event time,
    then ``image_id``), and how many events were malformed."""
    cleaned: list[Cleaned] = []
    malformed = 0
    for planned in events:
        out = clean(planned.value, Source())
        if isinstance(out, Cleaned):
            cleaned.append(out)
        else:
            malformed += 1
    return sorted(cleaned, key=lambda c: (c.event_time, c.event.image_id)), malformed


def image_ref(c: Cleaned) -> ImageRef:
    """What dedup needs of a cleaned event."""
    e = c.event
    return ImageRef(e.image_id, e.producer, e.sha256, int(e.phash, 16), c.event_time)


def truth(events: Iterable[Planned], policy: DedupPolicy | None = None) -> Truth:
    """Run the reference :class:`Deduplicator` over the plan in event-time order, one per dedup
    realm (:func:`imgstream.domain.producers.dedup_realm`), as the pipeline does."""
    result = Truth()
    cleaned, result.malformed = in_decision_order(events)
    realms: dict[str, Deduplicator] = {}
    for c in cleaned:
        realm = dedup_realm(c.event.producer)
        dedup = realms.get(realm)
        if dedup is None:
            dedup = realms[realm] = Deduplicator(policy)
        verdict = dedup.process(image_ref(c))
        if verdict is not None:
            result.verdicts[c.event.image_id] = verdict
            result.images[c.event.image_id] = c.event
    return result
