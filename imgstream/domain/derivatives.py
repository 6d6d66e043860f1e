"""Derivatives: the preset ladder, what is missing, and rendering one image (pure; Pillow only).

A *derivative* is one (content, preset, format) rendition of an original: a thumbnail, a
pre-computed size, a format conversion. Derivatives belong to the content hash, not to an
upload, so exact duplicates share them and the key (:func:`storage_layout.derivative_key`)
alone says what an object is.

* :class:`Ladder` is a named, versioned list of :class:`Preset` s (longest edge in pixels plus
  output formats). Changing a preset means a new ladder version: objects of the old version are
  then "derivatives of a retired ladder" and the batch GC collects them.
* :func:`plan` answers "what is missing?" against the *current ladder's* full set: for each
  content hash, every (preset, format) pair whose record is absent. A second run after a
  complete one plans nothing, by construction.
* :func:`render` decodes one original once (JPEG draft / reduce-on-load towards the largest
  size needed, pixel limit checked from the header first), applies the EXIF orientation,
  converts to sRGB through the embedded ICC profile if there is one, and encodes every
  requested (preset, format) with all metadata stripped. Never upscales.

Failures are :class:`RenderFailed` with a stable ``code`` (``corrupt_image``,
``image_too_large``, ``unsupported_image``), so a batch records the reason and moves on.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Final, Iterable, Mapping, Sequence

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from imgstream.domain.errors import ImgstreamError
from imgstream.domain.imaging import MAX_PIXELS
from imgstream.domain.storage_layout import FORMAT_EXTENSIONS, derivative_key

#: Largest source object a render reads, in bytes. The gateway refuses bodies over 25 MiB; the
#: margin covers objects written by other paths (tus uploads, backfills) without letting one
#: object pin hundreds of MB of executor memory before the pixel check.
MAX_SOURCE_BYTES: Final = 64 * 1024 * 1024

#: Pixel limit checked from the header before any decode: the same bound the gateway applies
#: (:data:`imgstream.domain.imaging.MAX_PIXELS`, 50 MP). With reduce-on-load a JPEG at that
#: size decodes at 1/2..1/8 scale; other formats decode in full, at most ~200 MB (RGBA) per
#: task, which bounds an executor with two task slots to well under 1 GB.
MAX_RENDER_PIXELS: Final = MAX_PIXELS

#: Encoder settings per format. JPEG 85 progressive is the usual web default; WebP 80 / method 4
#: is libwebp's own default speed; AVIF quality 60 at speed 8 keeps its encode (which dominates a
#: ladder) within ~2x of WebP on this hardware while staying visually close to JPEG 85.
ENCODE_OPTIONS: Final[Mapping[str, Mapping[str, Any]]] = {
    "jpeg": {"quality": 85, "progressive": True, "optimize": False},
    "webp": {"quality": 80, "method": 4},
    "avif": {"quality": 60, "speed": 8},
    "png": {"optimize": False, "compress_level": 6},
}
CONTENT_TYPES: Final[Mapping[str, str]] = {
    "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif", "png": "image/png",
}
_PILLOW_FORMATS: Final[Mapping[str, str]] = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "png": "PNG"}
#: Formats that keep an alpha channel; JPEG output is flattened on white.
_ALPHA_FORMATS: Final = frozenset({"webp", "avif", "png"})


class RenderFailed(ImgstreamError):
    """One original could not be rendered; ``code`` says why (stable, recorded per image)."""

    code = "render_failed"


@dataclass(frozen=True, slots=True)
class Preset:
    """One rung of the ladder: fit the longest edge into ``max_edge`` pixels, in ``formats``."""

    name: str
    max_edge: int
    formats: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.max_edge < 1:
            raise ValueError(f"preset {self.name}: max_edge must be positive")
        unknown = [f for f in self.formats if f not in FORMAT_EXTENSIONS]
        if unknown or not self.formats:
            raise ValueError(f"preset {self.name}: unknown or no formats {unknown or self.formats}")


@dataclass(frozen=True, slots=True)
class Ladder:
    """A named, versioned set of presets. ``version`` is part of every derivative key."""

    version: str
    presets: tuple[Preset, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.presets]
        if len(set(names)) != len(names):
            raise ValueError(f"ladder {self.version}: duplicate preset names {names}")

    def outputs(self) -> tuple[tuple[str, str], ...]:
        """Every (preset, format) pair this ladder produces, in ladder order."""
        return tuple((p.name, f) for p in self.presets for f in p.formats)

    def preset(self, name: str) -> Preset:
        for p in self.presets:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps({"version": self.version,
                           "presets": [{"name": p.name, "max_edge": p.max_edge, "formats": list(p.formats)}
                                       for p in self.presets]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Ladder":
        """Parse ``{"version": "...", "presets": [{"name", "max_edge", "formats"}, ...]}``."""
        data = json.loads(text)
        return cls(version=str(data["version"]),
                   presets=tuple(Preset(str(p["name"]), int(p["max_edge"]), tuple(p["formats"]))
                                 for p in data["presets"]))


#: The default ladder (issue 15): thumb 256 WebP; small 1024 JPEG+WebP+AVIF; large 2048 JPEG+WebP.
DEFAULT_LADDER: Final = Ladder("l1", (
    Preset("thumb", 256, ("webp",)),
    Preset("small", 1024, ("jpeg", "webp", "avif")),
    Preset("large", 2048, ("jpeg", "webp")),
))


@dataclass(frozen=True, slots=True)
class Target:
    """One derivative to make: content ``sha256``, ``preset`` of ``ladder``, in ``fmt``."""

    sha256: str
    ladder: str
    preset: str
    fmt: str
    max_edge: int

    @property
    def key(self) -> str:
        return derivative_key(self.sha256, self.ladder, self.preset, self.fmt)


def plan(ladder: Ladder, contents: Iterable[str], existing: Iterable[tuple[str, str, str]]) -> list[Target]:
    """The missing derivatives: for every content hash, each (preset, format) of ``ladder``
    without an ``existing`` (sha256, preset, format) record of this ladder version.

    ``existing`` must hold only records of ``ladder.version`` (keys of other versions are other
    objects). Order: by content, then ladder order, so one image's targets are adjacent.
    """
    have = set(existing)
    out: list[Target] = []
    for sha in sorted(set(contents)):
        for preset in ladder.presets:
            for fmt in preset.formats:
                if (sha, preset.name, fmt) not in have:
                    out.append(Target(sha, ladder.version, preset.name, fmt, preset.max_edge))
    return out


def fit(width: int, height: int, max_edge: int) -> tuple[int, int]:
    """The size of ``width`` x ``height`` with its longest edge at most ``max_edge``; never
    larger than the original, never below 1 px on either side."""
    longest = max(width, height)
    if longest <= max_edge:
        return width, height
    scale = max_edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True, slots=True)
class Rendered:
    """One encoded derivative."""

    preset: str
    fmt: str
    width: int
    height: int
    data: bytes = field(repr=False)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]


_SRGB: ImageCms.ImageCmsProfile | None = None


def _srgb() -> ImageCms.ImageCmsProfile:
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


def _open(data: bytes) -> Image.Image:
    if len(data) > MAX_SOURCE_BYTES:
        raise RenderFailed(f"source is {len(data)} bytes, over {MAX_SOURCE_BYTES}", code="image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise RenderFailed(f"not a decodable image: {exc}", code="unsupported_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RenderFailed(str(exc), code="image_too_large") from None
    w, h = image.size
    if w * h > MAX_RENDER_PIXELS:
        raise RenderFailed(f"{w}x{h} is over the {MAX_RENDER_PIXELS} pixel limit", code="image_too_large")
    return image


def _to_display(image: Image.Image) -> Image.Image:
    """Pixels in sRGB, 8 bits per channel, mode RGB or RGBA (first frame of animations)."""
    icc = image.info.get("icc_profile")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale to 8 bits (a plain convert("L") would clip at 255).
        extrema: Any = image.getextrema()
        maximum = 65535.0 if mode.startswith("I;16") else max(1.0, float(extrema[1] or 1))
        image = image.convert("F").point(lambda v: v * (255.0 / maximum)).convert("L")
        mode = "L"
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    has_alpha = image.mode == "RGBA"
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            alpha = image.getchannel("A") if has_alpha else None
            base = image.convert("RGB") if has_alpha else image
            if base.mode not in ("RGB", "CMYK", "L"):
                base = base.convert("RGB")
            converted = ImageCms.profileToProfile(base, source, _srgb(), outputMode="RGB",
                                                  renderingIntent=ImageCms.Intent.PERCEPTUAL)
            assert converted is not None
            if alpha is not None:
                converted.putalpha(alpha)
            return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile: fall through to the plain conversion below
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    return image


def _decode(data: bytes, largest_edge: int) -> Image.Image:
    """Decode once, reduced on load towards ``largest_edge``, oriented, in sRGB."""
    image = _open(data)
    try:
        w, h = image.size
        if image.format == "JPEG" and max(w, h) > largest_edge:
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: ask for the smallest scale whose
            # longest edge is still >= the largest edge any preset needs (draft never goes below).
            scale = largest_edge / max(w, h)
            image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else None,
                        (math.ceil(w * scale), math.ceil(h * scale)))
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return _to_display(oriented)
    except RenderFailed:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RenderFailed(f"decode failed: {exc}", code="corrupt_image") from None


def _encode(image: Image.Image, fmt: str) -> bytes:
    if fmt not in _ALPHA_FORMATS and image.mode == "RGBA":
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    image.info = {}  # nothing of the original's metadata (EXIF, XMP, ICC, comments) travels on
    out = io.BytesIO()
    image.save(out, _PILLOW_FORMATS[fmt], **ENCODE_OPTIONS[fmt])
    return out.getvalue()


def render(data: bytes, outputs: Sequence[tuple[str, int, str]]) -> list[Rendered]:
    """Render ``outputs`` — (preset, max_edge, format) triples — from one original's bytes.

    Decodes once; sizes are made from the largest down, each resized from the previous one
    (``reducing_gap`` uses Pillow's fast integer reduce before the Lanczos filter). Raises
    :class:`RenderFailed` (codes ``corrupt_image``, ``image_too_large``, ``unsupported_image``).
    """
    if not outputs:
        return []
    largest = max(edge for _, edge, _ in outputs)
    source = _decode(data, largest)
    rendered: list[Rendered] = []
    by_edge: dict[int, list[tuple[str, str]]] = {}
    for preset, edge, fmt in outputs:
        by_edge.setdefault(edge, []).append((preset, fmt))
    current = source
    try:
        for edge in sorted(by_edge, reverse=True):
            size = fit(current.width, current.height, edge)
            if size != current.size:
                current = current.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            for preset, fmt in by_edge[edge]:
                rendered.append(Rendered(preset, fmt, current.width, current.height, _encode(current.copy(), fmt)))
    except (OSError, ValueError) as exc:
        raise RenderFailed(f"encode failed: {exc}", code="corrupt_image") from None
    return rendered


def source_size(data: bytes) -> tuple[int, int]:
    """Displayed size of an original (after EXIF orientation), from the header only."""
    image = _open(data)
    w, h = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
