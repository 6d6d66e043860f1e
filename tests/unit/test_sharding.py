"""The sharded dedup decision equals the single-index reference on any stream (issue 17)."""

import random
from math import comb

import pytest
from hypothesis import given, settings, strategies as st

from imgstream.domain.dedup import Deduplicator, DedupPolicy, ImageRef, ProducerPolicy, Scope
from imgstream.domain.hashing import BandPlan, default_bands, key_text, probe_count, MAX_PROBES
from imgstream.domain.producers import dedup_realm
from imgstream.domain.sharding import (
    LATE, ON_TIME, ShardedDeduplicator, ShardPlan, due_of, java_string_hash, order_key, pending_key,
)  # fmt: skip

LONG_MIN = -(2**63)
PRODUCERS = ("p1", "p2", "p3", "synthetic-p4")  # the last in the synthetic dedup realm


def _flip(value, bits):
    for bit in bits:
        value ^= 1 << bit
    return value


@st.composite
def streams(draw):
    """Images with exact copies (same content), near copies (a few bits flipped), replays (the
    same event again, maybe at another time), degenerate hashes, several producers."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    contents = []  # (sha256, phash)
    images = []
    for n in range(draw(st.integers(1, 60))):
        kind = rnd.choice(["new", "new", "exact", "near", "near", "replay", "blank"])
        if kind == "exact" and contents:
            content = rnd.choice(contents)
        elif kind == "near" and contents:
            base = rnd.choice(contents)[1]
            content = (f"{len(contents):064x}", _flip(base, rnd.sample(range(64), rnd.randint(0, 9))))
            contents.append(content)
        elif kind == "replay" and images:
            image_id, producer, sha, phash, _ = rnd.choice(images)
            images.append((image_id, producer, sha, phash, rnd.randint(0, 120)))
            continue
        elif kind == "blank":
            content = (f"{len(contents):064x}", rnd.choice([0, 0xFFFF, 1 << 63]))
            contents.append(content)
        else:
            content = (f"{len(contents):064x}", rnd.getrandbits(64))
            contents.append(content)
        image_id = f"00000000-0000-4000-8000-{n:012d}"
        images.append((image_id, rnd.choice(PRODUCERS), content[0], content[1], rnd.randint(0, 120)))
    return [ImageRef(*fields) for fields in images]


@st.composite
def policies(draw):
    distance = draw(st.integers(0, 10))
    bands = draw(st.sampled_from([None, distance + 1, 2, 3, 4, 5]))
    if bands is not None and (bands < 1 or probe_count(distance, bands) > MAX_PROBES):
        bands = None
    producers = {p: ProducerPolicy(draw(st.sampled_from(list(Scope))), draw(st.booleans())) for p in PRODUCERS[1:]}
    return DedupPolicy(
        near_max_distance=distance, producers=producers, near_bands=bands,
        exact_ttl_ms=draw(st.integers(1, 150)), near_ttl_ms=draw(st.integers(1, 150)),
        replay_ttl_ms=draw(st.integers(1, 150)), max_band_candidates=draw(st.integers(1, 4)),
    )  # fmt: skip


def reference(policy, ordered):
    """The single index of each dedup realm (users' and synthetic producers')."""
    realms = {}
    out = []
    for _, image in ordered:
        dedup = realms.setdefault(dedup_realm(image.producer), Deduplicator(policy))
        out.append((image, dedup.process(image)))
    return out


def sharded(policy, plan, ordered, rnd):
    """The stream in watermark steps (consecutive runs of decision order), each step's images
    in a random arrival order: what each stage of the job receives before a watermark."""
    engine = ShardedDeduplicator(policy, plan)
    out, i = [], 0
    while i < len(ordered):
        j = i + rnd.randint(1, 12)
        step = ordered[i:j]
        rnd.shuffle(step)
        out.extend(engine.decide(step))
        i = j
    return out


def _same(a, b):
    assert [(i.image_id, i.event_time, v) for i, v in a] == [(i.image_id, i.event_time, v) for i, v in b]


@settings(max_examples=150, deadline=None)
@given(streams(), policies(), st.integers(1, 8), st.integers(0, 2**32))
def test_the_sharded_decision_equals_the_reference_for_1_to_8_shards(images, policy, n, seed):
    rnd = random.Random(seed)
    widths = [w for _, w in policy.band_plan.layout]
    plan = ShardPlan(policy.band_plan, shards=n, near_split_bits=rnd.randint(0, min(4, *widths)))
    ordered = sorted(((order_key(i.event_time, i.image_id, LONG_MIN), i) for i in images), key=lambda x: x[0])
    _same(sharded(policy, plan, ordered, rnd), reference(policy, ordered))


@settings(max_examples=100, deadline=None)
@given(streams(), policies(), st.integers(1, 8), st.integers(0, 2**32))
def test_late_images_keep_the_position_they_got_on_arrival_in_every_shard(images, policy, n, seed):
    """Some images arrive behind the watermark: each is due just after it, before the on-time
    images of the next millisecond; the sharded decision equals the reference in that order."""
    rnd = random.Random(seed)
    plan = ShardPlan(policy.band_plan, shards=n, near_split_bits=rnd.randint(0, 1))
    keyed = []
    for image in images:
        watermark = image.event_time + rnd.randint(0, 30) if rnd.random() < 0.3 else LONG_MIN
        keyed.append((order_key(image.event_time, image.image_id, watermark), image))
    ordered = sorted(keyed, key=lambda x: x[0])
    _same(sharded(policy, plan, ordered, rnd), reference(policy, ordered))


def test_order_keys_put_a_late_image_after_what_was_due_and_before_the_next_millisecond():
    on_time = order_key(1_000, "b", 900)
    late = order_key(500, "z", 999)
    assert on_time == (1_000, ON_TIME, 1_000, "b") and late == (1_000, LATE, 500, "z")
    assert order_key(999, "a", 900) < late < on_time
    key = pending_key(late, 3, 17)
    assert due_of(key) == 1_000 and key < pending_key(on_time, 0, 0)


@given(st.integers(0, 2**64 - 1), st.integers(0, 10), st.integers(0, 3))
def test_near_routes_hand_out_every_probe_and_registration_key_exactly_once(phash, distance, bits):
    band_plan = BandPlan.for_distance(distance)
    if bits > min(w for _, w in band_plan.layout):
        return
    plan = ShardPlan(band_plan, near_split_bits=bits)
    routes = plan.near_routes(phash)
    probes = [k for r in routes.values() for k in r.probe_keys]
    registers = [k for r in routes.values() for k in r.register_keys]
    assert sorted(probes) == sorted(band_plan.probe_keys(phash))
    assert sorted(registers) == sorted(band_plan.keys(phash))
    assert all(0 <= shard < plan.near_shards for shard in routes)
    for shard, route in routes.items():  # each key in the shard near_shard names for its band and value
        for key in route.probe_keys + route.register_keys:
            index, value = key_text(key).split(".", 1)[1].split(":")
            assert plan.near_shard(int(index), int(value, 16)) == shard, (key, shard)
    for index, key in enumerate(band_plan.keys(phash)):  # registered where the band's own value is probed
        assert key in next(r.probe_keys for r in routes.values() if key in r.register_keys)
    # each band: its home shard and the neighbours within the radius in the split bits
    # (radius 1: one per split bit)
    assert len(routes) <= band_plan.bands * sum(comb(bits, k) for k in range(band_plan.radius + 1))
    # what the job sends is the hash: each near shard works out its own route from it
    assert plan.near_shards_of(phash) == list(routes)
    for shard in range(plan.near_shards):
        assert plan.near_route(shard, phash) == routes.get(shard, ((), ())), shard


def test_shard_functions_are_stable_and_in_range():
    plan = ShardPlan(BandPlan.for_distance(6), shards=8)
    assert plan.exact_shard("ab" * 32) == plan.exact_shard("ab" * 32) < 8
    assert 0 <= plan.window_shard("alice", 60_000) < 8
    assert {plan.exact_shard(f"{n:064x}") for n in range(200)} == set(range(8))
    # |Java's String.hashCode()| modulo the shards (the rule the job's SQL repeats in the JVM)
    assert java_string_hash("0" * 64) == _java_hash_by_hand("0" * 64)
    for sha in ("ff" * 32, "0123456789abcdef" * 4, f"{2**255 + 12345:064x}"):
        assert java_string_hash(sha) == _java_hash_by_hand(sha)
        assert plan.exact_shard(sha) == abs(_java_hash_by_hand(sha)) % 8
    assert java_string_hash("ff" * 32) < 0  # signed, as in Java: the shard takes its absolute value
    with pytest.raises(ValueError):
        plan.exact_shard("ab")
    with pytest.raises(ValueError):
        ShardPlan(BandPlan.for_distance(6), shards=0)
    with pytest.raises(ValueError):
        ShardPlan(BandPlan.for_distance(6), near_split_bits=5)
    assert default_bands(6) == 4 and ShardPlan(BandPlan.for_distance(6)).near_shards == 8


@pytest.mark.parametrize("first, second", [("synthetic-bench", "alice"), ("alice", "synthetic-bench")])
def test_the_same_bytes_in_another_dedup_realm_are_accepted(first, second):
    """Issue 20: a synthetic producer's image is never the original of a user's (nor the
    reverse), exact or near; within a realm the copy is still a duplicate."""
    policy = DedupPolicy()
    engine = ShardedDeduplicator(policy, ShardPlan.for_policy(policy, shards=4))
    sha, phash = "ab" * 32, 0xF0F0_1234_5678_9ABC
    images = [
        ImageRef("00000000-0000-4000-8000-000000000001", first, sha, phash, 1_000),
        ImageRef("00000000-0000-4000-8000-000000000002", second, sha, phash, 2_000),  # same bytes
        ImageRef("00000000-0000-4000-8000-000000000003", second, "cd" * 32, phash ^ 1, 3_000),  # near copy
        ImageRef("00000000-0000-4000-8000-000000000004", first, sha, phash, 4_000),  # same realm as 1
    ]
    verdicts = [v for _, v in engine.decide([(order_key(i.event_time, i.image_id, LONG_MIN), i) for i in images])]
    assert [v.status for v in verdicts] == ["accepted", "accepted", "duplicate", "duplicate"]
    assert verdicts[2].duplicate_of == images[1].image_id and verdicts[2].duplicate_kind == "near"
    assert verdicts[3].duplicate_of == images[0].image_id and verdicts[3].duplicate_kind == "exact"


def test_the_signature_names_the_layout_and_a_restore_must_match_it():
    plan = ShardPlan.for_policy(DedupPolicy(), shards=16, near_split_bits=2)
    assert plan.signature == f"16/2/{DedupPolicy().band_plan.bands}/java-hash"
    plan.check_restored(None)  # state written before layouts were recorded: accepted
    plan.check_restored(plan.signature)
    with pytest.raises(ValueError, match="fixed for a job's state"):
        plan.check_restored("32/1/4/java-hash")
    with pytest.raises(ValueError, match="fixed for a job's state"):  # routed by crc32 (before the tail rule)
        plan.check_restored(f"16/2/{DedupPolicy().band_plan.bands}")


def _java_hash_by_hand(text):
    """``String.hashCode()`` as Java's documentation defines it, in 32-bit signed arithmetic."""
    h = 0
    for ch in text:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - 2**32 if h >= 2**31 else h
