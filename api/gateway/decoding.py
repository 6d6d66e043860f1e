"""A budget of decode memory shared by the gateway's inspect workers.

The body limit bounds what an upload occupies on the way in, not what it occupies decoded: a
~100 KB PNG can declare 50 million 16-bit pixels, and its perceptual hash then needs a few
hundred MB for a moment. The worker pool bounds how many decodes run at once; this budget bounds
how much memory they may hold together, so two or more such images queue instead of taking the
pod past its memory limit. Small images (nearly all of them) never wait.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final, Iterator

from PIL import Image

#: Decode memory all workers may hold at once. One 50 MP 16-bit PNG peaks at ~250 MB while it is
#: hashed (measured, tests/unit/test_imaging.py); 320 MiB admits one of those, or a dozen 12 MP
#: photos, at a time, and keeps the process (about 120 MB without any decode) under 600 MB of RSS
#: and well inside its 1 GiB pod limit.
DECODE_MEMORY_BYTES: Final = 320 * 1024 * 1024

#: Peak bytes per pixel while a non-JPEG image is decoded and reduced for hashing: Pillow keeps
#: most modes at 4 bytes per pixel, plus the 8-bit grey copy the hash is computed from (16-bit
#: samples are scaled through a 32-bit copy: measured ~5 B/px for 50 MP I;16).
PEAK_BYTES_PER_PIXEL: Final = 5
#: JPEGs decode in draft mode at up to 1/8 scale per side: 1/64 of the pixels.
JPEG_DRAFT_AREA_DIVISOR: Final = 64


def decode_cost(image: Image.Image) -> int:
    """Estimated peak bytes of decoding and hashing ``image`` (opened, not yet decoded)."""
    width, height = image.size
    cost = width * height * PEAK_BYTES_PER_PIXEL
    if image.format == "JPEG":
        cost //= JPEG_DRAFT_AREA_DIVISOR
    return cost


class DecodeBudget:
    """Bytes of decode memory, reserved by worker threads around each decode (blocking)."""

    def __init__(self, limit: int = DECODE_MEMORY_BYTES) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, image: Image.Image) -> Iterator[None]:
        """Hold ``decode_cost(image)`` (at most the whole budget, so any image can run alone)
        while the block runs; wait in the calling thread until that much is free."""
        cost = min(decode_cost(image), self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + cost <= self.limit)
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()
