"""Sniffing, streaming checks, header probe, structure checks and perceptual hash."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from imgstream.domain import imaging, phash
from imgstream.domain.errors import BadRequest, CorruptImage, ImageTooLarge, ImgstreamError, PayloadTooLarge, UnsupportedMediaType
from tests.fixtures import images as fx


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def check(data: bytes, *, max_bytes: int = 25 * 2**20, max_pixels: int = imaging.MAX_PIXELS,
          chunk: int = 65536) -> imaging.ImageInfo:
    """The gateway's order of checks: stream (size, sniff, markup), then inspect."""
    inspector = imaging.StreamInspector(max_bytes)
    for i in range(0, len(data), chunk):
        inspector.feed(data[i : i + chunk])
    summary = inspector.finish()
    return imaging.inspect(io.BytesIO(data), summary.format, summary.size, max_pixels=max_pixels)


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg_of(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **params)
    return out.getvalue()


# --- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.real_images()))
def test_sniff_names_every_real_sample(name: str) -> None:
    data, content_type = fx.real_images()[name]
    found = imaging.sniff(data[: imaging.SNIFF_BYTES])
    assert found.format is not None and found.format.content_type == content_type


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (fx.elf_binary(), "ELF executable"),
        (fx.zip_archive(), "ZIP archive"),
        (fx.pdf_document(), "PDF document"),
        (fx.svg_with_script(), "SVG/XML document"),
        (fx.svg_bare(), "SVG/XML document"),
        (fx.html_page(), "HTML document"),
        (fx.text_named_jpg(), "text"),
        (fx.bmp_magic_text(), "text"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "HEIC image"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "Windows executable"),
        (bytes(range(200, 232)), "unknown"),
    ],
)
def test_sniff_names_what_it_refuses(data: bytes, kind: str) -> None:
    found = imaging.sniff(data[: imaging.SNIFF_BYTES])
    assert not found.supported
    assert found.kind == kind


def test_sniff_ignores_what_the_name_or_header_claims() -> None:
    # The bytes of a PNG are a PNG whatever the client calls them; a text named .jpg is text.
    assert imaging.sniff(fx.real("camera.png")).format is imaging.PNG
    with pytest.raises(UnsupportedMediaType) as err:
        imaging.require_supported(fx.text_named_jpg())
    assert "text" in err.value.message


def test_empty_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        imaging.StreamInspector(100).finish()


def test_short_body_is_sniffed_at_finish() -> None:
    inspector = imaging.StreamInspector(100)
    inspector.feed(b"\xff\xd8\xff\xe0")
    assert inspector.format is None  # not enough bytes yet
    assert inspector.finish().format is imaging.JPEG


# --- streaming checks -------------------------------------------------------------------------


def test_stream_inspector_hashes_counts_and_sniffs() -> None:
    data = fx.real("retina.jpg")
    inspector = imaging.StreamInspector(len(data))
    for i in range(0, len(data), 1000):
        inspector.feed(data[i : i + 1000])
    summary = inspector.finish()
    assert summary.size == len(data)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.format is imaging.JPEG


def test_size_limit_trips_on_the_chunk_that_crosses_it() -> None:
    inspector = imaging.StreamInspector(max_bytes=10_000)
    data = fx.real("rocket.jpg")
    inspector.feed(data[:6000])
    inspector.feed(data[6000:10_000])  # exactly at the limit: fine
    with pytest.raises(PayloadTooLarge) as err:
        inspector.feed(data[10_000:10_001])
    assert err.value.details["limit"] == 10_000


def test_non_image_is_refused_on_the_first_chunk() -> None:
    inspector = imaging.StreamInspector(10**9)
    with pytest.raises(UnsupportedMediaType):
        inspector.feed(fx.elf_binary()[:64])


@pytest.mark.parametrize("payload", [fx.jpeg_html_polyglot, fx.jpeg_trailing_html, fx.png_php_polyglot])
def test_markup_is_found_even_when_split_across_chunks(payload) -> None:
    data = payload()
    for chunk in (1, 7, 4096):
        with pytest.raises(UnsupportedMediaType) as err:
            check(data, chunk=chunk)
        assert err.value.details["detected"] == "polyglot"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=112_000), max_size=12))
def test_summary_does_not_depend_on_chunking(cuts: list[int]) -> None:
    data = fx.real("rocket.jpg")
    inspector = imaging.StreamInspector(len(data))
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        inspector.feed(data[previous:cut])
        previous = cut
    summary = inspector.finish()
    assert (summary.size, summary.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_markup_scan_has_no_false_positive_on_real_images() -> None:
    for name, (data, _) in fx.real_images().items():
        assert imaging.find_markup(data) is None, name


# --- header probe and decode ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.real_images()))
def test_real_images_pass_with_their_dimensions(name: str) -> None:
    data, content_type = fx.real_images()[name]
    info = check(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (info.width, info.height) == image.size
    assert info.format.content_type == content_type
    assert len(info.phash) == 16 and int(info.phash, 16) >= 0


@pytest.mark.parametrize("name", sorted(n for n, (_, status, _) in fx.HOSTILE.items()))
def test_hostile_files_are_refused_with_their_code(name: str) -> None:
    factory, _, code = fx.HOSTILE[name]
    with pytest.raises(ImgstreamError) as err:
        check(factory())
    assert err.value.code == code, err.value.message


@pytest.mark.parametrize("bomb", [fx.png_bomb, fx.jpeg_bomb, fx.gif_bomb])
def test_bombs_are_refused_from_the_header_without_decoding(bomb, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    data = bomb()
    with pytest.raises(ImageTooLarge):
        imaging.inspect(io.BytesIO(data), imaging.sniff(data).format, len(data))


def test_bomb_under_pillows_own_threshold_is_still_refused_by_ours() -> None:
    # 60 MP: over our 50 MP limit, under Pillow's default 2 x 89 MP error threshold.
    data = fx.png_bomb(10_000, 6_000)
    with pytest.raises(ImageTooLarge) as err:
        check(data)
    assert err.value.details == {"width": 10_000, "height": 6_000, "limit": imaging.MAX_PIXELS}


def test_pixel_limit_is_inclusive_and_configurable() -> None:
    data = fx.real("rocket.jpg")  # 640 x 427
    assert check(data, max_pixels=640 * 427).width == 640
    with pytest.raises(ImageTooLarge):
        check(data, max_pixels=640 * 427 - 1)


def test_only_the_sniffed_format_parser_runs() -> None:
    # A PNG handed to the probe as a JPEG (e.g. a sniffing bug) is not "rescued" by another plugin.
    with pytest.raises(CorruptImage):
        imaging.probe(io.BytesIO(fx.real("camera.png")), imaging.JPEG)


def test_configure_pillow_sets_the_process_guard() -> None:
    before = Image.MAX_IMAGE_PIXELS
    try:
        imaging.configure_pillow(1234)
        assert Image.MAX_IMAGE_PIXELS == 1234
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    finally:
        Image.MAX_IMAGE_PIXELS = before


# --- perceptual hash --------------------------------------------------------------------------


def test_phash_ignores_bytes_that_are_not_pixels() -> None:
    base = fx.real("rocket.jpg")
    assert phash.phash(base) == phash.phash(fx.unique_jpeg("one")) == phash.phash(fx.unique_jpeg("two"))


def test_phash_survives_recompression_and_resizing() -> None:
    with Image.open(io.BytesIO(fx.real("astronaut.png"))) as image:
        original = image.convert("RGB")
    reference = phash.phash(png_of(original))
    assert hamming(reference, phash.phash(jpeg_of(original, quality=40))) <= 4
    assert hamming(reference, phash.phash(png_of(original.resize((256, 256))))) <= 4


def test_phash_tells_different_photos_apart() -> None:
    hashes = [phash.phash(fx.real(n)) for n in ("rocket.jpg", "astronaut.png", "camera.png", "coffee.png")]
    for i, a in enumerate(hashes):
        for b in hashes[i + 1 :]:
            assert hamming(a, b) > 16


def test_jpeg_draft_decode_matches_full_decode() -> None:
    with Image.open(io.BytesIO(fx.real("astronaut.png"))) as image:
        big = image.convert("RGB").resize((3000, 3000), Image.Resampling.BICUBIC)
    data = jpeg_of(big, quality=90)
    with Image.open(io.BytesIO(data)) as full:
        full.load()  # decoded at full scale, draft never applied
        full_hash = phash.phash_image(full)
    with Image.open(io.BytesIO(data)) as drafted:
        draft_hash = phash.phash_image(drafted)
        assert drafted.size[0] < 3000  # the decoder really did scale down
    assert hamming(full_hash, draft_hash) <= 4


def test_phash_applies_exif_orientation() -> None:
    with Image.open(io.BytesIO(fx.real("rocket.jpg"))) as image:
        upright = image.convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera records
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tagged = jpeg_of(stored, quality=95, exif=exif.tobytes())
    untagged = jpeg_of(stored, quality=95)
    reference = phash.phash(jpeg_of(upright, quality=95))
    assert hamming(reference, phash.phash(tagged)) <= 4
    assert hamming(reference, phash.phash(untagged)) > 16


def test_phash_of_16_bit_image_is_not_degenerate() -> None:
    with Image.open(io.BytesIO(fx.real("camera.png"))) as image:
        gray = image.convert("L")
    wide = Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (0, v)))
    data = png_of(wide)
    assert hamming(phash.phash(data), phash.phash(png_of(gray))) <= 4


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_scaling_equals_the_float_formula(mode: str) -> None:
    """The in-Pillow scaling gives the very 8-bit image the float64 formula gave (hashes of
    stored 16-bit uploads stay comparable), without the full-size float copies."""
    import numpy as np

    rng = np.random.default_rng(7)
    values = rng.integers(0, 4000, size=(97, 131)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
    image = Image.fromarray(values, mode if mode != "I;16" else None)
    assert image.mode == mode
    expected = (values.astype(np.float64) * (255.0 / float(values.max()))).astype(np.uint8)
    got = np.asarray(phash._to_8_bits(image))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= (0 if mode != "F" else 1)


def test_hashing_a_50_megapixel_16_bit_png_stays_within_the_memory_budget(tmp_path) -> None:
    """A ~100 KB PNG that decodes to 50 MP of 16-bit samples: the hash must not need the
    ~1 GB that float64 copies took (the gateway pod has 1 GiB). Measured in a fresh process."""
    import subprocess
    import sys

    path = tmp_path / "wide.png"
    make = ("import numpy as np; from PIL import Image; "
            "a = (np.arange(10000, dtype=np.uint16)[None, :] * 6).repeat(5000, axis=0); "
            f"Image.fromarray(a).save({str(path)!r})")
    subprocess.run([sys.executable, "-c", make], check=True)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so
    # a child of a large pytest process would report the parent's size.
    measure = ("import re; from PIL import Image; Image.MAX_IMAGE_PIXELS = None; "
               "from imgstream.domain.phash import phash; "
               f"h = phash(open({str(path)!r}, 'rb').read()); "
               "kb = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1); "
               "print(h, int(kb) // 1024)")
    out = subprocess.run([sys.executable, "-c", measure], check=True, capture_output=True, text=True).stdout.split()
    digest, peak_mb = out[0], int(out[1])
    assert len(digest) == 16 and digest != "0" * 16
    assert peak_mb < 450, f"hashing took {peak_mb} MB of RSS"
