"""Dedup that shards: the decisions of :class:`~imgstream.domain.dedup.Deduplicator` split over
keyed shards, equal to the single index on any stream.

The reference decides images one after the other, in *decision order* (:func:`order_key`), each
against everything decided before it. Its state falls apart into independent keys:

* **replay marks and exact firsts** are read and written only under the image's ``image_id``
  and ``sha256``. An ``image_id`` names one stored content (the gateway assigns it to the bytes
  it stored, and a replay is the same event again), so keying both by the SHA-256 puts every
  image of an id in the same shard: the *exact shard* (:meth:`ShardPlan.exact_shard`) decides
  replay drop and exact dedup alone (:meth:`Deduplicator.exact_step`);
* **near candidates** live under band keys ``(band index, band value)``; an image reads its
  probe keys and writes its registration keys (:class:`~imgstream.domain.hashing.BandPlan`).
  Each band key belongs to one *near shard*: its band index and the top
  ``near_split_bits`` bits of its band value (:meth:`ShardPlan.near_shard`). An image's probe
  keys of one band lie in its home shard of that band, except the probes that flip one of the
  top bits, which lie in a neighbouring shard: at radius 1, ``bands x (1 + near_split_bits)``
  shards see an image (4 x 2 = 8 by default), each with the keys it owns (:meth:`ShardPlan.near_routes`);
  each returns its best match (:meth:`Deduplicator.near_step`) and the best of those
  (:func:`~imgstream.domain.dedup.best_match`, associative and commutative) is the index's.

Why it is exact: every key's state changes only by the operations of the images that touch
it, and each shard applies them in decision order, the order the reference applies them in
(a shard sees, per image, the same keys the reference reads and writes; the cap and TTL of a
band list are per key). An image reaches the near shards only if its exact step said so, and
an exact step never depends on the near index. So each key goes through the same states as in
the reference, every read returns what the reference read, and every verdict is the same.

**Decision order in a stream.** Each stage holds what it receives until the watermark passes
its *due time*, then takes the due ones sorted by :func:`order_key`. An on-time image is due at
its event time; everything due at or before the watermark ``W`` has been emitted by the stage
before it before ``W`` was forwarded, so each stage takes the same sorted prefixes. A *late*
image (at or behind the watermark ``W`` on arrival at the first stage) cannot be decided at
its event time without rewriting history; it is due at ``W + 1``, before the on-time images of
that millisecond (flag 0 < 1), and every later stage keeps the order key it got: its position
is fixed once, where it arrived, and every shard agrees on it. A late event waits for the next
watermark advance, about a second. (Which images are late depends on when they arrive, as in
any watermark-driven job; once an image's order key is set, its verdict is deterministic.)

**Realms.** Synthetic producers' images (tests, benchmarks) and real producers' images are
decided in separate indexes (:func:`~imgstream.domain.producers.dedup_realm`): each shard keeps
one state per realm, so the same content uploaded by a benchmark and then by a user is
``accepted`` for the user. The reference is then one ``Deduplicator`` per realm.

Pure stdlib; the Flink job wires :class:`ShardPlan` and the ``Deduplicator`` steps to keyed state,
and :class:`ShardedDeduplicator` runs them in one process (the tests compare it with the reference).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from imgstream.domain.dedup import NEEDS_NEAR, Deduplicator, DedupPolicy, ImageRef, NearMatch, Verdict, best_match, near_verdict
from imgstream.domain.hashing import BandKey, BandPlan
from imgstream.domain.producers import dedup_realm

#: Shards of the exact step and of the window stage. A shard is a key; Flink spreads keys over
#: subtasks, so this bounds the useful parallelism of those stages. 32 keeps a few keys per
#: subtask up to parallelism 8 (each key costs a timer per watermark step it has work in).
DEFAULT_SHARDS = 32
#: Top bits of a band value that choose its near shard: ``bands x 2**bits`` near shards, and
#: each non-exact image visits ``bands x (1 + bits)`` of them. 1 bit: 8 shards, 8 visits.
DEFAULT_NEAR_SPLIT_BITS = 1
#: Most top bits a near shard may take: each costs one more visit per band and image.
MAX_NEAR_SPLIT_BITS = 4
#: The stages hold images until the watermark passes their bucket of this much event time
#: (one timer per key and bucket end, not per image). Window lengths and the watermark grid of
#: ``flink_jobs`` are multiples of it, so a window fires and a forwarded watermark lands on a
#: bucket's end.
ORDER_BUCKET_MS = 200
#: Version of the exact routing in :attr:`ShardPlan.signature`: state routed by another rule
#: (``crc32`` of the SHA-256 before 2026-12-05) must not be read by this one.
EXACT_ROUTING = "java-hash"
#: ``31**k mod 2**32`` for the 64 characters of a SHA-256, first character first (:func:`java_string_hash`).
_JAVA_POWERS = tuple(pow(31, 63 - i, 2**32) for i in range(64))

#: Order flag of a late image (decided before the on-time ones due in the same millisecond).
LATE, ON_TIME = 0, 1


class OrderKey(NamedTuple):
    """Position of an image in decision order: due time, late/on-time flag, event time, id."""

    due: int
    flag: int
    event_time: int
    image_id: str


def order_key(event_time: int, image_id: str, watermark: int) -> OrderKey:
    """The decision position of an image arriving at ``watermark`` (see the module doc)."""
    if event_time > watermark:
        return OrderKey(event_time, ON_TIME, event_time, image_id)
    return OrderKey(watermark + 1, LATE, event_time, image_id)


def pending_key(order: OrderKey | tuple[int, int, int, str], partition: int, offset: int) -> str:
    """A string that sorts like ``order`` and is unique per Kafka record (its coordinates)."""
    due, flag, event_time, image_id = order
    return f"{int(due):015d}|{int(flag)}|{int(event_time):015d}|{image_id}|{partition}|{offset}"


def due_of(key: str) -> int:
    """The due time of a :func:`pending_key`."""
    return int(key[:15])


def bucket_limit(watermark: int) -> int:
    """The last due time a stage may take at ``watermark``: the end of the last whole
    :data:`ORDER_BUCKET_MS` bucket at or before it (an item due later may still be on its way
    from the stage before)."""
    return watermark - (watermark + 1) % ORDER_BUCKET_MS


def bucket_end(due: int) -> int:
    """The end of the bucket holding ``due``: when a stage's timer takes it (the JVM near stage's
    ``NearIndex.bucketEnd`` is the same rule)."""
    return due - due % ORDER_BUCKET_MS + ORDER_BUCKET_MS - 1


class NearRoute(NamedTuple):
    """The keys of one image one near shard owns: those it looks in, those it registers in."""

    probe_keys: tuple[BandKey, ...]
    register_keys: tuple[BandKey, ...]


def java_string_hash(sha256: str) -> int:
    """Java's ``String.hashCode()`` of a SHA-256 in hex (a signed 32-bit int): the sum of each
    character's code times ``31**(63 - i)``, modulo ``2**32``. A SHA-256 is uniform, so even this
    weak hash spreads shards evenly."""
    if len(sha256) != 64:
        raise ValueError(f"not a SHA-256 in hex: {sha256!r}")
    h = sum(map(int.__mul__, sha256.encode(), _JAVA_POWERS)) & 0xFFFFFFFF
    return h - 2**32 if h >= 2**31 else h


def _stable_hash(text: str) -> int:
    # crc32, not hash(): Python salts str hashes per process, and every worker must agree
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class ShardPlan:
    """Where each part of the dedup state lives: exact, near and window shards."""

    band_plan: BandPlan
    shards: int = DEFAULT_SHARDS
    near_split_bits: int = DEFAULT_NEAR_SPLIT_BITS
    _widths: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        widths = tuple(width for _, width in self.band_plan.layout)
        if not 0 <= self.near_split_bits <= min(MAX_NEAR_SPLIT_BITS, *widths):
            raise ValueError(f"near_split_bits must be in 0..{min(MAX_NEAR_SPLIT_BITS, *widths)}, "
                             f"got {self.near_split_bits}")  # fmt: skip
        object.__setattr__(self, "_widths", widths)

    @property
    def signature(self) -> str:
        """What a job's state is laid out by: ``"shards/near_split_bits/bands/exact routing"``. It
        must not change for the job's state (another routing would look for an image in another
        shard)."""
        return f"{self.shards}/{self.near_split_bits}/{self.band_plan.bands}/{EXACT_ROUTING}"

    def check_restored(self, stored: str | None) -> None:
        """Raise :class:`ValueError` when state laid out by ``stored`` (a :attr:`signature`;
        ``None``: none recorded yet) is read by this plan."""
        if stored is not None and stored != self.signature:
            raise ValueError(
                f"the restored dedup state is sharded as {stored} (dedup_shards/near_split_bits/near_bands/exact routing) but "
                f"this job as {self.signature}: shards are fixed for a job's state (images would be looked for in "
                f"other shards). Resume with the old settings, or start on fresh state (make flink-reset)"
            )

    @classmethod
    def for_policy(cls, policy: DedupPolicy, shards: int = DEFAULT_SHARDS,
                   near_split_bits: int = DEFAULT_NEAR_SPLIT_BITS) -> "ShardPlan":  # fmt: skip
        return cls(policy.band_plan, shards, near_split_bits)

    @property
    def near_shards(self) -> int:
        """Number of near shards: ``bands x 2**near_split_bits``."""
        return self.band_plan.bands << self.near_split_bits

    def exact_shard(self, sha256: str) -> int:
        """The shard deciding replays and exact duplicates of this content (a SHA-256 as
        cleaning leaves it: 64 lower-case hex digits): ``|h| mod shards`` of its Java string
        hash ``h`` (:func:`java_string_hash`), because the job computes the same in the JVM, with
        Flink SQL's ``HASH_CODE``, to key raw records before any Python sees them
        (``flink_jobs.pipeline.exact_shard_sql``)."""
        return abs(java_string_hash(sha256)) % self.shards

    def window_shard(self, producer: str, window_start: int, content_type: str = "") -> int:
        """The shard counting the window of ``producer`` (and content type) at ``window_start``:
        a window row is counted whole in one place, and one busy producer's minute still spreads
        over its content types."""
        return _stable_hash(f"{producer}|{content_type}|{window_start}") % self.shards

    def near_shard(self, band_index: int, band_value: int) -> int:
        """The near shard owning band key ``(band_index, band_value)``."""
        bits = self.near_split_bits
        return (band_index << bits) | (band_value >> (self._widths[band_index] - bits))

    def near_routes(self, phash: int) -> dict[int, NearRoute]:
        """The near shards an image visits, each with the probe and registration keys it owns
        (every key of ``band_plan.probe_keys`` and ``band_plan.keys`` exactly once): a key of
        band ``i`` and value ``v`` goes to :meth:`near_shard` ``(i, v)``."""
        return {shard: self.near_route(shard, phash) for shard in self.near_shards_of(phash)}

    def near_shards_of(self, phash: int) -> list[int]:
        """The near shards an image visits (the keys of :meth:`near_routes`): what the job sends
        each of them is the image's hash, and each works out its keys (:meth:`near_route`)."""
        bits = self.near_split_bits
        return [(index << bits) | top for index, top in self.band_plan.split_tops(phash, bits)]

    def near_route(self, shard: int, phash: int) -> NearRoute:
        """The keys of an image near shard ``shard`` owns (none where the image does not visit):
        those it probes, and the band's own value, registered where it is probed."""
        bits = self.near_split_bits
        keys, own = self.band_plan.shard_probes(phash, bits, shard >> bits, shard & ((1 << bits) - 1))
        return NearRoute(keys, keys[:1] if own else ())

class ShardedDeduplicator:
    """The sharded decision run in one process: one ``Deduplicator`` per exact and near
    shard, each with its own state, stage by stage as the job runs them.

    :meth:`decide` takes one watermark step - images in any arrival order, with their order
    keys - and returns their verdicts in decision order; state carries over to the next step.
    """

    def __init__(self, policy: DedupPolicy, plan: ShardPlan) -> None:
        self.policy = policy
        self.plan = plan
        # realm -> one Deduplicator per exact / near shard (state never crosses realms)
        self.exact: dict[str, list[Deduplicator]] = {}
        self.near: dict[str, list[Deduplicator]] = {}

    def _shards(self, store: dict[str, list[Deduplicator]], image: ImageRef, count: int) -> list[Deduplicator]:
        realm = dedup_realm(image.producer)
        if realm not in store:
            store[realm] = [Deduplicator(self.policy) for _ in range(count)]
        return store[realm]

    def decide(self, step: Iterable[tuple[OrderKey, ImageRef]]) -> list[tuple[ImageRef, Verdict | None]]:
        """Verdicts (``None`` = a replay, dropped) of one step's images, in decision order.
        Equal order keys (the same event twice) keep their arrival order, as partition and
        offset break that tie in the job."""
        plan = self.plan
        by_exact: dict[int, list[tuple[tuple[OrderKey, int], ImageRef]]] = {}
        for position, (order, image) in enumerate(step):
            by_exact.setdefault(plan.exact_shard(image.sha256), []).append(((order, position), image))
        # stage 1: each exact shard in decision order
        decided: dict[tuple[OrderKey, int], tuple[ImageRef, Verdict | None]] = {}
        by_near: dict[int, list[tuple[tuple[OrderKey, int], ImageRef, NearRoute]]] = {}
        for shard, items in by_exact.items():
            for rank, image in sorted(items, key=lambda item: item[0]):
                verdict = self._shards(self.exact, image, plan.shards)[shard].exact_step(image)
                if verdict is NEEDS_NEAR:
                    for near, route in plan.near_routes(image.phash).items():
                        by_near.setdefault(near, []).append((rank, image, route))
                    decided[rank] = (image, None)  # replaced by its near verdict below
                else:
                    assert verdict is None or isinstance(verdict, Verdict)
                    decided[rank] = (image, verdict)
        # stage 2: each near shard in decision order; stage 3: the best match per image
        matches: dict[tuple[OrderKey, int], NearMatch | None] = {}
        for shard, ops in by_near.items():
            for rank, image, route in sorted(ops, key=lambda op: op[0]):
                near_index = self._shards(self.near, image, plan.near_shards)[shard]
                match = near_index.near_step(image, route.probe_keys, route.register_keys)
                matches[rank] = best_match(matches.get(rank), match)
        for rank, match in matches.items():
            image = decided[rank][0]
            decided[rank] = (image, near_verdict(image, match))
        return [decided[rank] for rank in sorted(decided)]
