"""The web app's fields → settings: blend words, re-weights and the mask editor's painting.

Parsing only (no model, no page): each bad value is one `gr.Error` line naming the field's form.
"""

from __future__ import annotations

import re

import gradio as gr
import numpy as np
import torch

from nulltext.io.images import painted_mask


def drawn_mask(value, size: tuple[int, int]) -> torch.Tensor | None:
    """The mask editor's value → (H, W) bool at the photo's size; None when nothing is painted."""
    return painted_mask([np.asarray(x) for x in value.get("layers") or [] if x is not None] if isinstance(value, dict) else [], size)


def words(text: str | None) -> list[str]:
    return [w.strip() for w in re.split(r"[,\s]+", text or "") if w.strip()]


def reweights(text: str | None) -> dict[str, float]:
    """'red=-3, circle=2' → {'red': -3.0, 'circle': 2.0}."""
    scales = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        word, sep, value = item.strip().rpartition("=")
        try:
            scales[word.strip()] = float(value)
            if not sep or not word.strip():
                raise ValueError
        except ValueError:
            raise gr.Error(f"re-weight {item.strip()!r} is not WORD=SCALE, e.g. red=-3") from None
    return scales
