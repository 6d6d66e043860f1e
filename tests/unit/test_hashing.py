import pytest
from hypothesis import given, strategies as st

from imgstream.domain.hashing import (
    DEFAULT_INDEX_BANDS,
    HASH_BITS,
    MAX_PROBES,
    BandPlan,
    band_layout,
    default_bands,
    format_hash,
    hamming,
    key_of_text,
    key_text,
    parse_hash,
    probe_count,
)

hashes = st.integers(min_value=0, max_value=2**64 - 1)
distances = st.integers(min_value=0, max_value=16)


def flip(h: int, positions: set[int]) -> int:
    for p in positions:
        h ^= 1 << p
    return h


def test_parse_and_format_round_trip():
    assert parse_hash("FFFFFFFFFFFFFFFF") == 2**64 - 1
    assert parse_hash("0000000000000001") == 1
    assert format_hash(255) == "00000000000000ff"
    assert format_hash("ABCDEF0123456789") == "abcdef0123456789"


@pytest.mark.parametrize("bad", ["", "abc", "g" * 16, "0" * 17, -1, 2**64, True, 1.5, None])
def test_parse_rejects_non_hashes(bad):
    with pytest.raises(ValueError):
        parse_hash(bad)


def test_hamming_known_values():
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming(0b1011, 0b0001) == 2
    assert hamming("00000000000000ff", 0) == 8


@given(hashes, hashes)
def test_hamming_is_symmetric_and_accepts_hex_or_int(a, b):
    assert hamming(a, b) == hamming(b, a) == hamming(format_hash(a), format_hash(b))
    assert (hamming(a, b) == 0) == (a == b)


@given(hashes, hashes, hashes)
def test_hamming_triangle_inequality(a, b, c):
    assert hamming(a, c) <= hamming(a, b) + hamming(b, c)


@given(hashes, st.sets(st.integers(0, HASH_BITS - 1), max_size=HASH_BITS))
def test_hamming_counts_flipped_bits(h, positions):
    assert hamming(h, flip(h, positions)) == len(positions)


@pytest.mark.parametrize("bands", [1, 2, 3, 7, 9, 11, 64])
def test_band_layout_covers_every_bit_once(bands):
    layout = band_layout(bands)
    assert len(layout) == bands
    covered = [bit for shift, width in layout for bit in range(shift, shift + width)]
    assert sorted(covered) == list(range(HASH_BITS))
    widths = {w for _, w in layout}
    assert max(widths) - min(widths) <= 1


@given(hashes, st.integers(1, 64))
def test_bands_reassemble_the_hash(h, bands):
    plan = BandPlan(0, bands)  # radius 0: any band count is a valid plan
    value = 0
    for key, (shift, width) in zip(plan.keys(h), plan.layout):
        digits = key_text(key).partition(":")[2]
        assert len(digits) == (width + 3) // 4 and digits == digits.lower()  # padded, one spelling
        band = int(digits, 16)
        assert 0 <= band < 2**width
        assert key & (2**64 - 1) == band
        value |= band << shift
    assert value == h


def test_default_bands_probe_little_and_never_exceed_the_limit():
    assert [default_bands(d) for d in range(5)] == [1, 2, 3, 4, 4]  # d + 1 bands need no probing
    plan = BandPlan.for_distance(6)
    assert (plan.bands, plan.radius, plan.probes) == (DEFAULT_INDEX_BANDS, 1, 4 * (1 + 16))
    for d in range(HASH_BITS):
        bands = default_bands(d)
        assert probe_count(d, bands) <= MAX_PROBES
        assert BandPlan.for_distance(d).probes == probe_count(d, bands)


@pytest.mark.parametrize(
    ("max_distance", "bands"), [(-1, None), (64, None), (6, 0), (6, 65), (16, 4), (8, 1)]
)
def test_band_plan_rejects_impossible_layouts(max_distance, bands):
    # (16, 4) and (8, 1) would need over MAX_PROBES lookups per image (10,068 and ~5e9)
    with pytest.raises(ValueError):
        BandPlan.for_distance(max_distance, bands)


@st.composite
def plans(draw):
    max_distance = draw(distances)
    feasible = st.integers(1, HASH_BITS).filter(lambda b: probe_count(max_distance, b) <= MAX_PROBES)
    bands = draw(st.one_of(st.none(), feasible))
    return BandPlan.for_distance(max_distance, bands)


@given(hashes, plans(), st.data())
def test_probing_never_misses_a_pair_within_the_threshold(h, plan, data):
    d = data.draw(st.integers(0, plan.max_distance))
    positions = data.draw(st.sets(st.integers(0, HASH_BITS - 1), min_size=d, max_size=d))
    other = flip(h, positions)
    assert hamming(h, other) <= plan.max_distance
    assert set(plan.keys(other)) & set(plan.probe_keys(h))


@given(hashes, plans())
def test_keys_are_one_per_band_owned_and_probed(h, plan):
    keys = plan.keys(h)
    assert len(keys) == plan.bands == len(set(keys))
    assert plan.keys(format_hash(h).upper()) == keys
    probes = plan.probe_keys(h)
    assert len(probes) == plan.probes == len(set(probes))
    assert set(keys) <= set(probes)
    assert all(plan.owns(k) for k in probes)


def test_same_bits_in_different_bands_do_not_collide():
    # all-zero hash: every band value is 0, but the keys differ by band index
    keys = BandPlan.for_distance(6).keys(0)
    assert len(set(keys)) == 4
    assert [key_text(k) for k in keys] == ["4.0:0000", "4.1:0000", "4.2:0000", "4.3:0000"]


def test_keys_of_another_layout_are_not_owned():
    plan = BandPlan.for_distance(6)
    other = BandPlan.for_distance(6, bands=7)
    assert not any(plan.owns(k) for k in other.keys(0))
    assert not plan.owns("00:1ff")  # the layout before the band count was part of the key
    assert not plan.owns("4.3:ffff")  # text is a state key, never an index's
    assert plan.owns(key_of_text("4.3:ffff"))


@given(hashes, plans())
def test_probing_can_miss_pairs_beyond_the_threshold(h, plan):
    # flipping radius + 1 bits in every band (distance = bands * (radius + 1) > d) meets no key
    positions = {shift + bit for shift, width in plan.layout for bit in range(min(width, plan.radius + 1))}
    if any(width <= plan.radius for _, width in plan.layout):
        return  # a band narrower than the radius is probed whole
    other = flip(h, positions)
    assert hamming(h, other) > plan.max_distance
    assert not set(plan.keys(other)) & set(plan.probe_keys(h))


# --- band keys: ints in memory, text in state ----------------------------------------------


@given(hashes, plans())
def test_band_keys_read_back_from_their_stored_text(h, plan):
    for key in plan.probe_keys(h):
        text = key_text(key)
        assert key_of_text(text) == key
        index, digits = text.split(":")
        bands, band = index.split(".")
        assert int(bands) == plan.bands and len(digits) == (plan.layout[int(band)][1] + 3) // 4
        assert int(digits, 16) == key & (2**64 - 1)


def test_band_keys_spell_what_stored_string_keys_were():
    # the text a savepoint taken before keys were ints holds: it must read back as the same keys
    plan = BandPlan.for_distance(6)
    h = 0x0123_4567_89AB_CDEF
    assert [key_text(k) for k in plan.keys(h)] == ["4.0:0123", "4.1:4567", "4.2:89ab", "4.3:cdef"]
    assert BandPlan.for_distance(6, bands=7).keys(0)[0] == key_of_text("7.0:000")  # 10 bits: 3 digits


@pytest.mark.parametrize("text", ["00:1ff", "4.0", "4.0:000", "4.0:00000", "4.4:0000", "4.0:ABCD", "0.0:0",
                                  "65.0:0", "4.0:-001", "x", "", "4" * 5000 + ".0:0", "1.0:" + "f" * 17])
def test_texts_that_are_no_band_key_stay_strings_no_plan_owns(text):
    assert key_of_text(text) == text
    assert key_text(text) == text
    assert not BandPlan.for_distance(6).owns(text)
