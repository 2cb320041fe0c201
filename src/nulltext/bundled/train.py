"""Train the bundled model from scratch: VAE first, then UNet + text encoder (latent diffusion).

    python -m nulltext.bundled.train                   # both stages, writes src/nulltext/bundled/model
    python -m nulltext.bundled.train --stage vae       # one stage; re-running resumes from checkpoints

The architecture is Stable Diffusion's, only small: diffusers `AutoencoderKL`, `UNet2DConditionModel`
with cross-attention, transformers `CLIPTextModel` + `CLIPTokenizer`, `DDIMScheduler` with SD's
scaled-linear betas and epsilon prediction. Seeded, resumable, with a progress bar and a log file.
Run nothing else CPU-heavy beside it: on 2 cores two jobs more than double each other's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nulltext.editing.attention import controlled
from nulltext.bundled import data
from nulltext.bundled.tokenizer import build_tokenizer, write_vocab_files

MODEL_DIR = Path(__file__).parent / "model"


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    steps: int = 2200
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    l1_weight: float = 0.5


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 32
    steps: int = 7000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 200
    restart_at: int = 5000  # a warm restart: from this step a new warm-up and cosine to `steps` (0: none)
    restart_lr: float = 2.5e-4
    localisation_weight: float = 0.1  # word-localisation loss on cross-attention (0: plain SD training)
    localisation_from: int = 5000  # the step it starts at (the shipped model was fine-tuned with it)
    ema_decay: float = 0.995
    latent_pool: int = 40000  # training images encoded once, latents cached


@dataclass
class TrainConfig:
    resolution: int = 64
    seed: int = 0
    run_dir: str = "runs/bundled"
    out_dir: str = str(MODEL_DIR)
    checkpoint_every: int = 250
    log_every: int = 50
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)


# ---------------------------------------------------------------------------------------------
# Building the components from config


def make_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae.block_out_channels,
        layers_per_block=cfg.vae.layers_per_block,
        latent_channels=cfg.vae.latent_channels,
        norm_num_groups=cfg.vae.norm_num_groups,
        sample_size=cfg.resolution,
    )


def make_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    u = cfg.unet
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=u.text_hidden,
        intermediate_size=4 * u.text_hidden,
        num_hidden_layers=u.text_layers,
        num_attention_heads=u.text_heads,
        max_position_embeddings=u.max_tokens,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=u.text_hidden,
    )
    return CLIPTextModel(config)


def make_unet(cfg: TrainConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    u = cfg.unet
    n = len(u.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=cfg.vae.latent_channels,
        out_channels=cfg.vae.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=u.text_hidden,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=32,
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _images(split: data.Split, indices, resolution: int) -> torch.Tensor:
    """(n, 3, res, res) images in [-1, 1]."""
    arr = np.stack([np.asarray(data.sample(split, int(i), resolution)[0]) for i in indices])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class _Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")

    def __call__(self, **fields):
        self.file.write(json.dumps({"time": round(time.time(), 1), **fields}) + "\n")
        self.file.flush()


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE


def train_vae(cfg: TrainConfig, quiet: bool = False):
    """Reconstruction (MSE + L1) with a tiny KL term, as in latent diffusion's KL-f autoencoders."""
    run = Path(cfg.run_dir)
    ckpt_path = run / "vae.pt"
    torch.manual_seed(cfg.seed)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    log = _Log(run / "train.log")
    rng = np.random.default_rng([cfg.seed, 1, start])
    bar = tqdm(range(start, cfg.vae.steps), desc="vae", disable=quiet, initial=start, total=cfg.vae.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae.steps, cfg.vae.lr, cfg.vae.warmup)
        x = _images("train", rng.integers(0, 2**31, cfg.vae.batch_size), cfg.resolution)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(rec, x)
        loss = mse + cfg.vae.l1_weight * F.l1_loss(rec, x) + cfg.vae.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-12))
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
        if step % cfg.log_every == 0:
            log(stage="vae", step=step, loss=loss.item(), psnr=psnr)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae.steps:
            _save_checkpoint(ckpt_path, {"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    vae.eval().requires_grad_(False)
    # SD's scaling factor: 1 / std of the latents, so the diffusion model sees unit variance.
    with torch.no_grad():
        z = torch.cat([vae.encode(_images("val", range(i, i + 64), cfg.resolution)).latent_dist.mean for i in range(0, 512, 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


# ---------------------------------------------------------------------------------------------
# Stage 2: UNet + text encoder


def _encode_pool(vae, cfg: TrainConfig, quiet: bool):
    """Encode the training pool once: posterior mean and std, and the scenes for captions."""
    n = cfg.unet.latent_pool
    cache = Path(cfg.run_dir) / f"pool_{n}.pt"
    scenes = [data.scene("train", i, cfg.resolution) for i in range(n)]
    if cache.exists():
        means, stds = torch.load(cache)
        return means, stds, scenes
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, 256), desc="encode", disable=quiet):
            d = vae.encode(_images("train", range(i, min(n, i + 256)), cfg.resolution)).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    means, stds = torch.cat(means), torch.cat(stds)
    _save_checkpoint(cache, (means, stds))
    return means, stds, scenes


class _CrossAttentionProbe:
    """Keeps every cross-attention layer's probabilities of one UNet forward pass, with their gradients."""

    rewrites = True  # layers are computed explicitly from the (unchanged) probabilities, so gradients flow

    def __init__(self):
        self.maps: list[torch.Tensor] = []
        self.active = False  # off: every layer keeps its fused processor

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        return is_cross and self.active

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        self.maps.append(probs)  # (batch, heads, pixels, tokens)
        return probs


def word_regions_batch(scenes: list, captions: list[str], resolution: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target regions (batch, tokens, res, res) and a (batch, tokens) selector of the supervised tokens.

    Caption words are one token each in the bundled tokenizer, so word i is token i + 1 (after BOS).
    """
    regions = torch.zeros(len(captions), tokens, resolution, resolution)
    chosen = torch.zeros(len(captions), tokens)
    for b, (s, caption) in enumerate(zip(scenes, captions)):
        for i, mask in data.word_regions(s, caption, resolution).items():
            regions[b, i + 1], chosen[b, i + 1] = torch.from_numpy(mask), 1.0
    return regions, chosen


def localisation_loss(maps: list[torch.Tensor], regions: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Word-localisation loss (as TokenCompose's token loss): (1 − share of a word's attention inside its region)².

    maps: per cross-attention layer (batch, heads, pixels, tokens); regions (batch, tokens, R, R) in [0, 1];
    chosen (batch, tokens). Averaged over the chosen words and the layers.
    """
    total, targets = regions.new_zeros(()), {}
    for probs in maps:
        side = round(probs.shape[2] ** 0.5)
        if side not in targets:  # layers of one resolution share the pooled regions
            targets[side] = F.adaptive_avg_pool2d(regions, side).flatten(2)  # (batch, tokens, pixels)
        target = targets[side]
        a = probs.float().mean(1).transpose(1, 2)  # (batch, tokens, pixels)
        share = (a * target).sum(-1) / a.sum(-1).clamp_min(1e-8)  # (batch, tokens)
        total = total + (((1 - share) ** 2) * chosen).sum() / chosen.sum().clamp_min(1.0)
    return total / max(1, len(maps))


def _unet_lr(step: int, u: UNetConfig) -> float:
    """The UNet schedule, with an optional warm restart (SGDR-style) at `u.restart_at`."""
    restart = 0 < u.restart_at < u.steps
    if restart and step >= u.restart_at:
        return _lr(step - u.restart_at, u.steps - u.restart_at, u.restart_lr, warmup=50)
    return _lr(step, u.restart_at if restart else u.steps, u.lr, u.warmup)


def train_unet(cfg: TrainConfig, vae, tokenizer, quiet: bool = False):
    """Epsilon-prediction loss on VAE latents, text encoder trained jointly, EMA of both."""
    run = Path(cfg.run_dir)
    ckpt_path = run / "unet.pt"
    torch.manual_seed(cfg.seed)
    scale = vae.config.scaling_factor
    means, stds, scenes = _encode_pool(vae, cfg, quiet)
    latent_size = means.shape[-1]
    unet = make_unet(cfg, latent_size)
    text = make_text_encoder(cfg, tokenizer)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet.lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    scheduler = make_scheduler()
    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    log = _Log(run / "train.log")
    rng = np.random.default_rng([cfg.seed, 2, start])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + start)
    bar = tqdm(range(start, cfg.unet.steps), desc="unet", disable=quiet, initial=start, total=cfg.unet.steps)
    ema_pairs = list(zip(list(ema_unet.parameters()) + list(ema_text.parameters()), params))
    probe = _CrossAttentionProbe()
    with controlled(unet, probe):  # cross-attention probabilities, for the localisation loss
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _unet_lr(step, cfg.unet)
            idx = torch.from_numpy(rng.integers(0, len(scenes), cfg.unet.batch_size))
            z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
            captions = [data.training_caption(scenes[i], rng) for i in idx.tolist()]
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=gen)
            zt = scheduler.add_noise(z0, noise, t)
            probe.maps.clear()
            probe.active = bool(cfg.unet.localisation_weight) and step >= cfg.unet.localisation_from
            pred = unet(zt, t, encoder_hidden_states=text(ids)[0]).sample
            mse = F.mse_loss(pred, noise)
            loss, local = mse, torch.zeros(())
            if probe.active:
                regions, chosen = word_regions_batch([scenes[i] for i in idx.tolist()], captions, cfg.resolution, ids.shape[1])
                local = localisation_loss(probe.maps, regions, chosen)
                loss = loss + cfg.unet.localisation_weight * local
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.unet.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in ema_pairs:
                    e.lerp_(p, 1 - decay)
            bar.set_postfix(loss=f"{mse.item():.4f}", local=f"{local.item():.3f}")
            if step % cfg.log_every == 0:
                log(stage="unet", step=step, loss=mse.item(), localisation=local.item(), lr=opt.param_groups[0]["lr"])
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet.steps:
                _save_checkpoint(
                    ckpt_path,
                    {"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.state_dict(),
                     "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "step": step + 1},
                )
    return ema_unet.eval(), ema_text.eval()


def save_pipeline(out_dir: str, vae, unet, text, tokenizer, cfg: TrainConfig) -> None:
    """Write a diffusers StableDiffusionPipeline folder (no safety checker), fp32 safetensors."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_vocab_files(Path(out_dir) / "tokenizer")
    Path(out_dir, "training_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["vae", "unet", "all"], default="all")
    p.add_argument("--run-dir", default=TrainConfig.run_dir)
    p.add_argument("--out", default=str(MODEL_DIR))
    p.add_argument("--vae-steps", type=int, default=VAEConfig.steps)
    p.add_argument("--unet-steps", type=int, default=UNetConfig.steps)
    p.add_argument("--restart-at", type=int, default=UNetConfig.restart_at,
                   help="warm restart of the UNet schedule at this step (0: none)")
    p.add_argument("--restart-lr", type=float, default=UNetConfig.restart_lr)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cfg = TrainConfig(run_dir=a.run_dir, out_dir=a.out)
    cfg.vae.steps, cfg.unet.steps = a.vae_steps, a.unet_steps
    cfg.unet.restart_at, cfg.unet.restart_lr = a.restart_at, a.restart_lr
    tokenizer = build_tokenizer(data.vocabulary_words(), cfg.unet.max_tokens)
    t0 = time.time()
    vae = train_vae(cfg, a.quiet)
    vae_path = Path(cfg.run_dir) / "vae_final"
    vae.save_pretrained(vae_path)
    print(f"vae done in {time.time() - t0:.0f}s, scaling factor {vae.config.scaling_factor:.4f}")
    if a.stage == "vae":
        return
    unet, text = train_unet(cfg, vae, tokenizer, a.quiet)
    save_pipeline(cfg.out_dir, vae, unet, text, tokenizer, cfg)
    data.write_demo_photo(Path(cfg.out_dir).parent / "photo.png")
    print(f"saved to {cfg.out_dir} after {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
