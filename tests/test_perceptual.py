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


def test_clip_score_on_a_tiny_local_clip_is_100_times_the_floored_cosine(tmp_path) -> None:
    """The CLIP score of nulltext's wrapper against CLIP's own embeddings: the pixels go in as the photo's
    0…255 values, `keep` zeroes the rest, and every call is scored alone (no mean over earlier calls)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from nulltext.bundled.data import vocabulary_words
    from nulltext.bundled.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(vocabulary_words(), 16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")

    p = load_perceptual(PerceptualConfig(clip=str(tmp_path / "clip")))
    assert "clip" not in p.skipped

    @torch.no_grad()
    def reference(image: Image.Image, text: str) -> float:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        inputs = processor(text=[text], images=[pixels], return_tensors="pt", padding=True)
        # CLIP's embeddings by definition: each tower's pooled output through its projection
        a = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        b = model.text_projection(model.text_model(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"]).pooler_output)
        return max(0.0, 100 * float(torch.nn.functional.cosine_similarity(a, b)[0]))

    photo = data.render(data.scene("test", 0), 64)
    other = data.render(data.scene("test", 1), 64)
    keep = np.zeros((64, 64), dtype=bool)
    keep[:, :32] = True
    left_half = Image.fromarray((np.asarray(photo) * keep[..., None]).astype(np.uint8))
    texts = [data.scene("test", i).caption() for i in range(4)]
    scores = []
    for text in texts:  # interleaved, so a score that averaged over earlier calls would differ
        for image, kept, seen in ((photo, None, photo), (other, None, other), (photo, keep, left_half)):
            got = clip_score(p, image, text, keep=kept)
            assert got == pytest.approx(reference(seen, text), rel=1e-4, abs=1e-4)
            scores.append(got)
    assert sum(s > 0 for s in scores) >= 3  # the random model scores some pairs above the floor
    assert len({round(s, 3) for s in scores}) >= 3  # images and texts matter
