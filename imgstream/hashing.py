"""64-bit perceptual hashes: Hamming distance and banding for near-duplicate candidate search.

Near-duplicate detection must not compare every image with every other. Instead each hash is
split into ``d + 1`` contiguous *bands* (``d`` = the largest Hamming distance still called a
near duplicate). Two hashes that differ in at most ``d`` bits can differ in at most ``d`` bands,
so by the pigeonhole principle they agree exactly on at least one band. Keying state by
``(band index, band value)`` therefore puts every pair within the threshold into at least one
common key, and only images sharing a key are ever compared.

Pure functions, no framework imports: used by the Flink jobs and by unit tests alike.
"""

from __future__ import annotations

from typing import Sequence

#: Width of the perceptual hash the gateway publishes (``imaging.phash``: 16 hex chars).
HASH_BITS = 64
HASH_HEX_CHARS = HASH_BITS // 4
_HASH_MASK = (1 << HASH_BITS) - 1

#: Largest threshold banding supports: ``d + 1`` bands of at least one bit each.
MAX_BANDED_DISTANCE = HASH_BITS - 1

HashLike = str | int


def parse_hash(value: HashLike) -> int:
    """A 64-bit hash as an ``int``, from 16 hex characters (any case) or an ``int``.

    Raises :class:`ValueError` for anything else (wrong length, non-hex, out of range, bool).
    """
    if isinstance(value, bool):  # bool is an int subclass; a hash is never True/False
        raise ValueError("a hash is not a bool")
    if isinstance(value, int):
        if not 0 <= value <= _HASH_MASK:
            raise ValueError(f"hash out of 64-bit range: {value}")
        return value
    if isinstance(value, str):
        if len(value) != HASH_HEX_CHARS:
            raise ValueError(f"hash must be {HASH_HEX_CHARS} hex characters, got {len(value)}")
        try:
            return int(value, 16)
        except ValueError:
            raise ValueError(f"hash is not hexadecimal: {value!r}") from None
    raise ValueError(f"unsupported hash type {type(value).__name__}")


def format_hash(value: HashLike) -> str:
    """Canonical text form: 16 lower-case hex characters."""
    return f"{parse_hash(value):0{HASH_HEX_CHARS}x}"


def hamming(a: HashLike, b: HashLike) -> int:
    """Number of differing bits between two 64-bit hashes (0..64)."""
    return (parse_hash(a) ^ parse_hash(b)).bit_count()


def band_count(max_distance: int) -> int:
    """How many bands guarantee a shared band for any pair within ``max_distance`` bits."""
    if not 0 <= max_distance <= MAX_BANDED_DISTANCE:
        raise ValueError(f"max_distance must be in 0..{MAX_BANDED_DISTANCE}, got {max_distance}")
    return max_distance + 1


def band_layout(bands: int) -> tuple[tuple[int, int], ...]:
    """``(shift, width)`` of each band, most significant first, widths differing by at most 1.

    The first ``64 % bands`` bands get one extra bit, so all 64 bits are covered exactly once.
    """
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be in 1..{HASH_BITS}, got {bands}")
    base, extra = divmod(HASH_BITS, bands)
    layout: list[tuple[int, int]] = []
    top = HASH_BITS
    for index in range(bands):
        width = base + (1 if index < extra else 0)
        top -= width
        layout.append((top, width))
    return tuple(layout)


def split_bands(value: HashLike, bands: int) -> tuple[int, ...]:
    """The value of each band of ``value`` (see :func:`band_layout`)."""
    h = parse_hash(value)
    return tuple((h >> shift) & ((1 << width) - 1) for shift, width in band_layout(bands))


def band_keys(value: HashLike, max_distance: int) -> tuple[str, ...]:
    """State keys for ``value``: one ``"<index>:<band hex>"`` per band.

    The band index is part of the key so equal bit patterns in different positions never
    collide. Any two hashes with ``hamming(a, b) <= max_distance`` share at least one key.
    """
    bands = band_count(max_distance)
    layout = band_layout(bands)
    return tuple(
        f"{index:02d}:{band:0{(width + 3) // 4}x}"
        for index, (band, (_, width)) in enumerate(zip(split_bands(value, bands), layout))
    )


def shares_band(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two band-key tuples (from :func:`band_keys` with one threshold) share a key."""
    return any(x == y for x, y in zip(a, b))
