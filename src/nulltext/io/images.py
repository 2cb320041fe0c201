"""Reading photos into model-sized RGB images, writing PNGs atomically, and labelled grids.

Every failure to read a photo raises :class:`ImageError` with a one-line message that names the
file and says what to do about it, so the command line can show it as-is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from nulltext.io.outputs import publish
from nulltext.errors import NulltextError

MIN_IMAGE_SIDE = 8
GRID_PADDING = 4
LABEL_MAX_LINES = 2
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ELLIPSIS = "..."

Size = tuple[int, int]
Box = tuple[int, int, int, int]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


class ImageError(NulltextError, ValueError):
    """A photo that cannot be used, with a one-line message naming the file and the fix."""


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image of exactly the target size and where it came from in the original photo."""

    image: Image.Image
    crop_box: Box
    original_size: Size
    path: str

    def provenance(self, source_path: str | None = None) -> dict:
        """What an inversion keeps of its photo: the pixels (H, W, 3) uint8, the crop box, the file's name."""
        return {"photo": torch.from_numpy(np.asarray(self.image).copy()), "crop_box": self.crop_box,
                "source_path": self.path if source_path is None else source_path}


def _one_line(text: str) -> str:
    """Collapse line breaks so a message always fits on one line."""
    return " ".join(text.split())


def _image_error(path: str | os.PathLike[str], problem: str, fix: str) -> ImageError:
    """Build an ImageError for ``path`` saying what is wrong and what to do."""
    return ImageError(_one_line(f"cannot read image '{os.fspath(path)}': {problem} — {fix}"))


def _target_size(size: int | Size) -> Size:
    """Normalise ``size`` (one int for a square, or (width, height)) to a checked pair."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"size must be an int or a (width, height) pair of ints, got {size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return (pair[0], pair[1])


@contextlib.contextmanager
def _pillow_warnings_silenced() -> Iterator[None]:
    """Pillow's warnings about photos it reads anyway (corrupt EXIF tags, truncated metadata, a large
    but allowed image: DecompressionBombWarning) are not the user's business: the photo is used. An
    image beyond Pillow's limit raises DecompressionBombError, which `_decode` makes a one-line ImageError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_NOT_A_FILE = ((stat.S_ISDIR, "it is a directory"), (stat.S_ISFIFO, "it is a named pipe (FIFO), not a file"),
               (stat.S_ISCHR, "it is a device, not a file"), (stat.S_ISBLK, "it is a device, not a file"),
               (stat.S_ISSOCK, "it is a socket, not a file"))


def _check_regular(path, mode: int) -> None:
    for test, problem in _NOT_A_FILE:
        if test(mode):
            raise _image_error(path, problem, "pass the path of an image file")
    if not stat.S_ISREG(mode):
        raise _image_error(path, "it is not a regular file", "pass the path of an image file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a photo or mask file for reading; ImageError unless it is a regular file.

    A folder, named pipe, device or socket is refused before it is opened (reading a FIFO would wait
    forever for a writer, /dev/zero never ends), and again after (`fstat`), in case the path changed
    between the two; a file descriptor number is refused as not a path (`open(1)` would read stdout).
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ImageError(f"cannot read image {path!r}: a path must be text, not {type(path).__name__} — "
                         "pass the file's path, e.g. \"photo.png\"")
    try:
        mode = os.stat(path).st_mode
        _check_regular(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except ImageError:
        raise
    except FileNotFoundError:
        raise _image_error(path, "file not found", "check the path") from None
    except PermissionError:
        raise _image_error(path, "permission denied", "make the file readable") from None
    except (OSError, ValueError) as e:  # a name too long, a file under a file, a NUL or lone surrogate in it
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise _image_error(path, f"it cannot be opened ({reason})", "check the path") from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` with PIL and decode all its pixels, turning every failure into an ImageError."""
    fix = "pass a PNG/JPEG/WebP photo"
    with open_regular(path) as handle:
        try:
            if os.fstat(handle.fileno()).st_size == 0:
                raise _image_error(path, "file is empty", fix)
            with _pillow_warnings_silenced(), Image.open(handle) as opened:
                opened.load()
            return opened
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise _image_error(path, "not a recognised image format", fix) from None
        except Image.DecompressionBombError:
            raise _image_error(path, "image is too large to decode safely", "downscale it first") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
            raise _image_error(path, "file is truncated or corrupt", "re-export or re-download it") from None


def _oriented(path: str, image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation of ``image`` read from ``path``, so pixels are upright."""
    try:
        with _pillow_warnings_silenced():
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, IndexError, struct.error):
        raise _image_error(path, "its EXIF metadata is corrupt", "re-save the photo without metadata") from None


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float greyscale image to 8-bit "L" without clipping.

    I;16 uses its full range 0..65535; "I" is treated as 16-bit data when it fits 0..65535;
    "F" is taken as 0..1 or 0..255 when it fits those, and anything else is min-max stretched.
    """
    values = np.asarray(image, dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif image.mode == "F" and low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` carries an alpha band or a transparent palette/colour key."""
    return "A" in image.getbands() or "a" in image.mode or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any PIL mode to RGB, compositing transparency onto white."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_l(image).convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def centre_crop_box(width: int, height: int, target: Size) -> Box:
    """The largest box centred in a width x height image with the aspect ratio of ``target``."""
    target_w, target_h = target
    if width * target_h > height * target_w:
        crop_w, crop_h = min(width, max(1, round(height * target_w / target_h))), height
    else:
        crop_w, crop_h = width, min(height, max(1, round(width * target_h / target_w)))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def _checked_crop(path: str, crop: Box, width: int, height: int) -> Box:
    """Return ``crop`` as ints if it lies inside a width x height image with positive area."""
    box = tuple(crop)
    if len(box) != 4 or not all(isinstance(v, (int, np.integer)) for v in box):
        raise _image_error(path, f"crop box {crop!r} is not four integers", "pass left,top,right,bottom")
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise _image_error(
            path,
            f"crop box ({left}, {top}, {right}, {bottom}) is outside the {width}x{height} image "
            "(after EXIF rotation) or has no area",
            f"pass 0 <= left < right <= {width} and 0 <= top < bottom <= {height}",
        )
    return (left, top, right, bottom)


def load_image(path: str | os.PathLike[str], size: int | Size, crop: Box | None = None) -> LoadedImage:
    """Read a photo, orient it by EXIF, make it RGB, crop it and resize it to ``size``."""
    target = _target_size(size)
    decoded = _decode(path)  # refuses what is not a path of a regular file, before opening it
    name = os.fspath(path)
    original = _oriented(name, decoded)
    width, height = original.size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise _image_error(
            name,
            f"image is too small ({width}x{height} px)",
            f"pass a photo of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px",
        )
    with _pillow_warnings_silenced():  # e.g. "Palette images with Transparency expressed in bytes…"
        rgb = to_rgb(original)
    box = centre_crop_box(width, height, target) if crop is None else _checked_crop(name, crop, width, height)
    cropped = rgb.crop(box) if box != (0, 0, width, height) else rgb
    resized = cropped if cropped.size == target else cropped.resize(target, Image.Resampling.LANCZOS)
    return LoadedImage(image=resized, crop_box=box, original_size=(width, height), path=name)


def to_tensor(
    image: Image.Image, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Turn a PIL image into a (1, 3, H, W) tensor with values in [-1, 1]."""
    array = np.asarray(to_rgb(image) if image.mode != "RGB" else image, dtype=np.float64)
    tensor = torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)
    return tensor.to(device=device, dtype=dtype)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Turn a (B, 3, H, W) (or (3, H, W)) tensor in [-1, 1] into RGB images, clamped and rounded."""
    batch = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(tensor.shape)}")
    values = torch.nan_to_num(batch.detach().to("cpu", torch.float32), nan=0.0)
    pixels = ((values.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(item.permute(1, 2, 0).numpy()) for item in pixels]


def _png_info(metadata: dict[str, str] | None) -> PngInfo:
    """PNG text chunks for ``metadata``, checking keys and values are strings."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"PNG metadata must map str to str, got {key!r}: {type(value).__name__}")
        if not 1 <= len(key) <= 79 or not key.isascii():
            raise ValueError(f"PNG metadata key {key!r} must be 1-79 ASCII characters")
        info.add_text(key, value)
    return info


def output_metadata(model, source_prompt: str, kind: str, **fields) -> dict[str, str]:
    """The PNG text of an output: nulltext's version, the model and its weights' identity, the source caption,
    the kind of output, and `fields` (text as it is, anything else as JSON)."""
    from nulltext import __version__

    meta = {"nulltext_version": __version__, "model": model.source, "model_identity": model.identity,
            "source_prompt": source_prompt, "kind": kind}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    return meta


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    force: bool = False,
    keep_both: bool = False,
) -> Path:
    """Write ``image`` as a PNG with ``metadata`` text chunks, atomically, and return its path.

    Never replaces an existing file unless ``force``; ``keep_both`` as in :func:`nulltext.io.outputs.publish`.
    """
    info = _png_info(metadata)

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())

    return publish(path, write, force=force, keep_both=keep_both)


def read_png_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the text chunks of a PNG file as a plain dict."""
    image = _decode(path)
    if image.format != "PNG":
        raise _image_error(path, f"it is a {image.format} file, not a PNG", "pass a PNG written by nulltext")
    return {str(key): str(value) for key, value in getattr(image, "text", {}).items()}


def _text_width(font: Font, text: str) -> float:
    """Rendered width of ``text`` in pixels."""
    return font.getlength(text)


def _drawable(text: str, font: Font) -> str:
    """``text`` with characters the font cannot encode replaced by '?'."""
    clean = _one_line(text)
    try:
        font.getlength(clean)
    except UnicodeEncodeError:
        clean = clean.encode("latin-1", "replace").decode("latin-1")
    return clean


def _split_word(word: str, font: Font, width: int) -> list[str]:
    """Break a word that is wider than ``width`` into pieces that fit."""
    pieces, current = [], ""
    for char in word:
        if current and _text_width(font, current + char) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    return pieces + ([current] if current else [])


def _truncate(line: str, font: Font, width: int) -> str:
    """Shorten ``line`` and end it with an ellipsis so it fits ``width``."""
    while line and _text_width(font, line + _ELLIPSIS) > width:
        line = line[:-1]
    return line.rstrip() + _ELLIPSIS


def wrap_label(text: str, font: Font, width: int, max_lines: int = LABEL_MAX_LINES) -> list[str]:
    """Wrap ``text`` into at most ``max_lines`` lines no wider than ``width``, truncating the rest."""
    words = [piece for word in _drawable(text, font).split(" ") for piece in _split_word(word, font, width)]
    lines: list[str] = []
    for word in words:
        if lines and _text_width(font, f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [_truncate(lines[max_lines - 1], font, width)]
    return lines


def _line_height(font: Font) -> int:
    """Height of one line of label text including a little leading."""
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom) + 2


def _tile(image: Image.Image, min_tile: int) -> Image.Image:
    """Upscale ``image`` with NEAREST by the smallest integer factor reaching ``min_tile`` width."""
    rgb = to_rgb(image) if image.mode != "RGB" else image
    factor = max(1, math.ceil(min_tile / max(1, rgb.width)))
    if factor == 1:
        return rgb
    return rgb.resize((rgb.width * factor, rgb.height * factor), Image.Resampling.NEAREST)


def make_grid(
    images: list[Image.Image],
    labels: list[str] | None = None,
    columns: int | None = None,
    min_tile: int = 192,
) -> Image.Image:
    """Tile images on white in a grid, each upscaled to at least ``min_tile`` px wide, with labels below."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    count = len(images)
    columns = min(max(1, columns if columns is not None else count), count)
    rows = math.ceil(count / columns)
    tiles = [_tile(image, min_tile) for image in images]
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    font = ImageFont.load_default()
    wrapped = [wrap_label(label, font, cell_w) for label in labels] if labels is not None else None
    line_h = _line_height(font)
    strip_h = max(len(lines) for lines in wrapped) * line_h + GRID_PADDING if wrapped else 0
    grid = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * GRID_PADDING, rows * (cell_h + strip_h) + (rows + 1) * GRID_PADDING),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for index, tile in enumerate(tiles):
        x0 = GRID_PADDING + (index % columns) * (cell_w + GRID_PADDING)
        y0 = GRID_PADDING + (index // columns) * (cell_h + strip_h + GRID_PADDING)
        grid.paste(tile, (x0 + (cell_w - tile.width) // 2, y0 + (cell_h - tile.height) // 2))
        for number, line in enumerate(wrapped[index] if wrapped else []):
            x = x0 + (cell_w - _text_width(font, line)) / 2
            draw.text((x, y0 + cell_h + GRID_PADDING // 2 + number * line_h), line, fill=(0, 0, 0), font=font)
    return grid


def load_mask(path: str | os.PathLike[str], size: Size) -> torch.Tensor:
    """A user-drawn edit mask (H, W) bool from an image file: light pixels (≥ 128 grey) are the region.

    The mask must have the photo's size (width, height) as inverted; transparency counts as dark.
    """
    image = _decode(path)
    if image.size != tuple(size):
        raise _image_error(path, f"mask is {image.size[0]}x{image.size[1]} pixels, the photo was inverted at "
                           f"{size[0]}x{size[1]}", f"draw the mask at {size[0]}x{size[1]}")
    if _has_transparency(image):
        image = image.convert("RGBA")
        grey = np.asarray(image.convert("L"), dtype=np.uint8) * (np.asarray(image)[..., 3] >= 128)
    else:
        grey = np.asarray(to_rgb(image).convert("L"), dtype=np.uint8)
    return torch.from_numpy(grey >= 128)


def painted_mask(layers: list[np.ndarray], size: Size) -> torch.Tensor | None:
    """A mask painted on RGBA layers (the web app's sketch tool) → (H, W) bool at `size` (width, height):
    the union of their opaque pixels (alpha > 127), resized nearest; None when nothing is painted."""
    painted = [x[..., 3] > 127 for x in layers if x.ndim == 3 and x.shape[-1] == 4]
    if not painted or not any(p.any() for p in painted):
        return None
    union = Image.fromarray(np.logical_or.reduce(painted).astype(np.uint8) * 255)
    return torch.from_numpy(np.asarray(union.resize(tuple(size), Image.Resampling.NEAREST)) > 127)
