"""64-bit perceptual hashes: Hamming distance and the band index for near-duplicate search.

Near-duplicate detection must not compare every image with every other. Instead each hash is
split into ``m`` contiguous *bands* and the index keys every image by ``(band index, band
value)`` - multi-index hashing. Two hashes within ``d`` bits (``d`` = the largest Hamming
distance still called a near duplicate) cannot differ in more than ``d // m`` bits in *every*
band, or they would differ in more than ``d`` bits in all (pigeonhole). So an image looks up,
per band, every band value within ``r = d // m`` bits of its own, and finds every earlier hash
within ``d`` among what those keys hold; only those are compared.

``m = d + 1`` bands need no probing (``r = 0``) but are narrow: at ``d = 6``, 7 bands of 9-10
bits, so each key collects ``1/1,024`` of all images. The default is 4 bands of 16 bits with
``r = 1``: 68 lookups per image, each key holding ``1/65,536`` of the images (see
:class:`BandPlan`).

Pure functions, no framework imports: used by the Flink jobs and by unit tests alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import Protocol

#: Width of the perceptual hash the gateway publishes (``phash.phash``: 16 hex chars).
HASH_BITS = 64
HASH_HEX_CHARS = HASH_BITS // 4
_HASH_MASK = (1 << HASH_BITS) - 1

#: Largest threshold banding supports: ``d + 1`` bands of at least one bit each.
MAX_BANDED_DISTANCE = HASH_BITS - 1
#: Bands of the near-duplicate index by default: 4 bands of 16 bits. Each key then holds about
#: ``N / 65,536`` of ``N`` indexed hashes (random ones), so the lists stay short up to millions
#: of images; 7 bands of 9-10 bits (one per bit of the default threshold, no probing) held
#: ``N / 1,024`` each, and every image rewrote 7 of them.
DEFAULT_INDEX_BANDS = 4
#: Most keys one image may look up (see :func:`probe_count`): 4 bands at distance 6 need 68.
MAX_PROBES = 4096

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


#: Widest band whose hex digits :func:`hex_digits` tabulates (65,536 short strings, ~4 MB);
#: wider bands format each value. The default bands are 16 bits wide.
MAX_TABULATED_BAND_BITS = 16


class HexDigits(Protocol):
    """The hex digits of band values, indexed by the value (a tuple, or a formatter)."""

    def __getitem__(self, value: int, /) -> str: ...


class _FormattedHex:
    """``hex_digits`` for bands too wide to tabulate: formats on every lookup."""

    __slots__ = ("spec",)

    def __init__(self, digits: int) -> None:
        self.spec = f"0{digits}x"

    def __getitem__(self, value: int) -> str:
        return format(value, self.spec)


@lru_cache(maxsize=None)
def hex_digits(width: int) -> HexDigits:
    """Zero-padded lower-case hex of every ``width``-bit value, indexed by the value.

    Probing builds 68 keys per image; concatenating a tabulated string costs a fraction of
    formatting each value. A table per width is built once per process (not pickled with a
    plan); bands wider than :data:`MAX_TABULATED_BAND_BITS` get a formatter instead.
    """
    digits = (width + 3) // 4
    if width > MAX_TABULATED_BAND_BITS:
        return _FormattedHex(digits)
    return tuple(format(value, f"0{digits}x") for value in range(1 << width))


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


def probe_radius(max_distance: int, bands: int) -> int:
    """Bits a probe may flip per band so no pair within ``max_distance`` is missed.

    If every band of two hashes differed in more than ``max_distance // bands`` bits, they
    would differ in more than ``max_distance`` bits in all; so one band is within that radius.
    """
    return max_distance // bands


def _flip_masks(width: int, radius: int) -> tuple[int, ...]:
    """Every ``width``-bit mask with at most ``radius`` bits set, the empty mask first."""
    return tuple(
        sum(1 << bit for bit in bits) for weight in range(radius + 1) for bits in combinations(range(width), weight)
    )


def probe_count(max_distance: int, bands: int) -> int:
    """Lookups per image for ``bands`` bands: the masks within the radius, summed over bands."""
    radius = probe_radius(max_distance, bands)
    return sum(sum(comb(width, k) for k in range(radius + 1)) for _, width in band_layout(bands))


def default_bands(max_distance: int) -> int:
    """The band count the index uses for ``max_distance`` unless told otherwise.

    :data:`DEFAULT_INDEX_BANDS` (fewer for tiny thresholds: ``d + 1`` bands already need no
    probing), more if that would exceed :data:`MAX_PROBES` lookups per image.
    """
    _check_distance(max_distance)
    bands = min(max_distance + 1, DEFAULT_INDEX_BANDS)
    while probe_count(max_distance, bands) > MAX_PROBES:
        bands += 1  # terminates: d + 1 bands need d + 1 probes, and d + 1 <= 64 <= MAX_PROBES
    return bands


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= MAX_BANDED_DISTANCE:
        raise ValueError(f"max_distance must be in 0..{MAX_BANDED_DISTANCE}, got {max_distance}")


#: Per band, its flip masks grouped by their top bits: ``((top bits, masks), ...)`` (:meth:`BandPlan.routed_probes`).
SplitMasks = tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]


@dataclass(frozen=True)
class BandPlan:
    """How the near-duplicate index splits hashes into band keys and where an image looks.

    An image is *registered* under one key per band (:meth:`keys`) and *probes* every key
    within :attr:`radius` bits of each of its bands (:meth:`probe_keys`). Any earlier hash
    within :attr:`max_distance` bits is registered under at least one probed key
    (:func:`probe_radius`), so near dedup compares only what it finds there.

    Keys read ``"<bands>.<index>:<band hex>"``: the band count is part of every key, so the
    entries of another layout are recognisable (:meth:`owns`) and can be re-banded.
    """

    max_distance: int
    bands: int
    layout: tuple[tuple[int, int], ...] = field(init=False, repr=False)
    radius: int = field(init=False)
    _formats: tuple[tuple[str, int, int, int], ...] = field(init=False, repr=False, compare=False)
    _masks: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _prefixes: frozenset[str] = field(init=False, repr=False, compare=False)
    _split_cache: dict[int, SplitMasks] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        _check_distance(self.max_distance)
        layout = band_layout(self.bands)
        probes = probe_count(self.max_distance, self.bands)
        if probes > MAX_PROBES:
            raise ValueError(
                f"{self.bands} bands for distance {self.max_distance} need {probes} lookups per image"
                f" (limit {MAX_PROBES}); use more bands"
            )
        radius = probe_radius(self.max_distance, self.bands)
        formats = tuple(
            (f"{self.bands}.{index}:", shift, (1 << width) - 1, width)
            for index, (shift, width) in enumerate(layout)
        )
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "_formats", formats)
        object.__setattr__(self, "_masks", tuple(_flip_masks(width, radius) for _, width in layout))
        object.__setattr__(self, "_prefixes", frozenset(prefix for prefix, *_ in formats))

    @classmethod
    def for_distance(cls, max_distance: int, bands: int | None = None) -> "BandPlan":
        """The plan for ``max_distance``; ``bands`` ``None`` = :func:`default_bands`."""
        return cls(max_distance, default_bands(max_distance) if bands is None else bands)

    @property
    def probes(self) -> int:
        """Lookups per image."""
        return sum(len(masks) for masks in self._masks)

    def keys(self, value: HashLike) -> tuple[str, ...]:
        """The keys ``value`` is registered under: one per band."""
        h = parse_hash(value)
        return tuple(prefix + hex_digits(width)[(h >> shift) & mask] for prefix, shift, mask, width in self._formats)

    def probe_keys(self, value: HashLike) -> list[str]:
        """The keys to look ``value``'s near duplicates up in: every band value within
        :attr:`radius` bits of each of its own (its registration keys included)."""
        h = parse_hash(value)
        return [
            prefix + digits[band ^ flip]
            for (prefix, shift, mask, width), masks in zip(self._formats, self._masks)
            for band, digits in (((h >> shift) & mask, hex_digits(width)),)
            for flip in masks
        ]

    def routed_probes(self, value: HashLike, split_bits: int) -> list[tuple[int, int, tuple[str, ...], bool]]:
        """:meth:`probe_keys` grouped for a sharded index that splits each band by the top
        ``split_bits`` bits of its value: ``(band index, top bits of the probed values, keys in
        probe order, whether the group holds the band's own value)`` per group. A probe's top
        bits are its band's top bits XOR its flip mask's, so the masks are grouped once per
        ``split_bits`` and an image costs one key per probe, not a route computed per key."""
        h = parse_hash(value)
        out = []
        for index, ((prefix, shift, mask, width), groups) in enumerate(zip(self._formats, self._split_masks(split_bits))):
            band = (h >> shift) & mask
            digits = hex_digits(width)
            top = band >> (width - split_bits)
            for flip_top, flips in groups:
                out.append((index, top ^ flip_top, tuple([prefix + digits[band ^ flip] for flip in flips]), not flip_top))
        return out

    def _split_masks(self, split_bits: int) -> SplitMasks:
        """Per band, its flip masks grouped by their top ``split_bits`` bits (the group of 0, with
        the empty mask, first; masks in probe order within each group); computed once per ``split_bits``."""
        cached = self._split_cache.get(split_bits)
        if cached is None:
            per_band = []
            for (_, _, _, width), masks in zip(self._formats, self._masks):
                groups: dict[int, list[int]] = {}
                for flip in masks:
                    groups.setdefault(flip >> (width - split_bits), []).append(flip)
                per_band.append(tuple((flip_top, tuple(flips)) for flip_top, flips in groups.items()))
            cached = self._split_cache[split_bits] = tuple(per_band)
        return cached

    def owns(self, key: str) -> bool:
        """Whether ``key`` is a key of this plan's layout (not of another band count)."""
        return key[: key.find(":") + 1] in self._prefixes
