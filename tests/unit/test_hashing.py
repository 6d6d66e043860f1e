import pytest
from hypothesis import given, strategies as st

from imgstream.hashing import (
    HASH_BITS,
    band_count,
    band_keys,
    band_layout,
    format_hash,
    hamming,
    parse_hash,
    shares_band,
    split_bands,
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
    value = 0
    for band, (shift, width) in zip(split_bands(h, bands), band_layout(bands)):
        assert 0 <= band < 2**width
        value |= band << shift
    assert value == h


def test_band_count_is_pigeonhole():
    assert band_count(0) == 1
    assert band_count(6) == 7
    with pytest.raises(ValueError):
        band_count(64)
    with pytest.raises(ValueError):
        band_count(-1)


@given(hashes, distances, st.data())
def test_banding_never_misses_a_pair_within_the_threshold(h, max_distance, data):
    d = data.draw(st.integers(0, max_distance))
    positions = data.draw(st.sets(st.integers(0, HASH_BITS - 1), min_size=d, max_size=d))
    other = flip(h, positions)
    assert hamming(h, other) <= max_distance
    assert shares_band(band_keys(h, max_distance), band_keys(other, max_distance))


@given(hashes, distances)
def test_band_keys_are_distinct_per_position(h, max_distance):
    keys = band_keys(h, max_distance)
    assert len(keys) == band_count(max_distance) == len(set(keys))
    assert band_keys(format_hash(h).upper(), max_distance) == keys


def test_same_bits_in_different_bands_do_not_collide():
    # all-zero hash: every band value is 0, but the keys differ by band index
    keys = band_keys(0, 3)
    assert keys == ("00:0000", "01:0000", "02:0000", "03:0000")


def test_bands_can_miss_pairs_beyond_the_threshold():
    # flipping one bit in every band (distance = bands) shares no band: the bound is tight
    a = 0
    b = flip(0, {shift for shift, _ in band_layout(band_count(3))})
    assert hamming(a, b) == 4
    assert not shares_band(band_keys(a, 3), band_keys(b, 3))
