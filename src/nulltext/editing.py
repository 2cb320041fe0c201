"""Sampling from an inversion: reconstruction, Prompt-to-Prompt edits, attention maps.

Guided DDIM from z*_T with the optimised ∅_t as the unconditional embedding of step t (the paper's
sec. 3.3: "we use the optimised unconditional embeddings ∅_T … ∅_1 with the target prompt P*").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from nulltext.attention import controlled, to_latent_grid
from nulltext.ddim import Schedule, ddim_step, guided
from nulltext.inversion import Inversion
from nulltext.inversion_file import check_model
from nulltext.model import Model
from nulltext.prompt_to_prompt import EditConfig, PromptToPrompt

StepCallback = Callable[[int, int], None]  # (steps done, total)


def sample(model: Model, latent_T: torch.Tensor, cond: torch.Tensor, nulls: torch.Tensor, schedule: Schedule,
           guidance_scale: float, callback: StepCallback | None = None,
           corrections: torch.Tensor | None = None) -> torch.Tensor:
    """Guided DDIM (eq. 12, η = 0) from z_T (1 or B, C, h, w) with ∅_t at step t.

    cond is (B, tokens, dim), or (T, B, tokens, dim) for a caption embedding per step; nulls (T, tokens, dim).
    """
    B, T = cond.shape[-3], schedule.num_steps
    z = latent_T.to(model.device).float().expand(B, -1, -1, -1)
    for k, i in enumerate(range(T, 0, -1)):
        null = nulls[i - 1 : i].to(model.device).expand(B, -1, -1)
        c = cond if cond.ndim == 3 else cond[i - 1].to(model.device)
        out = model.predict(torch.cat([z, z]), schedule.timestep(i), torch.cat([null, c]))
        uncond_out, cond_out = out.chunk(2)
        z = ddim_step(guided(uncond_out, cond_out, guidance_scale), z, i, schedule)
        if corrections is not None:  # direct inversion: back onto the pivot
            z = z + corrections[i - 1 : i].to(z)
        if callback is not None:
            callback(k + 1, T)
    return z


@torch.no_grad()
def reconstruct(model: Model, inversion: Inversion, callback: StepCallback | None = None) -> torch.Tensor:
    """The inversion's guided reconstruction, an image (1, 3, H, W) in [-1, 1]."""
    check_model(inversion, model)
    cond = model.encode_text([inversion.prompt])
    z0 = sample(model, inversion.latent_T, cond, inversion.null_embeddings, inversion.schedule(),
                inversion.config.guidance_scale, callback, inversion.corrections)
    return model.decode_latents(z0).cpu()


@dataclass
class EditResult:
    """Source reconstruction first, then one image per target prompt."""

    prompts: list[str]
    images: torch.Tensor  # (1+n, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # (1+n, C, h, w)
    masks: torch.Tensor | None  # (n, h, w) final local-blend masks, if blending


@torch.no_grad()
def edit(model: Model, inversion: Inversion, targets: list[str], config: EditConfig | None = None,
         callback: StepCallback | None = None) -> EditResult:
    """Prompt-to-Prompt edits of an inversion; row 0 equals `reconstruct()` exactly."""
    check_model(inversion, model)
    config = config or EditConfig()
    if not targets:
        raise ValueError("no target prompt given — pass at least one edited caption")
    for p in targets:
        model.check_prompt(p)
    schedule, w = inversion.schedule(), inversion.config.guidance_scale
    T, n = schedule.num_steps, len(targets)
    cond_source, cond_targets = model.encode_text([inversion.prompt]), model.encode_text(targets)
    z_source = inversion.latent_T.to(model.device).float()
    z_targets = z_source.expand(n, -1, -1, -1)
    controller = PromptToPrompt(model.tokenizer, inversion.prompt, targets, config, T, tuple(z_source.shape[-2:]))
    with controlled(model.unet, controller):
        for k, i in enumerate(range(T, 0, -1)):
            tau, null = schedule.timestep(i), inversion.null_embeddings[i - 1 : i].to(model.device)
            # 1. the source pass, exactly as in reconstruct(); its attention is recorded
            controller.begin(k, "source")
            out = model.predict(torch.cat([z_source, z_source]), tau, torch.cat([null, cond_source]))
            z_source_next = ddim_step(guided(*out.chunk(2), w), z_source, i, schedule)
            if inversion.corrections is not None:  # direct inversion corrects the source branch only
                z_source_next = z_source_next + inversion.corrections[i - 1 : i].to(z_source_next)
            # 2. the targets' pass with rewritten attention
            controller.begin(k, "target")
            nulls = null.expand(n, -1, -1)
            out = model.predict(torch.cat([z_targets, z_targets]), tau, torch.cat([nulls, cond_targets]))
            z_targets_next = ddim_step(guided(*out.chunk(2), w), z_targets, i, schedule)
            # 3. local blend: outside the edited region, keep the source
            z_source, z_targets = z_source_next, controller.blend(z_source_next, z_targets_next)
            if callback is not None:
                callback(k + 1, T)
    latents = torch.cat([z_source, z_targets])
    images = model.decode_latents(latents).cpu()
    masks = controller.blend_masks()
    return EditResult([inversion.prompt, *targets], images, latents.cpu(), None if masks is None else masks.cpu())


class _CrossAttentionRecorder:
    """A controller that sums the conditional cross-attention per token over layers and steps."""

    rewrites = False

    def __init__(self, latent_hw: tuple[int, int]):
        self.latent_hw = latent_hw
        self.total: torch.Tensor | None = None  # (tokens, h, w)

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        return is_cross

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        cond = probs[probs.shape[0] // 2 :][:1].float().mean(1)  # (1, pixels, tokens)
        maps = to_latent_grid(cond, self.latent_hw)[0]  # (tokens, h, w)
        self.total = maps if self.total is None else self.total + maps
        return probs


@torch.no_grad()
def attention_maps(model: Model, inversion: Inversion, callback: StepCallback | None = None
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Average cross-attention per prompt token over steps and layers during the reconstruction.

    Returns (token strings, maps (tokens, h, w) each scaled to [0, 1], reconstruction (1,3,H,W)).
    BOS and padding are left out; EOS is kept.
    """
    recorder = _CrossAttentionRecorder(tuple(inversion.latent_T.shape[-2:]))
    with controlled(model.unet, recorder):
        image = reconstruct(model, inversion, callback)
    ids = model.tokenizer(inversion.prompt).input_ids  # BOS … EOS
    tokens = [t.replace("</w>", "") for t in model.tokenizer.convert_ids_to_tokens(ids)][1:]
    maps = recorder.total[1 : len(ids)]
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return tokens, maps.cpu(), image
