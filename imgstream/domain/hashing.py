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

import re
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from math import comb

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
#: A key of the near-duplicate index (:func:`band_key`).
BandKey = int


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


#: A band key is an ``int``: the band count, the band's index and its value, in bits
#: ``KEY_BANDS_SHIFT..``, ``KEY_INDEX_SHIFT..KEY_BANDS_SHIFT`` and ``0..KEY_INDEX_SHIFT`` (a band is at
#: most 64 bits wide, an index below 64). Probing builds 68 keys per image: an ``int`` is one
#: XOR, where a string was a concatenation, and it hashes, compares and pickles faster.
KEY_INDEX_SHIFT = HASH_BITS
KEY_BANDS_SHIFT = KEY_INDEX_SHIFT + 6
_INDEX_MASK = (1 << (KEY_BANDS_SHIFT - KEY_INDEX_SHIFT)) - 1
#: A band key as a stored state key spells it (:func:`key_text`): ``<bands>.<index>:<hex>``.
_KEY_TEXT = re.compile(r"([0-9]{1,2})\.([0-9]{1,2}):([0-9a-f]{1,16})")


def band_key(bands: int, index: int, value: int) -> int:
    """The key of band ``index`` (of ``bands``) holding ``value``."""
    return (bands << KEY_BANDS_SHIFT) | (index << KEY_INDEX_SHIFT) | value


def key_text(key: BandKey | str) -> str:
    """``key`` as Flink state stores it: ``<bands>.<index>:<value in hex>``, the value zero-padded
    to its band's width (the spelling keys had when they were strings, so saved state reads
    back). A string (a key of an older layout, see :func:`key_of_text`) is its own text."""
    if isinstance(key, str):
        return key
    bands, index, value = key >> KEY_BANDS_SHIFT, (key >> KEY_INDEX_SHIFT) & _INDEX_MASK, key & _HASH_MASK
    width = band_layout(bands)[index][1]
    return f"{bands}.{index}:{value:0{(width + 3) // 4}x}"


def key_of_text(text: str) -> BandKey | str:
    """The band key :func:`key_text` spells as ``text``; a text it does not spell exactly (a key
    of a layout from before the band count was part of it, say) stays a string, which no
    plan :meth:`~BandPlan.owns`: re-banding moves what it holds."""
    parsed = _KEY_TEXT.fullmatch(text)
    if parsed is None:
        return text
    bands, index, value = int(parsed[1]), int(parsed[2]), int(parsed[3], 16)
    if not 1 <= bands <= HASH_BITS or index >= bands or value > _HASH_MASK:
        return text
    key = band_key(bands, index, value)
    return key if key_text(key) == text else text


@lru_cache(maxsize=None)
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


#: Per band, its flip masks grouped by their top bits: ``((top bits, masks), ...)`` (:meth:`BandPlan.shard_probes`).
SplitMasks = tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]


@dataclass(frozen=True)
class BandPlan:
    """How the near-duplicate index splits hashes into band keys and where an image looks.

    An image is *registered* under one key per band (:meth:`keys`) and *probes* every key
    within :attr:`radius` bits of each of its bands (:meth:`probe_keys`). Any earlier hash
    within :attr:`max_distance` bits is registered under at least one probed key
    (:func:`probe_radius`), so near dedup compares only what it finds there.

    Keys are ints (:func:`band_key`) holding the band count, so the entries of another layout
    are recognisable (:meth:`owns`) and can be re-banded; state stores them as text
    (:func:`key_text`: ``"<bands>.<index>:<band hex>"``).
    """

    max_distance: int
    bands: int
    layout: tuple[tuple[int, int], ...] = field(init=False, repr=False)
    radius: int = field(init=False)
    #: per band: the key of its value 0, its shift and its mask
    _formats: tuple[tuple[BandKey, int, int], ...] = field(init=False, repr=False, compare=False)
    _masks: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
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
            (band_key(self.bands, index, 0), shift, (1 << width) - 1) for index, (shift, width) in enumerate(layout)
        )
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "_formats", formats)
        object.__setattr__(self, "_masks", tuple(_flip_masks(width, radius) for _, width in layout))

    @classmethod
    def for_distance(cls, max_distance: int, bands: int | None = None) -> "BandPlan":
        """The plan for ``max_distance``; ``bands`` ``None`` = :func:`default_bands`."""
        return cls(max_distance, default_bands(max_distance) if bands is None else bands)

    @property
    def flip_masks(self) -> tuple[tuple[int, ...], ...]:
        """Per band, the masks its probes flip its value by (the empty mask first): what
        :meth:`probe_keys` XORs onto each band's own key, in that order."""
        return self._masks

    @property
    def probes(self) -> int:
        """Lookups per image."""
        return sum(len(masks) for masks in self._masks)

    def keys(self, value: HashLike) -> tuple[BandKey, ...]:
        """The keys ``value`` is registered under: one per band."""
        h = parse_hash(value)
        return tuple(base | (h >> shift) & mask for base, shift, mask in self._formats)

    def probe_keys(self, value: HashLike) -> list[BandKey]:
        """The keys to look ``value``'s near duplicates up in: every band value within
        :attr:`radius` bits of each of its own (its registration keys included)."""
        h = parse_hash(value)
        return [
            own ^ flip
            for (base, shift, mask), masks in zip(self._formats, self._masks)
            for own in (base | (h >> shift) & mask,)
            for flip in masks
        ]

    def split_tops(self, value: HashLike, split_bits: int) -> list[tuple[int, int]]:
        """Where :meth:`probe_keys` fall in a sharded index that splits each band by the top
        ``split_bits`` bits of its value: ``(band index, top bits of the probed values)`` per
        group of them, the group holding the band's own value first."""
        h = parse_hash(value)
        return [(index, top ^ flip_top) for index in range(self.bands)
                for _, top, groups in (self._split(h, index, split_bits),) for flip_top, _ in groups]

    def shard_probes(self, value: HashLike, split_bits: int, index: int, top: int) -> tuple[tuple[BandKey, ...], bool]:
        """The keys of :meth:`probe_keys` in band ``index`` whose values have top bits ``top``,
        in probe order (empty when there are none), and whether the band's own value is among
        them (it is then the first). A probe's top bits are its band's top bits XOR its flip
        mask's, so the masks are grouped once per ``split_bits`` and a key costs one XOR."""
        own, home, groups = self._split(parse_hash(value), index, split_bits)
        for flip_top, flips in groups:
            if home ^ flip_top == top:
                return tuple([own ^ flip for flip in flips]), not flip_top
        return (), False

    def _split(self, h: int, index: int, split_bits: int) -> tuple[BandKey, int, tuple[tuple[int, tuple[int, ...]], ...]]:
        """Band ``index`` of hash ``h``: its own key, the top ``split_bits`` bits of its value and
        its flip masks grouped by their top bits (:meth:`_split_masks`)."""
        (base, shift, mask), (_, width) = self._formats[index], self.layout[index]
        band = (h >> shift) & mask
        return base | band, band >> (width - split_bits), self._split_masks(split_bits)[index]

    def _split_masks(self, split_bits: int) -> SplitMasks:
        """Per band, its flip masks grouped by their top ``split_bits`` bits (the group of 0, with
        the empty mask, first; masks in probe order within each group); computed once per ``split_bits``."""
        cached = self._split_cache.get(split_bits)
        if cached is None:
            per_band = []
            for (_, width), masks in zip(self.layout, self._masks):
                groups: dict[int, list[int]] = {}
                for flip in masks:
                    groups.setdefault(flip >> (width - split_bits), []).append(flip)
                per_band.append(tuple((flip_top, tuple(flips)) for flip_top, flips in groups.items()))
            cached = self._split_cache[split_bits] = tuple(per_band)
        return cached

    def owns(self, key: BandKey | str) -> bool:
        """Whether ``key`` is a key of this plan's layout (not of another band count, nor a
        string: a key of an older layout, :func:`key_of_text`)."""
        return type(key) is int and key >> KEY_BANDS_SHIFT == self.bands
