"""Shared fixtures: tiny random Stable-Diffusion-layout models built from config, and the bundled model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from nulltext.bundled.data import vocabulary_words
from nulltext.bundled.tokenizer import build_tokenizer
from nulltext.bundled.train import TrainConfig, make_scheduler, make_text_encoder, make_unet, make_vae
from nulltext.model import load_model


def build_tiny_model(path, prediction_type: str = "epsilon", seed: int = 0):
    """A random-init diffusers pipeline folder, small enough for the CPU in milliseconds per step."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    cfg = TrainConfig(resolution=32)
    cfg.vae.block_out_channels, cfg.vae.norm_num_groups = (16, 32), 8
    cfg.unet.block_out_channels, cfg.unet.text_hidden, cfg.unet.max_tokens = (32, 64), 32, 16
    tokenizer = build_tokenizer(vocabulary_words(), cfg.unet.max_tokens)
    scheduler = make_scheduler()
    scheduler.register_to_config(prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(
        vae=make_vae(cfg), text_encoder=make_text_encoder(cfg, tokenizer), tokenizer=tokenizer,
        unet=make_unet(cfg, 16), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sdxl(path, seed: int = 2):
    """A random-init SDXL pipeline folder (the real architecture, tiny): two CLIP encoders of different
    widths, the second with a projection (the pooled embedding), a UNet with SDXL's `text_time` added
    embedding (6 size ids × 8 + the pooled width), attention only below full latent resolution, as SDXL."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = TrainConfig(resolution=32)
    cfg.vae.block_out_channels, cfg.vae.norm_num_groups = (16, 32), 8
    tokenizer = build_tokenizer(vocabulary_words(), 16)

    def text_config(hidden: int):
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=16,
                              hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              projection_dim=hidden)

    text_encoder, text_encoder_2 = CLIPTextModel(text_config(16)), CLIPTextModelWithProjection(text_config(32))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(4, 8), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        cross_attention_dim=16 + 32, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=32,
    )
    pipe = StableDiffusionXLPipeline(vae=make_vae(cfg), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=make_scheduler())
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sd2(path, seed: int = 3):
    """A random-init SD 2.x-style pipeline folder: v-prediction, linear-projection transformers with
    per-level head widths, a GELU text encoder cut at the penultimate layer of a one-layer-deeper
    "OpenCLIP" (as diffusers' SD 2.x conversion stores it: 23 of 24 layers). The full encoder is
    saved beside it in `path.parent / "full_text_encoder"` so tests can check the cut."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = TrainConfig(resolution=32)
    cfg.vae.block_out_channels, cfg.vae.norm_num_groups = (16, 32), 8
    tokenizer = build_tokenizer(vocabulary_words(), 16)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                max_position_embeddings=16, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=32)
    full = CLIPTextModel(CLIPTextConfig(num_hidden_layers=3, **text))
    cut = CLIPTextModel(CLIPTextConfig(num_hidden_layers=2, **text))
    missing, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(".layers.2." in k for k in unexpected)
    full.save_pretrained(Path(path).parent / "full_text_encoder")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(4, 8), use_linear_projection=True, cross_attention_dim=32, norm_num_groups=32,
    )
    scheduler = make_scheduler()
    scheduler.register_to_config(prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=make_vae(cfg), text_encoder=cut, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory):
    return build_tiny_sd2(tmp_path_factory.mktemp("tiny_sd2") / "model")


@pytest.fixture(scope="session")
def tiny_xl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_xl") / "model")


@pytest.fixture(scope="session")
def tiny_xl(tiny_xl_dir):
    return load_model(tiny_xl_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_v_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_v") / "model", "v_prediction", seed=1)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return load_model(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def bundled():
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """One folder for every xdist worker of this run (each worker's base temp folder is its child)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def bundled_null_text(bundled, shared_dir):
    """Null-text inversions of bundled test photos, each computed once per run across all xdist
    workers (under a file lock) and handed out as a fresh load, so a test may change what it gets."""
    from filelock import FileLock

    from nulltext.bundled import data
    from nulltext.inversion import InversionConfig, invert, load_inversion, save_inversion
    from nulltext.io.images import to_tensor

    def get(index: int, config: InversionConfig = InversionConfig()):
        key = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:12]
        path = shared_dir / f"bundled-{index}-{key}.nti"
        with FileLock(f"{path}.lock"):
            if not path.exists():
                image, caption = data.sample("test", index, bundled.default_size[0])
                save_inversion(invert(bundled, to_tensor(image), caption, config), path)
        return load_inversion(path, bundled)

    return get


@pytest.fixture(scope="session")
def computed_once(shared_dir):
    """`computed_once(key, compute)`: compute()'s result, computed once per run across all xdist workers
    (under a file lock, kept with torch.save) and handed out as a fresh load; for results several tests
    ask of the same inputs, as the edits of the Prompt-to-Prompt tests."""
    from filelock import FileLock

    def get(key: str, compute):
        path = shared_dir / f"result-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        with FileLock(f"{path}.lock"):
            if not path.exists():
                torch.save(compute(), path)
        return torch.load(path, weights_only=False)

    return get
