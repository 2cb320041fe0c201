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


def t5_style_tokenizer(words):
    """A T5TokenizerFast built offline: a unigram vocabulary of whole words, pad 0, EOS 1, unknown 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = ["<pad>", "</s>", "<unk>", *sorted(set(words))]
    t = Tokenizer(models.Unigram([(w, 0.0 if i < 3 else -1.0) for i, w in enumerate(vocab)], unk_id=2))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def build_tiny_sd3(path, seed: int = 4, t5: bool = True):
    """A random-init SD 3.x pipeline folder (the real architecture, tiny): an MMDiT with joint attention,
    per-head RMS norms of q and k and one dual-attention block (SD 3.5), two projecting CLIP encoders
    of different widths, an optional T5 encoder, a VAE with a shift factor and the flow-matching
    scheduler with SD 3's shift of 3."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    words = vocabulary_words()
    tokenizer = build_tokenizer(words, 16)

    def clip(hidden: int):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=hidden))

    t5_tokenizer = t5_style_tokenizer(words) if t5 else None
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=64, d_ff=64, d_kv=8, num_layers=2,
                                             num_heads=4, relative_attention_num_buckets=8)) if t5 else None
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=16 + 32,
        pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=32, shift_factor=0.06, scaling_factor=1.5)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip(16), tokenizer=tokenizer, text_encoder_2=clip(32),
                                    tokenizer_2=tokenizer, text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer)
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


def _folder(name: str, build, *args, **kwargs):
    """A session fixture `name`: a tiny model folder, built once per run by `build(path, *args, **kwargs)`."""
    @pytest.fixture(scope="session", name=name)
    def folder(tmp_path_factory):
        return build(tmp_path_factory.mktemp(name.removesuffix("_dir")) / "model", *args, **kwargs)
    return folder


def _loaded(name: str, folder: str):
    """A session fixture `name`: the model of the folder fixture `folder`, on the CPU (tests read it, never change it)."""
    @pytest.fixture(scope="session", name=name)
    def model(request):
        return load_model(request.getfixturevalue(folder), device="cpu")
    return model


tiny_dir = _folder("tiny_dir", build_tiny_model)
tiny_v_dir = _folder("tiny_v_dir", build_tiny_model, "v_prediction", seed=1)
tiny_sd2_dir = _folder("tiny_sd2_dir", build_tiny_sd2)
tiny_xl_dir = _folder("tiny_xl_dir", build_tiny_sdxl)
tiny_sd3_dir = _folder("tiny_sd3_dir", build_tiny_sd3)
tiny = _loaded("tiny", "tiny_dir")
tiny_xl = _loaded("tiny_xl", "tiny_xl_dir")
tiny_sd3 = _loaded("tiny_sd3", "tiny_sd3_dir")


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
