"""The synthetic captioned data set the bundled model is trained on.

One filled shape of one palette colour on a plain background of another palette colour, drawn
anti-aliased (4x supersampling) at a random position and size: "a red circle on a blue background".
Every sample is a pure function of (split, index), so the train, validation and test splits are
disjoint by seed and nothing needs to be cached or committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Split = Literal["train", "val", "test"]

# Colour names and their sRGB values; far enough apart that a mean colour names itself.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = tuple(PALETTE)

_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What one image shows; the caption is derived from it."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]  # (x, y) in pixels
    size: float  # half the shape's width in pixels

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def _rng(split: Split, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SPLIT_SEED[split], index, stream]))


def random_scene(rng: np.random.Generator, resolution: int) -> Scene:
    """Draw a scene: shape, two different colours, a size and a position that keeps it inside."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour, background = rng.choice(len(COLOURS), size=2, replace=False)
    size = float(rng.uniform(0.16, 0.32) * resolution)
    margin = size + 1.0
    centre = (float(rng.uniform(margin, resolution - margin)), float(rng.uniform(margin, resolution - margin)))
    return Scene(shape, COLOURS[colour], COLOURS[background], centre, size)


def shape_polygon(scene: Scene, scale: float = 1.0) -> list[tuple[float, float]] | None:
    """The square's or triangle's corners (None for a circle), scaled by `scale`."""
    cx, cy, r = scene.centre[0] * scale, scene.centre[1] * scale, scene.size * scale
    if scene.shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if scene.shape == "triangle":  # equilateral-ish, apex up, same width and height as the square
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return None


def render(scene: Scene, resolution: int) -> Image.Image:
    """Draw the scene anti-aliased as an RGB image of `resolution`×`resolution`."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    fill = PALETTE[scene.colour]
    polygon = shape_polygon(scene, _SUPERSAMPLE)
    if polygon is None:
        cx, cy, r = (v * _SUPERSAMPLE for v in (*scene.centre, scene.size))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def shape_mask(scene: Scene, resolution: int) -> np.ndarray:
    """Boolean (resolution, resolution) mask of the pixels the shape covers more than half."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    polygon = shape_polygon(scene, _SUPERSAMPLE)
    if polygon is None:
        cx, cy, r = (v * _SUPERSAMPLE for v in (*scene.centre, scene.size))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX)) > 127


def scene(split: Split, index: int, resolution: int = 64) -> Scene:
    """The scene of sample `index` of `split` (deterministic)."""
    return random_scene(_rng(split, index), resolution)


def sample(split: Split, index: int, resolution: int = 64) -> tuple[Image.Image, str]:
    """Image and full caption of sample `index` of `split` (deterministic)."""
    s = scene(split, index, resolution)
    return render(s, resolution), s.caption()


def training_caption(s: Scene, rng: np.random.Generator) -> str:
    """A caption variant for training: orders and partial captions keep each word's meaning local.

    Mostly the canonical caption; sometimes the background first, sometimes only the shape or only
    the background, and 10 % empty (caption dropout, so classifier-free guidance has an
    unconditional model to contrast with).
    """
    u = rng.random()
    if u < 0.10:
        return ""
    if u < 0.65:
        return s.caption()
    if u < 0.80:
        return f"a {s.background} background with a {s.colour} {s.shape}"
    if u < 0.90:
        return f"a {s.colour} {s.shape}"
    if u < 0.95:
        return f"a {s.shape} on a {s.background} background"
    return f"a {s.background} background"


def word_regions(s: Scene, caption: str, resolution: int) -> dict[int, np.ndarray]:
    """Which pixels each word of a caption names: word position → float (resolution, resolution) mask.

    The shape's colour and noun name the shape's pixels, the background's colour and "background" the
    rest; "a", "on" and "with" name no region. Used by the training's word-localisation loss.
    """
    inside = shape_mask(s, resolution).astype(np.float32)
    regions = {}
    for i, word in enumerate(caption.split()):
        if word in (s.colour, s.shape):
            regions[i] = inside
        elif word in (s.background, "background"):
            regions[i] = 1.0 - inside
    return regions


def vocabulary_words() -> list[str]:
    """Every word the training captions use."""
    return ["a", "on", "with", "background", *COLOURS, *SHAPES]


def nearest_colour(rgb: np.ndarray) -> str:
    """Palette name nearest (Euclidean in sRGB) to an (3,) mean colour in 0..255."""
    names = list(PALETTE)
    values = np.array([PALETTE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((values - np.asarray(rgb, dtype=np.float64)) ** 2).sum(1)))]


def circle_fill_ratio() -> float:
    return math.pi / 4


DEMO_INDEX = 829  # test split: "a red circle on a blue background", centred, medium size


def write_demo_photo(path) -> None:
    """The demo photo shipped with the package: a test-split image with its caption in the PNG text."""
    from PIL.PngImagePlugin import PngInfo

    image, caption = sample("test", DEMO_INDEX)
    info = PngInfo()
    info.add_text("caption", caption)
    info.add_text("source", f"nulltext.bundled.data test split, index {DEMO_INDEX}")
    image.save(path, pnginfo=info)
