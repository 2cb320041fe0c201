"""The judge of the synthetic world: names an image's background, shape colour and shape by pixel analysis.

A documented rule, no learned parts:
- background: the median colour of the image's outer ring (2 px), named by the nearest palette colour;
- foreground: pixels farther than `FOREGROUND_DISTANCE` (sRGB Euclidean) from that median colour; its
  mean colour names the shape's colour; fewer than 2 % of the pixels → "no shape";
- shape: the foreground's fill ratio of its bounding box, nearest of the ideal ratios — square 1.0,
  circle π/4 ≈ 0.785, triangle 0.5 — so the boundaries are 0.64 and 0.89; a bounding box with an
  aspect ratio outside 0.6 … 1.67 is "no shape" (every drawn shape is as tall as it is wide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nulltext.bundled import data

FOREGROUND_DISTANCE = 60.0
IDEAL_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}


@dataclass(frozen=True)
class Judgement:
    background: str
    colour: str | None
    shape: str | None
    fill_ratio: float

    def matches(self, scene: data.Scene) -> dict[str, bool]:
        return {"background": self.background == scene.background, "colour": self.colour == scene.colour,
                "shape": self.shape == scene.shape}


def _background_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour (3,) of the outer 2-pixel ring of an (H, W, 3) image."""
    ring = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3),
                           rgb[:, -2:].reshape(-1, 3)])
    return np.median(ring, axis=0)


def _foreground(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.sqrt(((rgb - background) ** 2).sum(-1)) > FOREGROUND_DISTANCE  # (H, W)


def foreground(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels the judge counts as the shape (farther than FOREGROUND_DISTANCE from the ring)."""
    rgb = np.asarray(image, dtype=np.float64)[..., :3]  # (H, W, 3)
    return _foreground(rgb, _background_colour(rgb))


def judge(image: Image.Image | np.ndarray) -> Judgement:
    """Name the background, the shape's colour and the shape of one image."""
    rgb = np.asarray(image, dtype=np.float64)[..., :3]  # (H, W, 3)
    bg = _background_colour(rgb)
    fg = _foreground(rgb, bg)  # (H, W)
    background = data.nearest_colour(bg)
    if fg.mean() < 0.02:
        return Judgement(background, None, None, 0.0)
    colour = data.nearest_colour(rgb[fg].mean(0))
    ys, xs = np.nonzero(fg)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = float(fg.sum() / (h * w))
    if not 0.6 <= h / w <= 1 / 0.6:
        return Judgement(background, colour, None, fill)
    shape = min(IDEAL_FILL, key=lambda s: abs(IDEAL_FILL[s] - fill))
    return Judgement(background, colour, shape, fill)
