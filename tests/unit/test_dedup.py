import pytest
from hypothesis import given, settings, strategies as st

from imgstream.domain.dedup import (
    DedupPolicy,
    Deduplicator,
    NearMatch,
    ProducerPolicy,
    Scope,
    Seen,
    Verdict,
    best_match,
    exact_decision,
    image_ref,
    near_match,
    register_candidate,
    replay_decision,
)
from imgstream.domain.hashing import hamming

SHA_A = "a" * 64
SHA_B = "b" * 64


def img(n, *, producer="p1", sha=None, phash=0, t=None):
    return image_ref(f"00000000-0000-0000-0000-{n:012d}", producer, sha or f"{n:064x}", phash, n * 1000 if t is None else t)


def iid(n):
    return f"00000000-0000-0000-0000-{n:012d}"


# --- replay ------------------------------------------------------------------------------


def test_replay_is_dropped_within_ttl_and_processed_after():
    first = img(1)
    replay, mark = replay_decision(None, first, ttl_ms=10_000)
    assert (replay, mark) == (False, 1000)
    assert replay_decision(mark, img(1, t=5000), ttl_ms=10_000) == (True, 1000)
    assert replay_decision(mark, img(1, t=20_000), ttl_ms=10_000) == (False, 20_000)


def test_deduplicator_drops_replays():
    d = Deduplicator()
    assert d.process(img(1)) == Verdict.accepted(iid(1))
    assert d.process(img(1)) is None


# --- exact -------------------------------------------------------------------------------


def test_first_is_accepted_and_later_copies_point_to_it():
    d = Deduplicator()
    assert d.process(img(1, sha=SHA_A)).status == "accepted"
    v2 = d.process(img(2, sha=SHA_A, producer="p2"))
    v3 = d.process(img(3, sha=SHA_A))
    assert v2 == Verdict(iid(2), "duplicate", iid(1), "exact", 0)
    assert v3.duplicate_of == iid(1)  # the first image, not the latest copy


def test_exact_decision_scope_producer_only_sees_own_images():
    first_global = Seen(iid(1), "p1", 1000)
    decision = exact_decision(img(2, producer="p2", sha=SHA_A), Scope.PRODUCER, first_global, None)
    assert decision.original is None
    assert decision.first_global == first_global
    assert decision.first_own.image_id == iid(2)
    decision = exact_decision(img(3, producer="p2", sha=SHA_A), Scope.PRODUCER, first_global, decision.first_own)
    assert decision.original.image_id == iid(2)


def test_exact_state_expires_by_event_time():
    first = Seen(iid(1), "p1", 0)
    assert exact_decision(img(2, t=10), Scope.GLOBAL, first, first, ttl_ms=10).original == first
    late = exact_decision(img(3, t=11), Scope.GLOBAL, first, first, ttl_ms=10)
    assert late.original is None and late.first_global.image_id == iid(3)


def test_per_producer_policy_in_the_pipeline():
    policy = DedupPolicy(producers={"own": ProducerPolicy(Scope.PRODUCER)})
    d = Deduplicator(policy)
    d.process(img(1, producer="other", sha=SHA_A))
    assert d.process(img(2, producer="own", sha=SHA_A)).status == "accepted"
    assert d.process(img(3, producer="own", sha=SHA_A)).duplicate_of == iid(2)
    # a global producer still links to the very first image
    assert d.process(img(4, producer="g", sha=SHA_A)).duplicate_of == iid(1)


# --- near --------------------------------------------------------------------------------


def test_near_match_picks_the_closest_then_the_earliest():
    me = img(10, phash=0)
    cands = [Seen(iid(3), "p1", 3000, 0b111), Seen(iid(2), "p1", 2000, 0b011), Seen(iid(1), "p1", 1000, 0b101)]
    match = near_match(me, cands, Scope.GLOBAL, 6)
    assert match == NearMatch(iid(1), 2, 1000)  # distance 2 tie between 1 and 2: earliest wins
    assert near_match(me, cands, Scope.GLOBAL, 1) is None
    assert near_match(me, cands, Scope.PRODUCER, 6) == NearMatch(iid(1), 2, 1000)
    me_p2 = img(10, producer="p2", phash=0)
    assert near_match(me_p2, cands, Scope.PRODUCER, 6) is None


def test_near_match_ignores_itself():
    me = img(1, phash=5)
    assert near_match(me, [Seen.of(me)], Scope.GLOBAL, 6) is None


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 100)), max_size=20), st.randoms())
def test_near_match_does_not_depend_on_candidate_order(raw, rnd):
    me = img(1000, phash=2**63)
    cands = [Seen(iid(i), "p1", t, h) for i, (h, t) in enumerate(raw)]
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert near_match(me, cands, Scope.GLOBAL, 40) == near_match(me, shuffled, Scope.GLOBAL, 40)


matches = st.one_of(st.none(), st.builds(NearMatch, st.sampled_from(["a", "b", "c"]), st.integers(0, 5), st.integers(0, 5)))


@given(matches, matches, matches)
def test_best_match_is_associative_and_commutative(a, b, c):
    assert best_match(a, b) == best_match(b, a)
    assert best_match(best_match(a, b), c) == best_match(a, best_match(b, c))


def test_register_candidate_prunes_by_ttl_and_caps_oldest_first():
    cands = [Seen(iid(i), "p1", i * 1000, 0) for i in range(1, 6)]
    kept = register_candidate(cands, img(6), ttl_ms=3000, cap=10)
    assert [c.image_id for c in kept] == [iid(3), iid(4), iid(5), iid(6)]
    kept = register_candidate(cands, img(6), ttl_ms=10**9, cap=3)
    assert [c.image_id for c in kept] == [iid(4), iid(5), iid(6)]


def test_near_duplicates_in_the_pipeline():
    d = Deduplicator(DedupPolicy(near_max_distance=4))
    assert d.process(img(1, phash=0b0)).status == "accepted"
    assert d.process(img(2, phash=0b1111)) == Verdict.near(iid(2), iid(1), 4)
    assert d.process(img(3, phash=0b11111)) == Verdict.near(iid(3), iid(2), 1)
    assert d.process(img(4, phash=2**64 - 1)).status == "accepted"


def test_near_opt_out_still_registers_and_exact_still_applies():
    policy = DedupPolicy(near_max_distance=4, producers={"optout": ProducerPolicy(near=False)})
    d = Deduplicator(policy)
    d.process(img(1, phash=0, sha=SHA_A))
    assert d.process(img(2, producer="optout", phash=1)).status == "accepted"
    assert d.process(img(3, producer="optout", phash=0, sha=SHA_A)).duplicate_kind == "exact"
    # the opted-out image is a candidate for others
    assert d.process(img(4, phash=3)).duplicate_of in (iid(1), iid(2))


def test_exact_duplicate_is_not_a_near_candidate():
    d = Deduplicator(DedupPolicy(near_max_distance=2))
    d.process(img(1, phash=0, sha=SHA_A))
    d.process(img(2, phash=0, sha=SHA_A))  # exact dup of 1
    assert d.process(img(3, phash=1)) == Verdict.near(iid(3), iid(1), 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2"]), st.integers(0, 3), st.sets(st.integers(0, 63), max_size=6)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 5),
    st.sampled_from([None, 2, 3, 6, 9, 64]),
)
def test_banded_pipeline_equals_brute_force(uploads, max_distance, bands):
    """The band index finds exactly what comparing with every earlier registered image finds,
    whatever the band layout."""
    base = 0x0123456789ABCDEF
    policy = DedupPolicy(
        near_max_distance=max_distance, producers={"p2": ProducerPolicy(Scope.PRODUCER)}, near_bands=bands
    )
    d = Deduplicator(policy)
    registered: list[Seen] = []
    first_by: dict[tuple[str | None, str], str] = {}
    for n, (producer, content, flips) in enumerate(uploads, start=1):
        phash = base
        for bit in flips:
            phash ^= 1 << bit
        image = img(n, producer=producer, sha=f"{content:064x}", phash=phash)
        verdict = d.process(image)
        scope = policy.for_producer(producer).scope
        original = first_by.get((None if scope is Scope.GLOBAL else producer, image.sha256))
        first_by.setdefault((None, image.sha256), image.image_id)
        first_by.setdefault((producer, image.sha256), image.image_id)
        if original is not None:
            assert verdict == Verdict.exact(image.image_id, original)
            continue
        visible = [s for s in registered if scope is Scope.GLOBAL or s.producer == producer]
        within = [(hamming(s.phash, phash), s.event_time, s.image_id) for s in visible if hamming(s.phash, phash) <= max_distance]
        if within:
            dist, _, orig = min(within)
            assert verdict == Verdict.near(image.image_id, orig, dist)
        else:
            assert verdict == Verdict.accepted(image.image_id)
        registered.append(Seen.of(image))


# --- policy ------------------------------------------------------------------------------


def test_policy_parsing():
    default, overrides = DedupPolicy.parse_producers("*=producer; alice=global,no-near ;bob=producer,near")
    assert default == ProducerPolicy(Scope.PRODUCER)
    assert overrides == {"alice": ProducerPolicy(Scope.GLOBAL, near=False), "bob": ProducerPolicy(Scope.PRODUCER)}
    assert DedupPolicy.parse_producers("") == (ProducerPolicy(), {})


@pytest.mark.parametrize("spec", ["alice", "=global", "a=everyone", "a=global,maybe", "a="])
def test_policy_parsing_rejects_garbage(spec):
    with pytest.raises(ValueError):
        DedupPolicy.parse_producers(spec)


def test_policy_validates_knobs():
    assert DedupPolicy(near_max_distance=6).band_plan.bands == 4
    assert DedupPolicy(near_max_distance=6, near_bands=7).band_plan.radius == 0
    with pytest.raises(ValueError):
        DedupPolicy(near_max_distance=64)
    with pytest.raises(ValueError):
        DedupPolicy(near_max_distance=16, near_bands=2)  # far too many lookups per image
    with pytest.raises(ValueError):
        DedupPolicy(exact_ttl_ms=0)
    with pytest.raises(ValueError):
        DedupPolicy(max_band_candidates=0)


def test_seen_and_match_round_trip_through_lists():
    s = Seen("id", "p", 5, 2**64 - 1)
    assert Seen.from_list(s.to_list()) == s
    m = NearMatch("o", 3, 7)
    assert NearMatch.from_list(m.to_list()) == m
    assert NearMatch.from_list(None) is None


# --- injected storage and pruning ---------------------------------------------------------


class RecordingMap(dict):
    """A dict that counts writes: the job backs the Deduplicator with MapState like this."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def __setitem__(self, key, value):
        self.writes += 1
        super().__setitem__(key, value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**16 - 1), st.integers(0, 3)), min_size=1, max_size=40))
def test_injected_storage_decides_like_plain_dicts(specs):
    """Same images, same order: a Deduplicator over injected maps reaches the same verdicts,
    and every piece of state it keeps went through the maps (nothing held on the side)."""
    images = [img(i + 1, sha=f"{sha:064x}", phash=phash, producer=f"p{p}") for i, (sha, phash, p) in enumerate(specs)]
    images.append(images[0])  # a replay
    plain = Deduplicator(DedupPolicy(near_max_distance=3))
    maps = {name: RecordingMap() for name in ("replays", "exact", "bands")}
    injected = Deduplicator(DedupPolicy(near_max_distance=3), **maps)
    assert [plain.process(i) for i in images] == [injected.process(i) for i in images]
    assert dict(maps["exact"]) == dict(plain.exact) and dict(maps["bands"]) == dict(plain.bands)
    assert maps["replays"].writes == len(images)


def test_prune_forgets_only_what_has_expired_for_every_later_image():
    policy = DedupPolicy(near_max_distance=4, exact_ttl_ms=10_000, near_ttl_ms=10_000, replay_ttl_ms=5_000)
    d = Deduplicator(policy)
    d.process(img(1, sha=SHA_A, phash=0b1111, t=1_000))
    assert d.process(img(2, sha=SHA_B, phash=0, t=8_000)) == Verdict.near(iid(2), iid(1), 4)
    assert d.prune(now=5_500) == 0  # nothing is older than its TTL yet
    assert d.prune(now=6_500) == 1  # image 1's replay mark (5 s)
    assert iid(1) not in d.replays and iid(2) in d.replays
    d.prune(now=12_000)  # image 1 is 11 s old: past the exact and near TTLs
    assert SHA_A not in d.exact and SHA_B in d.exact
    assert all(c[0] != iid(1) for cands in d.bands.values() for c in cands)
    assert d.bands  # image 2's candidates stay
    # what prune keeps still decides: a copy of image 2 within the TTL is its duplicate ...
    assert d.process(img(3, sha=SHA_B, t=12_500)) == Verdict.exact(iid(3), iid(2))
    # ... and an image like the pruned one is measured against what is left
    assert d.process(img(4, sha=SHA_A, phash=0b1111, t=12_600)) == Verdict.near(iid(4), iid(2), 4)


def test_prune_keeps_a_producer_first_that_outlives_the_global_first():
    policy = DedupPolicy(exact_ttl_ms=10_000)
    d = Deduplicator(policy)
    d.process(img(1, sha=SHA_A, producer="p1", t=1_000))
    d.process(img(2, sha=SHA_A, producer="p2", t=9_000))
    d.prune(now=12_000)
    first, own = d.exact[SHA_A]
    assert first is None and set(own) == {"p2"}


# --- re-banding a stored index --------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.sets(st.integers(0, 63), max_size=5)), min_size=1, max_size=25),
    st.sampled_from([2, 6, 7, 64]),
)
def test_reband_continues_like_an_index_built_with_the_new_layout(uploads, old_bands):
    """An index stored under another band count, re-banded, decides the next images exactly
    like one built with the new layout from the start."""
    images = []
    for n, (content, flips) in enumerate(uploads, start=1):
        phash = 0x0123456789ABCDEF
        for bit in flips:
            phash ^= 1 << bit
        images.append(img(n, sha=f"{content:064x}", phash=phash))
    old = Deduplicator(DedupPolicy(near_max_distance=5, near_bands=old_bands))
    new = Deduplicator(DedupPolicy(near_max_distance=5))
    half = len(images) // 2
    for image in images[:half]:
        old.process(image)
        new.process(image)
    moved = Deduplicator(new.policy, replays=old.replays, exact=old.exact, bands=old.bands)
    assert moved.reband() == len({c[0] for cands in new.bands.values() for c in cands})
    assert dict(moved.bands) == dict(new.bands)
    assert moved.reband() == 0  # already in the new layout
    assert [moved.process(i) for i in images[half:]] == [new.process(i) for i in images[half:]]


def test_reband_reads_the_layout_before_band_counts_were_in_keys():
    # what the 7-band index of earlier versions stored: "<index>:<band hex>" -> Seen lists
    stored = {
        "00:000": [[iid(1), "p1", 1000, 0]],
        "01:000": [[iid(1), "p1", 1000, 0], [iid(2), "p1", 2000, 0xFFFF]],
    }
    d = Deduplicator(DedupPolicy(), bands=stored)
    assert d.reband() == 2
    assert all(d.policy.band_plan.owns(key) for key in stored)
    assert d.process(img(3, phash=0b11)) == Verdict.near(iid(3), iid(1), 2)


def test_reband_keeps_the_newest_candidates_under_the_cap():
    stored = {"00:000": [[iid(n), "p1", n * 1000, 0] for n in range(1, 6)]}
    d = Deduplicator(DedupPolicy(max_band_candidates=3), bands=stored)
    assert d.reband() == 5
    assert {tuple(c[0] for c in cands) for cands in d.bands.values()} == {(iid(3), iid(4), iid(5))}
