"""The preset ladder, planning of the missing set, and rendering real images."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from imgstream.domain import derivatives as dv
from imgstream.domain.storage_layout import derivative_key
from tests.fixtures import derivative_images as dfx
from tests.fixtures import images as fx

SHA_A = "a" * 64
SHA_B = "b" * 64
ALL = [(p.name, p.max_edge, f) for p in dv.DEFAULT_LADDER.presets for f in p.formats]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_default_ladder_is_the_issue_ladder() -> None:
    assert dv.DEFAULT_LADDER.outputs() == (
        ("thumb", "webp"), ("small", "jpeg"), ("small", "webp"), ("small", "avif"),
        ("large", "jpeg"), ("large", "webp"),
    )
    assert [p.max_edge for p in dv.DEFAULT_LADDER.presets] == [256, 1024, 2048]


def test_ladder_json_round_trip_and_validation() -> None:
    assert dv.Ladder.from_json(dv.DEFAULT_LADDER.to_json()) == dv.DEFAULT_LADDER
    with pytest.raises(ValueError):
        dv.Preset("x", 100, ("gif",))
    with pytest.raises(ValueError):
        dv.Ladder("l2", (dv.Preset("a", 1, ("webp",)), dv.Preset("a", 2, ("webp",))))


def test_plan_is_exactly_the_missing_set() -> None:
    ladder = dv.DEFAULT_LADDER
    existing = {(SHA_A, p, f) for p, f in ladder.outputs()} | {(SHA_B, "thumb", "webp")}
    missing = dv.plan(ladder, [SHA_A, SHA_B, SHA_B], existing)
    assert [(t.sha256, t.preset, t.fmt) for t in missing] == [(SHA_B, p, f) for p, f in ladder.outputs()[1:]]
    assert missing[0].key == derivative_key(SHA_B, "l1", "small", "jpeg")
    # Everything made: nothing planned (a second run makes zero objects).
    done = existing | {(t.sha256, t.preset, t.fmt) for t in missing}
    assert dv.plan(ladder, [SHA_A, SHA_B], done) == []


def test_plan_of_a_new_ladder_version_ignores_old_records() -> None:
    new = dv.Ladder("l2", (dv.Preset("thumb", 320, ("webp",)),))
    assert [t.ladder for t in dv.plan(new, [SHA_A], [])] == ["l2"]


@pytest.mark.parametrize("size,edge,expected", [
    ((4000, 3000), 256, (256, 192)),
    ((3000, 4000), 1024, (768, 1024)),
    ((100, 80), 2048, (100, 80)),  # never upscaled
    ((10000, 3), 256, (256, 1)),  # never below one pixel
])
def test_fit_longest_edge(size: tuple[int, int], edge: int, expected: tuple[int, int]) -> None:
    assert dv.fit(*size, edge) == expected


@pytest.mark.parametrize("name", sorted(dfx.upload_set()))
def test_every_tested_format_renders_the_whole_ladder(name: str) -> None:
    data = dfx.upload_set()[name]
    src_w, src_h = dv.source_size(data)
    out = dv.render(data, ALL)
    assert [(r.preset, r.fmt) for r in out] == sorted(
        [(p, f) for p, _, f in ALL], key=lambda pf: -dv.DEFAULT_LADDER.preset(pf[0]).max_edge)
    for r in out:
        image = decode(r.data)
        assert image.format == {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[r.fmt]
        assert image.size == (r.width, r.height) == dv.fit(src_w, src_h, dv.DEFAULT_LADDER.preset(r.preset).max_edge)
        assert "exif" not in image.info and "icc_profile" not in image.info


def test_exif_orientation_is_applied() -> None:
    data = dfx.exif_rotated_jpeg(6)
    stored = decode(data).size
    assert stored[0] > stored[1]  # stored landscape
    (thumb,) = dv.render(data, [("thumb", 256, "webp")])
    assert thumb.height == 256 and thumb.width < thumb.height  # displayed portrait
    # Content check: the rotated thumbnail matches the upright photo rotated 90° clockwise.
    upright = Image.open(io.BytesIO(fx.real("chelsea.png"))).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    expected = np.asarray(upright.resize((thumb.width, thumb.height)), dtype=np.float32)
    got = np.asarray(decode(thumb.data).convert("RGB"), dtype=np.float32)
    assert np.abs(got - expected).mean() < 12


def test_metadata_and_profile_are_stripped_colours_kept() -> None:
    data = dfx.with_srgb_icc()
    source = decode(data)
    assert source.info.get("icc_profile") and source.getexif()
    for r in dv.render(data, [("small", 1024, "jpeg"), ("small", 1024, "webp"), ("small", 1024, "avif")]):
        image = decode(r.data)
        assert "icc_profile" not in image.info
        assert not image.getexif()
        # sRGB -> sRGB is the identity: the picture did not change colour.
        ref = np.asarray(source.convert("RGB").resize(image.size), dtype=np.float32)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=np.float32) - ref).mean() < 6


def test_cmyk_becomes_rgb_with_the_same_picture() -> None:
    (out,) = dv.render(dfx.cmyk_jpeg(), [("small", 1024, "jpeg")])
    image = decode(out.data)
    assert image.mode == "RGB"
    ref = np.asarray(Image.open(io.BytesIO(fx.real("coffee.png"))).convert("RGB").resize(image.size), dtype=np.float32)
    assert np.abs(np.asarray(image, dtype=np.float32) - ref).mean() < 10


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    (out,) = dv.render(dfx.png16(), [("small", 1024, "webp")])
    got = np.asarray(decode(out.data).convert("L"), dtype=np.float32)
    ref = np.asarray(Image.open(io.BytesIO(fx.real("camera.png"))).convert("L"), dtype=np.float32)
    assert abs(got.mean() - ref.mean()) < 3  # clipping would make it nearly all white (255)


def test_alpha_kept_in_webp_flattened_on_white_in_jpeg() -> None:
    webp, jpeg = dv.render(dfx.transparent_png(), [("small", 1024, "webp"), ("small", 1024, "jpeg")])
    assert decode(webp.data).mode == "RGBA"
    flat = np.asarray(decode(jpeg.data).convert("RGB"))
    assert flat[:, : flat.shape[1] // 2 - 4].mean() > 250


def test_large_jpeg_is_reduced_on_load() -> None:
    data = dfx.photo(12)
    start = time.process_time()
    out = dv.render(data, [("thumb", 256, "webp")])
    reduced = time.process_time() - start
    assert out[0].width == 256
    start = time.process_time()
    full = Image.open(io.BytesIO(data))
    full.load()
    full.resize(dv.fit(*full.size, 256), Image.Resampling.LANCZOS)
    plain = time.process_time() - start
    assert reduced < plain / 2, (reduced, plain)


@pytest.mark.parametrize("data,code", [
    (fx.truncated_jpeg(), "corrupt_image"),
    (fx.png_bad_crc(), "corrupt_image"),
    (fx.png_bomb(), "image_too_large"),
    (fx.jpeg_bomb(), "image_too_large"),
    (b"definitely not an image", "unsupported_image"),
])
def test_failures_are_errors_with_a_stable_code(data: bytes, code: str) -> None:
    with pytest.raises(dv.RenderFailed) as caught:
        dv.render(data, ALL)
    assert caught.value.code == code


@pytest.mark.slow
def test_a_48_megapixel_photo_renders_within_a_bounded_memory(tmp_path: "Path") -> None:
    """The whole ladder from a 48 MP JPEG (8000x6000), rendered in a fresh process: its peak RSS
    stays far below a full-resolution pipeline (one 48 MP RGB frame alone is 144 MB, RGBA 192 MB)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "48mp.jpg"
    make = f"from tests.fixtures.derivative_images import photo; open({str(source)!r}, 'wb').write(photo(48, seed=7))"
    subprocess.run([sys.executable, "-c", make], cwd=repo, check=True, timeout=300)
    script = (
        "import resource\n"
        "from imgstream.domain import derivatives as dv\n"
        "from PIL import Image\n"
        f"data = open({str(source)!r}, 'rb').read()\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = dv.render(data, [(p.name, p.max_edge, f) for p in dv.DEFAULT_LADDER.presets for f in p.formats])\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(len(out), max(r.width for r in out), Image.open(__import__('io').BytesIO(data)).size[0], peak - base)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, widest, source_width, grown_kb = (int(x) for x in done.stdout.split())
    assert count == 6 and widest == 2048 and source_width >= 8000
    # Draft decode at 1/2 scale: a 4000x3000 RGB frame (36 MB) plus the resized copies.
    print(f"render grew RSS by {grown_kb} kB")
    assert grown_kb < 150_000, grown_kb
