"""The bundled model: data, tokenizer, training from scratch, the evaluator, and the model's quality."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nulltext.bundled import data
from nulltext.bundled.evaluate import evaluate_model, score, vae_psnr
from nulltext.bundled.judge import judge
from nulltext.bundled.tokenizer import build_tokenizer
from nulltext.bundled.train import TrainConfig, localisation_loss, train_unet, train_vae, word_regions_batch
from nulltext.model import bundled_model_path


def test_data_is_deterministic_and_splits_differ():
    a, cap_a = data.sample("test", 7)
    b, cap_b = data.sample("test", 7)
    assert cap_a == cap_b and np.array_equal(np.asarray(a), np.asarray(b))
    train = {data.sample("train", i)[1] + str(data.scene("train", i).centre) for i in range(50)}
    test = {data.sample("test", i)[1] + str(data.scene("test", i).centre) for i in range(50)}
    assert not train & test
    s = data.scene("test", 7)
    assert s.colour != s.background and cap_a == f"a {s.colour} {s.shape} on a {s.background} background"


def test_drawn_colours_are_the_palette():
    s = data.Scene("circle", "red", "blue", (32.0, 32.0), 12.0)
    rgb = np.asarray(data.render(s, 64))
    assert tuple(rgb[32, 32]) == data.PALETTE["red"] and tuple(rgb[2, 2]) == data.PALETTE["blue"]
    assert data.shape_mask(s, 64).sum() == pytest.approx(np.pi * 12**2, rel=0.05)


def test_tokenizer_words_are_single_tokens_and_unknown_words_split():
    tok = build_tokenizer(data.vocabulary_words(), 32)
    ids = tok("a red circle on a blue background").input_ids
    assert len(ids) == 9 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(tok("tiger", add_special_tokens=False).input_ids) == 5


def test_the_tokenizer_builds_the_bundled_models_vocabulary_exactly():
    from transformers import CLIPTokenizer

    saved = CLIPTokenizer.from_pretrained(bundled_model_path() / "tokenizer")
    built = build_tokenizer(data.vocabulary_words(), saved.model_max_length)
    assert built.get_vocab() == saved.get_vocab() and len(saved.get_vocab()) > 512
    caption = "a yellow square on a purple background, tiger"
    assert built(caption).input_ids == saved(caption).input_ids


def _losses(run_dir, stage, key="loss"):
    rows = [json.loads(line) for line in (run_dir / "train.log").read_text().splitlines()]
    return [r[key] for r in rows if r["stage"] == stage]


def test_a_few_training_steps_reduce_the_loss(tmp_path):
    cfg = TrainConfig(resolution=32, run_dir=str(tmp_path), log_every=1, checkpoint_every=1000)
    cfg.vae.block_out_channels, cfg.vae.norm_num_groups, cfg.vae.steps, cfg.vae.batch_size = (16, 32), 8, 60, 8
    cfg.vae.warmup, cfg.vae.lr = 5, 3e-3
    cfg.unet.block_out_channels, cfg.unet.text_hidden, cfg.unet.max_tokens = (32, 64), 32, 16
    cfg.unet.steps, cfg.unet.batch_size, cfg.unet.latent_pool, cfg.unet.warmup, cfg.unet.lr = 40, 16, 256, 5, 2e-3
    cfg.unet.localisation_from, cfg.unet.localisation_weight, cfg.unet.restart_at = 0, 1.0, 0
    vae = train_vae(cfg, quiet=True)
    v = _losses(tmp_path, "vae")
    assert np.mean(v[-5:]) < 0.75 * np.mean(v[:5])
    tokenizer = build_tokenizer(data.vocabulary_words(), cfg.unet.max_tokens)
    train_unet(cfg, vae, tokenizer, quiet=True)
    u = _losses(tmp_path, "unet")
    assert np.mean(u[-8:]) < 0.8 * np.mean(u[:3])
    local = _losses(tmp_path, "unet", "localisation")
    assert np.mean(local[-8:]) < 0.9 * np.mean(local[:3]), local  # the words' attention moves into their regions


def test_word_regions_and_the_localisation_loss():
    s = data.Scene("circle", "red", "blue", (32.0, 32.0), 12.0)
    caption = "a blue background with a red circle"
    regions = data.word_regions(s, caption, 64)
    inside = data.shape_mask(s, 64)
    assert sorted(regions) == [1, 2, 5, 6]  # blue, background, red, circle
    assert np.array_equal(regions[6] > 0.5, inside) and np.array_equal(regions[1] > 0.5, ~inside)
    r, chosen = word_regions_batch([s], [caption], 64, tokens=10)
    assert chosen[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]  # word i is token i + 1
    # attention (batch, heads, pixels, tokens) at 16×16: all inside the word's region → 0; uniform → (1 − area)²
    target = torch.nn.functional.adaptive_avg_pool2d(r, 16).flatten(2).transpose(1, 2)  # (1, pixels, tokens)
    core = (target > 0.999).float()  # the pixels wholly inside each word's region
    exact = core / core.sum(1, keepdim=True).clamp_min(1e-8)  # each token's attention only there
    assert localisation_loss([exact[:, None]], r, chosen) < 1e-6
    uniform = torch.full((1, 1, 256, 10), 1 / 256)
    area = float(inside.mean())
    expected = ((1 - area) ** 2 * 2 + area**2 * 2) / 4
    assert abs(localisation_loss([uniform], r, chosen).item() - expected) < 1e-3


def test_judge_is_right_on_drawn_images_and_fails_wrong_ones():
    scenes = [data.scene("test", i) for i in range(300)]
    assert score([judge(data.render(s, 64)) for s in scenes], scenes).all_three == 1.0
    # wrong images: each scene judged against another scene's picture
    shifted = scenes[1:] + scenes[:1]
    wrong = score([judge(data.render(s, 64)) for s in shifted], scenes)
    assert wrong.all_three < 0.1
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    j = judge(Image.fromarray(noise))
    assert not all(j.matches(scenes[0]).values())
    blank = Image.new("RGB", (64, 64), data.PALETTE["green"])
    assert judge(blank).shape is None and judge(blank).background == "green"


def test_bundled_model_loads_in_stock_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(bundled_model_path())
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a yellow square on a purple background", num_inference_steps=20,
               generator=torch.Generator().manual_seed(0), output_type="pil").images[0]
    assert out.size == (64, 64)
    j = judge(out)
    assert (j.background, j.colour) == ("purple", "yellow")


def test_bundled_model_clears_the_quality_bar(bundled):
    """The issue's bar (background ≥ 95 %, shape colour ≥ 90 %, shape class ≥ 80 %) on 64 test captions,
    and guidance matters (MODEL.md: 99.6 / 99.6 / 94.6 % at w = 7.5 over 240 captions, all three
    94.2 % against 87.9 % at w = 1). Sampled in 10 DDIM steps, not MODEL.md's 50, for the test's time:
    measured 100 / 100 / 95.3 % at w = 7.5, all three 95.3 % against 81.2 % at w = 1 (at 15 steps:
    100 / 100 / 96.9 %, and 96.9 % against 84.4 %)."""
    s75, _ = evaluate_model(bundled, n=64, seed=1, guidance_scale=7.5, num_steps=10)
    print(f"\nw=7.5: {s75.line()}")
    assert s75.background >= 0.95 and s75.colour >= 0.90 and s75.shape >= 0.80, s75.line()
    s1, _ = evaluate_model(bundled, n=64, seed=1, guidance_scale=1.0, num_steps=10)
    print(f"w=1:   {s1.line()}")
    assert s75.all_three >= s1.all_three + 0.03, f"w=7.5: {s75.line()} / w=1: {s1.line()}"


def test_bundled_vae_reconstructs_above_30_db(bundled):
    assert vae_psnr(bundled, n=16) >= 30.0
    assert sum(p.stat().st_size for p in bundled_model_path().rglob("*.safetensors")) <= 25 * 2**20
