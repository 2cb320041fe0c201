"""Pictures for people: attention heat maps over the image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] → (h, w, 3) uint8 with matplotlib's 'inferno' colour map."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def attention_tiles(image: torch.Tensor, maps: torch.Tensor, alpha: float = 0.6) -> list[Image.Image]:
    """The image, then one heat map per token blended over it; image (1,3,H,W) in [-1,1], maps (n, h, w)."""
    H, W = image.shape[-2:]
    rgb = ((image[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
    up = F.interpolate(maps[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0].numpy()
    tiles = [Image.fromarray(rgb.astype(np.uint8))]
    for m in up:
        tiles.append(Image.fromarray((alpha * heat_colours(m) + (1 - alpha) * rgb).astype(np.uint8)))
    return tiles


def edit_mask_overlay(edited: torch.Tensor, mask: torch.Tensor, dim: float = 0.3) -> Image.Image:
    """Where an edit was allowed to change the photo: the edit (3, H, W) in [-1, 1] at full brightness where
    `mask` (H, W, in [0, 1], or a coarser grid, upsampled) is 1, dimmed to `dim` where it is 0, with a magenta tint."""
    H, W = edited.shape[-2:]
    m = F.interpolate(mask.float()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    m = m.clamp(0, 1).numpy()[..., None]  # (H, W, 1)
    rgb = ((edited.permute(1, 2, 0).float().numpy() + 1) * 127.5).clip(0, 255)
    tint = np.array([255.0, 0.0, 255.0])
    shown = rgb * (dim + (1 - dim) * m) * (1 - 0.25 * m) + 0.25 * m * tint
    return Image.fromarray(shown.clip(0, 255).astype(np.uint8))
