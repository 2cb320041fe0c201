"""Tests for nulltext.io.images: decoding every mode, orientation, cropping, errors, PNG output, grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from nulltext.io.images import (
    GRID_PADDING,
    ImageError,
    LoadedImage,
    load_image,
    make_grid,
    read_png_metadata,
    save_png,
    to_pil,
    to_tensor,
    wrap_label,
)

RED = (220, 40, 40)
BLUE = (40, 70, 220)
GREEN = (40, 170, 60)


def pixel(loaded: LoadedImage, x: int, y: int) -> tuple[int, int, int]:
    """The RGB value of one pixel of a loaded image."""
    return tuple(int(v) for v in np.asarray(loaded.image)[y, x])


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> None:
    """Every channel of ``actual`` is within ``tolerance`` of ``expected``."""
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


# --- colour modes -------------------------------------------------------------------------------


def test_rgb_loads_unchanged_at_same_size(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png", (24, 16))
    assert loaded.image.mode == "RGB" and loaded.image.size == (24, 16)
    assert loaded.crop_box == (0, 0, 24, 16)
    assert loaded.original_size == (24, 16)
    assert loaded.path == str(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(loaded.image), array)


def test_mode_l_greyscale_repeats_into_three_channels(tmp_path: Path) -> None:
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(array, mode="L").save(tmp_path / "l.png")
    result = np.asarray(load_image(tmp_path / "l.png", 16).image)
    for channel in range(3):
        np.testing.assert_array_equal(result[:, :, channel], array)


def test_mode_la_transparent_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("LA", (16, 16), (0, 255))
    image.paste((0, 0), (0, 0, 8, 16))  # left half fully transparent black
    image.save(tmp_path / "la.png")
    result = np.asarray(load_image(tmp_path / "la.png", 16).image)
    assert (result[:, :8] == 255).all()
    assert (result[:, 8:] == 0).all()


def test_mode_p_with_transparent_palette_index_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    loaded = load_image(tmp_path / "p.png", 16)
    assert pixel(loaded, 2, 2) == (255, 255, 255)
    assert pixel(loaded, 12, 2) == BLUE


def test_mode_p_without_transparency_keeps_palette_colours(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.save(tmp_path / "p.gif")
    assert pixel(load_image(tmp_path / "p.gif", 16), 5, 5) == GREEN


def test_mode_rgba_half_transparent_red_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    image.paste((255, 0, 0, 128), (0, 0, 8, 16))
    image.save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png", 16)
    alpha = 128 / 255
    expected = tuple(round(alpha * c + (1 - alpha) * 255) for c in (255, 0, 0))  # (255, 127, 127)
    assert_close(pixel(loaded, 3, 3), expected, 1)
    assert pixel(loaded, 12, 3) == (0, 0, 255)


def test_mode_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    image.paste((255, 255, 0, 0), (8, 0, 16, 16))  # pure blue
    image.save(tmp_path / "cmyk.tif")
    loaded = load_image(tmp_path / "cmyk.tif", 16)
    assert pixel(loaded, 2, 2) == (255, 0, 0)
    assert pixel(loaded, 12, 2) == (0, 0, 255)


def test_mode_i16_gradient_uses_the_full_range_monotonically(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (16, 1))).save(tmp_path / "i16.png")
    with Image.open(tmp_path / "i16.png") as reopened:
        assert reopened.mode.startswith("I")
    row = np.asarray(load_image(tmp_path / "i16.png", (64, 16)).image)[8, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    np.testing.assert_allclose(row, ramp / 65535 * 255, atol=0.5 + 1e-9)  # scaled, not clipped


def test_mode_f_unit_range_scales_to_255(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    row = np.asarray(load_image(tmp_path / "f.tif", 16).image)[0, :, 1].astype(int)
    np.testing.assert_allclose(row, values[0] * 255, atol=0.5 + 1e-6)


def test_mode_1_bilevel_gives_black_and_white(tmp_path: Path) -> None:
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (0, 0, 16, 8))
    image.save(tmp_path / "bw.png")
    result = np.asarray(load_image(tmp_path / "bw.png", 16).image)
    assert (result[:8] == 255).all() and (result[8:] == 0).all()


# --- orientation and cropping -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_exif_orientation_6_is_rotated_to_portrait(tmp_path: Path, suffix: str) -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 8, 8))  # marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = tmp_path / f"rotated.{suffix}"
    stored.save(path, exif=exif, **({"quality": 95} if suffix == "jpg" else {}))
    loaded = load_image(path, (20, 40))
    assert loaded.original_size == (20, 40)
    assert loaded.crop_box == (0, 0, 20, 40)
    assert_close(pixel(loaded, 16, 3), RED, 12)  # stored top-left -> displayed top-right
    assert_close(pixel(loaded, 3, 3), BLUE, 12)
    assert_close(pixel(loaded, 16, 36), BLUE, 12)


def test_centre_crop_of_wide_image_keeps_the_centre(tmp_path: Path) -> None:
    wide = Image.new("RGB", (96, 32), RED)
    wide.paste(GREEN, (32, 0, 64, 32))  # centre third green, sides red
    wide.save(tmp_path / "wide.png")
    loaded = load_image(tmp_path / "wide.png", 16)
    assert loaded.crop_box == (32, 0, 64, 32)
    assert loaded.image.size == (16, 16)
    for x, y in [(0, 0), (15, 0), (0, 15), (15, 15), (8, 8)]:
        assert pixel(loaded, x, y) == GREEN


def test_centre_crop_of_tall_image_to_wide_target(tmp_path: Path) -> None:
    Image.new("RGB", (30, 90), RED).save(tmp_path / "tall.png")
    loaded = load_image(tmp_path / "tall.png", (20, 10))
    assert loaded.crop_box == (0, 37, 30, 52)  # height round(30 * 10 / 20) = 15, centred
    assert loaded.image.size == (20, 10)


def test_explicit_crop_box_is_used(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (40, 8, 56, 24))
    image.save(tmp_path / "box.png")
    loaded = load_image(tmp_path / "box.png", 8, crop=(40, 8, 56, 24))
    assert loaded.crop_box == (40, 8, 56, 24)
    assert loaded.image.size == (8, 8)
    assert (np.asarray(loaded.image) == np.array(BLUE, dtype=np.uint8)).all()


@pytest.mark.parametrize("box", [(40, 8, 72, 24), (-1, 0, 8, 8), (10, 10, 10, 20), (20, 10, 10, 20)])
def test_bad_crop_box_is_an_image_error(tmp_path: Path, box: tuple[int, int, int, int]) -> None:
    Image.new("RGB", (64, 32), RED).save(tmp_path / "box.png")
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "box.png", 8, crop=box)
    message = str(caught.value)
    assert "box.png" in message and "crop box" in message and "64x32" in message
    assert "\n" not in message


def test_resize_downscales_to_exact_size(tmp_path: Path) -> None:
    Image.new("RGB", (256, 192), GREEN).save(tmp_path / "big.png")
    loaded = load_image(tmp_path / "big.png", (64, 48))
    assert loaded.image.size == (64, 48) and loaded.crop_box == (0, 0, 256, 192)
    assert pixel(loaded, 30, 20) == GREEN


def test_too_small_image_is_an_image_error(tmp_path: Path) -> None:
    Image.new("RGB", (7, 30), RED).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match=r"tiny\.png.*too small"):
        load_image(tmp_path / "tiny.png", 8)


@pytest.mark.parametrize("size", [0, (8,), (8, -1), 8.0, (8, True)])
def test_bad_size_is_a_value_error(tmp_path: Path, size: object) -> None:
    Image.new("RGB", (16, 16), RED).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "ok.png", size)  # type: ignore[arg-type]


# --- unreadable files ---------------------------------------------------------------------------


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing_photo.png"


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty_photo.jpg"
    path.write_bytes(b"")
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes_photo.png"
    path.write_text("this is not an image\nsecond line\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=90)
    data = full.read_bytes()
    path = tmp_path / "half_photo.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder_photo.png"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_missing, "not found"),
        (_empty, "empty"),
        (_text, "not a recognised image"),
        (_truncated, "truncated"),
        (_directory, "directory"),
    ],
)
def test_unreadable_file_is_a_one_line_image_error(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageError) as caught:
        load_image(path, 16)
    message = str(caught.value)
    assert path.name in message
    assert problem in message
    assert "\n" not in message and "—" in message  # names the fix after the dash
    assert isinstance(caught.value, ValueError)


# --- tensors ------------------------------------------------------------------------------------


def test_to_tensor_range_shape_and_round_trip() -> None:
    array = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    array[0, 0] = (0, 128, 255)
    tensor = to_tensor(Image.fromarray(array), dtype=torch.float64)
    assert tensor.shape == (1, 3, 10, 12) and tensor.dtype == torch.float64
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0])
    (back,) = to_pil(tensor)
    np.testing.assert_array_equal(np.asarray(back), array)


def test_to_pil_clamps_and_rounds() -> None:
    tensor = torch.tensor([-3.0, 0.0, 5.0, 0.5 / 127.5 - 1.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    result = to_pil(tensor)
    assert len(result) == 2 and result[0].size == (4, 1)
    assert np.asarray(result[1])[0, :, 0].tolist() == [0, 128, 255, 0]  # 127.5 -> 128, 0.5 -> 0


def test_to_pil_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        to_pil(torch.zeros(1, 4, 2, 2))


# --- PNG output ---------------------------------------------------------------------------------


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_save_png_round_trips_pixels_and_metadata(tmp_path: Path) -> None:
    image = Image.new("RGB", (16, 8), RED)
    metadata = {"prompt": "a red circle on a blue background", "seed": "7", "note": "ünïcode ✓"}
    path = save_png(image, tmp_path / "sub" / "dir" / "out.png", metadata)
    assert path == tmp_path / "sub" / "dir" / "out.png"
    assert read_png_metadata(path) == metadata
    with Image.open(path) as written:
        np.testing.assert_array_equal(np.asarray(written), np.asarray(image))
    assert _leftovers(path.parent, {"out.png"}) == []


def test_save_png_refuses_existing_file_without_force(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_png(Image.new("RGB", (8, 8), RED), target, {"v": "1"})
    before = target.read_bytes()
    with pytest.raises(FileExistsError) as caught:
        save_png(Image.new("RGB", (8, 8), BLUE), target, {"v": "2"})
    message = str(caught.value)
    assert "out.png" in message and "exists; pass --force to overwrite" in message and "\n" not in message
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"out.png"}) == []


def test_save_png_with_force_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_png(Image.new("RGB", (8, 8), RED), target, {"v": "1"})
    save_png(Image.new("RGB", (8, 8), BLUE), target, {"v": "2"}, force=True)
    assert read_png_metadata(target) == {"v": "2"}
    with Image.open(target) as written:
        assert written.getpixel((0, 0)) == BLUE
    assert _leftovers(tmp_path, {"out.png"}) == []


def test_save_png_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        save_png(Image.new("CMYK", (8, 8)), tmp_path / "bad.png")  # PNG cannot store CMYK
    assert _leftovers(tmp_path, set()) == []


def test_save_png_failed_force_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_png(Image.new("RGB", (8, 8), RED), target)
    before = target.read_bytes()
    with pytest.raises(OSError):
        save_png(Image.new("CMYK", (8, 8)), target, force=True)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"out.png"}) == []


def test_save_png_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="str"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "m.png", {"seed": 7})  # type: ignore[dict-item]
    assert _leftovers(tmp_path, set()) == []


def test_read_png_metadata_of_jpeg_is_an_image_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(ImageError, match=r"photo\.jpg.*not a PNG"):
        read_png_metadata(tmp_path / "photo.jpg")


# --- grids --------------------------------------------------------------------------------------


def test_grid_size_arithmetic_without_labels() -> None:
    tiles = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN, BLUE, RED, GREEN)]
    grid = make_grid(tiles, columns=2)
    pad = GRID_PADDING
    assert grid.size == (2 * 192 + 3 * pad, 3 * 192 + 4 * pad)  # 64 px tiles upscaled x3
    assert grid.getpixel((pad + 5, pad + 5)) == RED
    assert grid.getpixel((2 * pad + 192 + 5, pad + 5)) == GREEN
    assert grid.getpixel((pad + 191, pad + 191)) == RED  # NEAREST keeps the tile solid to its edge
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    assert grid.getpixel((2 * pad + 192 + 5, 3 * pad + 2 * 192 + 5)) == (255, 255, 255)  # empty cell


def test_grid_upscale_factor_is_the_smallest_integer_reaching_min_tile() -> None:
    grid = make_grid([Image.new("RGB", (50, 30), RED)], min_tile=120)
    assert grid.size == (150 + 2 * GRID_PADDING, 90 + 2 * GRID_PADDING)  # factor ceil(120/50) = 3
    big = make_grid([Image.new("RGB", (300, 20), RED)], min_tile=192)
    assert big.size == (300 + 2 * GRID_PADDING, 20 + 2 * GRID_PADDING)  # never downscaled


def test_grid_default_columns_is_one_row() -> None:
    grid = make_grid([Image.new("RGB", (64, 64))] * 3)
    assert grid.size == (3 * 192 + 4 * GRID_PADDING, 192 + 2 * GRID_PADDING)


def test_grid_labels_add_a_strip_with_dark_text() -> None:
    tiles = [Image.new("RGB", (64, 64), BLUE)] * 2
    plain = make_grid(tiles)
    labelled = make_grid(tiles, labels=["source", "a red circle"])
    assert labelled.width == plain.width
    assert labelled.height > plain.height
    strip = np.asarray(labelled)[GRID_PADDING + 192 :, GRID_PADDING : GRID_PADDING + 192]
    assert strip.min() < 100  # text drawn in black
    assert (np.asarray(labelled)[-1] == 255).all()  # bottom padding stays white


def test_long_labels_are_wrapped_and_truncated_to_fit() -> None:
    font = ImageFont.load_default()
    text = "a photo of a very small orange tabby cat sitting on a bright green sofa " * 4
    lines = wrap_label(text, font, 120)
    assert len(lines) == 2
    assert lines[-1].endswith("...")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert wrap_label("short", font, 120) == ["short"]
    pieces = wrap_label("x" * 200, font, 60, max_lines=10)
    assert len(pieces) > 1 and all(font.getlength(p) <= 60 for p in pieces)


def test_grid_label_height_is_bounded_for_long_labels() -> None:
    tiles = [Image.new("RGB", (64, 64))] * 2
    two_lines = make_grid(tiles, labels=["word " * 10, "x"])
    very_long = make_grid(tiles, labels=["word " * 200, "x"])
    assert very_long.size == two_lines.size


def test_grid_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        make_grid([Image.new("RGB", (8, 8))], labels=["a", "b"])


def test_grid_accepts_non_rgb_tiles() -> None:
    grid = make_grid([Image.new("L", (64, 64), 0), Image.new("RGBA", (64, 64), (0, 0, 0, 0))])
    assert grid.mode == "RGB"
    assert grid.getpixel((GRID_PADDING + 5, GRID_PADDING + 5)) == (0, 0, 0)
    assert grid.getpixel((2 * GRID_PADDING + 192 + 5, GRID_PADDING + 5)) == (255, 255, 255)

