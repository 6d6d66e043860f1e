"""Perceptual hashing: a 64-bit DCT hash (pHash) that survives re-encoding and resizing.

The image is reduced to 32x32 grey, DCT'd, and the top-left 8x8 block of coefficients (lowest
frequencies) is thresholded at its median: 64 bits, 16 hex digits. Near duplicates are images
whose hashes differ in few bits (:mod:`imgstream.domain.hashing`, :mod:`imgstream.domain.dedup`).
Decoding is as cheap as the hash allows: JPEGs decode at up to 1/8 scale (draft mode).

Pure library code: Pillow and numpy only.
"""

from __future__ import annotations

import io
import struct
from functools import lru_cache
from typing import IO, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

#: Side of the square the JPEG decoder is asked to scale towards in draft mode. libjpeg picks the
#: largest 1/2, 1/4, 1/8 reduction that stays above it, so a 12 MP photo decodes at ~500x375
#: (about 9x cheaper than a full decode) and still has far more detail than the 32x32 the hash
#: needs.
DRAFT_SIZE: Final = 256

#: pHash parameters: the image is reduced to 32x32, DCT'd, and the top-left 8x8 block of
#: coefficients (lowest frequencies) is thresholded at its median: 64 bits.
_HASH_SIDE: Final = 8
_DCT_SIDE: Final = 32


@lru_cache(maxsize=1)
def _dct_matrix(n: int = _DCT_SIDE) -> npt.NDArray[np.float64]:
    """Orthonormal DCT-II matrix: ``C @ x @ C.T`` is the 2-D DCT of an n x n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix: npt.NDArray[np.float64] = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0, :] = np.sqrt(1.0 / n)
    return matrix


# EXIF orientation -> transpose that brings the reduced image upright, so a photo and the same
# photo physically rotated (orientation tag cleared) hash alike.
_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


#: Modes with more than 8 bits per sample: scaled into 8 bits before hashing, since a plain
#: ``convert("L")`` clips them to white.
HIGH_BIT_DEPTH_MODES: Final = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})


def _to_8_bits(image: Image.Image) -> Image.Image:
    """Scale a high-bit-depth image so its peak becomes 255, without a full-size float copy.

    The peak comes from ``getextrema`` (no copy) and the scaling runs inside Pillow (a lookup
    table for 16-bit data), so memory stays at one extra image of the source's own depth plus
    the 8-bit result: about 250 MB for a 50 MP 16-bit PNG, where two float64 arrays took 800 MB.
    The result is the same as ``(pixels * 255 / peak).astype(uint8)`` bit for bit.
    """
    image.load()
    low_high = image.getextrema()
    peak = float(low_high[1]) if isinstance(low_high, tuple) and not isinstance(low_high[0], tuple) else 0.0
    scale = 255.0 / peak if peak > 0 else 1.0
    scaled = image.point(lambda value: value * scale)
    return scaled.convert("L")


def phash_image(image: Image.Image) -> str:
    """64-bit DCT perceptual hash of an opened image's first frame, as 16 hex digits.

    Decodes the pixels (JPEG at up to 1/8 scale via draft mode). Decoder errors propagate as
    Pillow raises them; :func:`imgstream.domain.imaging.inspect` maps them to
    :class:`CorruptImage`.
    """
    orientation = 1
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except (ValueError, TypeError, OSError, SyntaxError, struct.error):
        orientation = 1  # a malformed EXIF block is no reason to refuse the pixels
    if image.format == "JPEG":
        image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = _to_8_bits(image)
    gray = image.convert("L")  # forces the decode of the (first) frame
    small = gray.resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    if orientation in _ORIENTATION:
        small = small.transpose(_ORIENTATION[orientation])
    pixels = np.asarray(small, dtype=np.float64)
    matrix = _dct_matrix()
    coefficients = (matrix @ pixels @ matrix.T)[:_HASH_SIDE, :_HASH_SIDE]
    bits = (coefficients > np.median(coefficients)).flatten()  # row-major, first bit = MSB
    return np.packbits(bits).tobytes().hex()


def phash(source: bytes | IO[bytes] | Image.Image) -> str:
    """Perceptual hash (16 hex digits) of an image given as bytes, a binary file or a Pillow image."""
    if isinstance(source, Image.Image):
        return phash_image(source)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(fp) as image:
        return phash_image(image)
