"""Image inspection for untrusted uploads: sniff, scan, probe the header, check structure.

Every check here runs *before* the expensive one after it, so hostile input is turned away
as cheaply as possible:

1. :func:`sniff` names the format from the first bytes (magic numbers). ``Content-Type`` headers
   and file names are never consulted.
2. :class:`StreamInspector` is fed the body chunk by chunk while it streams in: it counts bytes
   against a limit, computes SHA-256, sniffs the head and scans for embedded markup
   (JPEG+HTML polyglots), so a bad body is refused before it is read in full.
3. :func:`inspect` (blocking; run it in a thread) opens the spooled bytes with Pillow restricted to
   the sniffed format, reads the dimensions from the *header only*, refuses anything over the
   pixel limit, checks the container structure (PNG chunk CRCs, GIF trailer, RIFF length), and
   only then decodes, at reduced scale where the format allows (JPEG draft mode), to compute a
   64-bit perceptual hash (:mod:`imgstream.domain.phash`). A truncated or corrupt body fails that
   decode.

This module is pure library code: Pillow and numpy only, no I/O framework.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
import warnings
from dataclasses import dataclass
from typing import IO, Callable, ContextManager, Final

from PIL import Image, ImageFile, UnidentifiedImageError

from imgstream.domain.errors import BadRequest, CorruptImage, ImageTooLarge, PayloadTooLarge, UnsupportedMediaType
from imgstream.domain.phash import phash_image

#: Largest image accepted, in pixels (width x height of the first frame), checked from the header
#: before any decode. 50 MP admits every mainstream camera and phone (48 MP phone sensors,
#: 45 MP full-frame bodies) while bounding a full decode of a non-JPEG format to about
#: 200 MB (RGBA) per worker thread. Anything larger is almost always a decompression bomb.
MAX_PIXELS: Final = 50_000_000

#: Bytes needed to sniff every format we know (the longest signature read is the RIFF/WEBP and
#: ISO-BMFF ``ftyp`` brand at offset 8..12; the BMP DIB-header size at offset 14..18).
SNIFF_BYTES: Final = 32



@dataclass(frozen=True, slots=True)
class ImageFormat:
    """A format the platform accepts."""

    content_type: str
    pillow_format: str
    extension: str


JPEG = ImageFormat("image/jpeg", "JPEG", "jpg")
PNG = ImageFormat("image/png", "PNG", "png")
GIF = ImageFormat("image/gif", "GIF", "gif")
WEBP = ImageFormat("image/webp", "WEBP", "webp")
TIFF = ImageFormat("image/tiff", "TIFF", "tif")
BMP = ImageFormat("image/bmp", "BMP", "bmp")

#: Accepted formats by content type (the same enum as the event schema's ``content_type``).
SUPPORTED: Final[dict[str, ImageFormat]] = {f.content_type: f for f in (JPEG, PNG, GIF, WEBP, TIFF, BMP)}

# DIB header sizes Pillow's BMP reader understands: a real BMP has one of these at offset 14, which
# tells a bitmap from any text that happens to start with "BM".
_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the first bytes say a body is.

    ``format`` is set only for accepted formats; ``kind`` always names what was recognised
    (``"jpeg"``, ``"svg"``, ``"zip"``, ``"elf"``, ``"text"``, ``"unknown"``...), for error messages.
    """

    kind: str
    format: ImageFormat | None = None

    @property
    def supported(self) -> bool:
        return self.format is not None


# Recognised but refused. Order matters only where one signature prefixes another.
_REFUSED_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"\xfe\xed\xfa\xce", "Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "Java class / Mach-O universal binary"),
    (b"#!", "script"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"%PDF-", "PDF document"),
    (b"%!PS", "PostScript document"),
    (b"\xc5\xd0\xd3\xc6", "EPS document"),
    (b"8BPS", "Photoshop document"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"\x00\x00\x01\x00", "ICO icon"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00asm", "WebAssembly"),
)

_ISO_BMFF_BRANDS: Final[dict[bytes, str]] = {
    b"heic": "HEIC image",
    b"heix": "HEIC image",
    b"mif1": "HEIF image",
    b"msf1": "HEIF image",
    b"avif": "AVIF image",
    b"avis": "AVIF image",
    b"isom": "MP4 video",
    b"mp41": "MP4 video",
    b"mp42": "MP4 video",
    b"qt  ": "QuickTime video",
}

_TEXT_BYTES: Final = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0C, 0x0D}


def sniff(head: bytes) -> Sniffed:
    """Name the format of a body from its first bytes (pass at least :data:`SNIFF_BYTES`).

    Only magic numbers count; nothing the client says about the type is consulted.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("jpeg", JPEG)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("png", PNG)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed("gif", GIF)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Sniffed("webp", WEBP)
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Sniffed("tiff", TIFF)
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return Sniffed("bmp", BMP)
    for signature, kind in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return Sniffed(kind)
    if head[4:8] == b"ftyp":
        return Sniffed(_ISO_BMFF_BRANDS.get(head[8:12], "ISO media file"))
    return Sniffed(_sniff_text(head))


def _sniff_text(head: bytes) -> str:
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # BOM and leading whitespace
    if stripped.startswith((b"<svg", b"<?xml")) or b"<svg" in stripped:
        # An <?xml prolog is refused either way; SVG is named because it is the usual suspect
        # (scriptable "image").
        return "SVG/XML document"
    if stripped.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<script")):
        return "HTML document"
    if head and all(b in _TEXT_BYTES for b in head):
        return "text"
    return "unknown"


def require_supported(head: bytes) -> ImageFormat:
    """The accepted format of a body, or :class:`UnsupportedMediaType` naming what it is instead."""
    if not head:
        raise BadRequest("empty body: no image bytes were sent", reason="empty_body")
    found = sniff(head)
    if found.format is None:
        accepted = ", ".join(f.pillow_format for f in SUPPORTED.values())
        raise UnsupportedMediaType(
            f"not a supported image format (the bytes look like: {found.kind}); accepted: {accepted}",
            detected=found.kind,
        )
    return found.format


# --- embedded markup (polyglots) -----------------------------------------------------------------

# A JPEG+HTML polyglot is a valid image that a browser (or a server that guesses types from a file
# name) will also run as HTML/PHP. We refuse any image that carries an HTML tag able to execute or
# load something. The scan covers the whole body, so markup hidden in a comment segment, a text
# chunk or after the end-of-image marker is found alike.
#
# Cost: a literal "<" prefilter (C-speed scan) then a full match only at the ~1 in 4800 positions
# where "<" is followed by a plausible first letter: ~6 ms per 5 MB on one core here.
# False positives: every pattern is at least 6 fixed bytes (tag + delimiter), so the chance that
# random compressed data contains one is below 1e-5 for a 25 MiB body.
_MARKUP_PREFILTER: Final = re.compile(rb"<[!?BEHIOSbehios]")
_MARKUP: Final = re.compile(
    rb"<(?:script|iframe|object|embed|html|body|!doctype\s+html|\?php)[\s/>]",
    re.IGNORECASE,
)
# The longest pattern ("<!doctype html" plus whitespace) spans this many bytes; that much of the
# previous chunk is rescanned so a tag split across two chunks is still found.
_MARKUP_OVERLAP: Final = 24


def find_markup(data: bytes, start: int = 0) -> re.Match[bytes] | None:
    """The first executable-markup tag in ``data[start:]``, if any."""
    for candidate in _MARKUP_PREFILTER.finditer(data, start):
        found = _MARKUP.match(data, candidate.start())
        if found:
            return found
    return None


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """What :class:`StreamInspector` learnt from a complete body."""

    size: int
    sha256: str
    format: ImageFormat


class StreamInspector:
    """Checks a body while it streams in, chunk by chunk, without keeping it.

    ``feed`` raises as soon as the body is known to be unacceptable:
    :class:`PayloadTooLarge` past ``max_bytes``, :class:`UnsupportedMediaType` when the first
    bytes are not a supported image or when executable markup shows up. ``finish`` returns the
    size, the SHA-256 and the sniffed format.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._sha = hashlib.sha256()
        self._head = b""
        self._format: ImageFormat | None = None
        self._carry = b""

    @property
    def format(self) -> ImageFormat | None:
        """The sniffed format once enough bytes arrived, else ``None``."""
        return self._format

    def feed(self, chunk: bytes) -> None:
        """Account for the next chunk of the body."""
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"body exceeds the limit of {self.max_bytes} bytes", limit=self.max_bytes
            )
        self._sha.update(chunk)
        if self._format is None:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            if len(self._head) >= SNIFF_BYTES:
                self._format = require_supported(self._head)
        window = self._carry + chunk
        hit = find_markup(window)
        if hit is not None:
            raise UnsupportedMediaType(
                f"image carries embedded markup ({hit.group(0)[:16]!r}): refused as a possible "
                "HTML/script polyglot",
                detected="polyglot",
            )
        self._carry = window[-_MARKUP_OVERLAP:]

    def finish(self) -> StreamSummary:
        """Close the stream: sniff a short body now and return the summary."""
        if self._format is None:
            self._format = require_supported(self._head)
        return StreamSummary(size=self.size, sha256=self._sha.hexdigest(), format=self._format)


# --- header probe, structure checks, decode -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """Facts about an accepted image."""

    format: ImageFormat
    width: int
    height: int
    phash: str


def configure_pillow(max_pixels: int = MAX_PIXELS) -> None:
    """Set Pillow's process-wide guards to agree with ours. Call once at a service's entry point.

    Pillow raises :class:`PIL.Image.DecompressionBombError` by itself above twice
    ``MAX_IMAGE_PIXELS``; setting it to our limit means any Pillow code path in the process, not
    only :func:`inspect`, refuses a bomb. Its warning between 1x and 2x is silenced because
    :func:`probe` already refuses those images with a clear error.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image must fail, never decode half grey
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def probe(fp: IO[bytes], fmt: ImageFormat, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``fp`` as ``fmt`` reading only the header, and enforce the pixel limit.

    Returns the opened, not yet decoded, image. Raises :class:`ImageTooLarge` over
    ``max_pixels`` and :class:`CorruptImage` when the header cannot be parsed.
    Only the sniffed format's parser is tried, so Pillow never guesses its way into another
    plugin (EPS, for one, would run Ghostscript).
    """
    fp.seek(0)
    try:
        image = Image.open(fp, formats=[fmt.pillow_format])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image dimensions over the limit of {max_pixels} pixels ({exc})",
                            limit=max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise CorruptImage(
            f"unreadable {fmt.pillow_format} header (corrupt, truncated or an unsupported variant): {exc}"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{fmt.pillow_format} header declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}",
            width=width, height=height, limit=max_pixels,
        )
    return image


def check_structure(fp: IO[bytes], fmt: ImageFormat, size: int) -> None:
    """Container checks that need no pixel decode; raise :class:`CorruptImage` on failure.

    * PNG: every chunk is walked and its CRC checked up to ``IEND`` (zlib data is not inflated).
    * GIF: the stream ends with the ``;`` trailer, so an animation truncated after its first frame
      is caught even though only the first frame is ever decoded.
    * WebP: the RIFF length covers the whole file.
    JPEG, TIFF and BMP have no cheap equivalent; their truncation surfaces in the decode.
    """
    if fmt is PNG:
        fp.seek(0)
        try:
            with Image.open(fp, formats=["PNG"]) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise CorruptImage(f"broken PNG: {exc}") from None
    elif fmt is GIF:
        fp.seek(max(0, size - 64))
        tail = fp.read().rstrip(b"\x00")
        if not tail.endswith(b";"):
            raise CorruptImage("truncated GIF: the stream does not end with the GIF trailer")
    elif fmt is WEBP:
        fp.seek(4)
        (riff_size,) = struct.unpack("<I", fp.read(4))
        if riff_size + 8 > size:
            raise CorruptImage(f"truncated WebP: RIFF header declares {riff_size + 8} bytes, got {size}")


def inspect(fp: IO[bytes], fmt: ImageFormat, size: int, *, max_pixels: int = MAX_PIXELS,
            reserve: Callable[[Image.Image], ContextManager[object]] | None = None) -> ImageInfo:
    """Every check on a complete, seekable body of the sniffed format; blocking (use a thread).

    Order: header probe and pixel limit (no decode), container structure (no decode), then the
    reduced decode that computes the perceptual hash and surfaces truncation/corruption.
    ``reserve(image)``, when given, is held around the decode (a caller's memory budget: it
    sees the probed header, so it knows the pixel count and format before anything is decoded).
    Raises :class:`ImageTooLarge` or :class:`CorruptImage`.
    """
    image = probe(fp, fmt, max_pixels=max_pixels)
    width, height = image.size
    with reserve(image) if reserve is not None else contextlib.nullcontext():
        return _decode_and_hash(fp, fmt, size, image, max_pixels=max_pixels)


def _decode_and_hash(fp: IO[bytes], fmt: ImageFormat, size: int, image: Image.Image, *,
                     max_pixels: int) -> ImageInfo:
    width, height = image.size
    try:
        if fmt is PNG:
            # PNG's check consumes an image object of its own. (Not close(): that would close fp.)
            check_structure(fp, fmt, size)
            fp.seek(0)
            image = Image.open(fp, formats=[fmt.pillow_format])
        else:
            check_structure(fp, fmt, size)  # reads the tail only; the probed image stays usable
        with image:
            digest = phash_image(image)
    except (CorruptImage, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc), limit=max_pixels) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, TypeError,
            MemoryError, Image.DecompressionBombWarning) as exc:
        # Pillow reports truncation ("image file is truncated"), bad Huffman tables, broken zlib
        # streams and impossible palettes through these; they all mean the bytes are not an image.
        raise CorruptImage(f"corrupt or truncated {fmt.pillow_format}: {exc}") from None
    return ImageInfo(format=fmt, width=width, height=height, phash=digest)
