"""Shared fixtures: tiny random Stable-Diffusion-layout models built from config, and the bundled model."""

from __future__ import annotations

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
def bundled_null_text(bundled):
    """Null-text inversions (paper defaults) of bundled test photos, each computed once per session."""
    from nulltext.bundled import data
    from nulltext.images import to_tensor
    from nulltext.inversion import InversionConfig, invert

    cache = {}

    def get(index: int):
        if index not in cache:
            image, caption = data.sample("test", index, bundled.default_size[0])
            cache[index] = invert(bundled, to_tensor(image), caption, InversionConfig())
        return cache[index]

    return get
