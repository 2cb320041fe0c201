"""Weight-needing metrics: skipped with a reason when absent; DINO structure distance on a tiny local ViT."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nulltext.bundled import data
from nulltext.evaluation.perceptual import PerceptualConfig, clip_score, load_perceptual, lpips, structure_distance


def test_missing_weights_are_skipped_with_a_reason(tmp_path) -> None:
    p = load_perceptual(PerceptualConfig(lpips=str(tmp_path), clip=str(tmp_path / "no-clip"), dino=None))
    assert set(p.skipped) == {"lpips", "clip", "structure_distance"}
    assert all("\n" not in why and why for why in p.skipped.values())
    assert "no CLIP model at" in p.skipped["clip"] and "--dino" in p.skipped["structure_distance"]
    image = Image.new("RGB", (32, 32))
    assert lpips(p, image, image) is None and clip_score(p, image, "a cat") is None
    assert structure_distance(p, image, image) is None


def test_structure_distance_on_a_tiny_local_vit(tmp_path) -> None:
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    p = load_perceptual(PerceptualConfig(dino=str(tmp_path / "dino"), dino_size=64))
    assert "structure_distance" not in p.skipped
    a = data.render(data.scene("test", 0), 64)
    moved = data.render(data.scene("test", 1), 64)
    assert structure_distance(p, a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    d_moved = structure_distance(p, a, moved)
    assert d_moved > 1e-4
    assert structure_distance(p, moved, a) == pytest.approx(d_moved, rel=1e-5)  # symmetric
