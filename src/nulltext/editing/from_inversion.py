"""Sampling from an inversion: reconstruction, Prompt-to-Prompt edits, attention maps.

Guided DDIM from z*_T with the optimised ∅_t as the unconditional embedding of step t (the paper's
sec. 3.3: "we use the optimised unconditional embeddings ∅_T … ∅_1 with the target prompt P*"). Edits
differ from the paper by default: rows with another caption than the source's get ψ("")
(`EditConfig.target_null`; README, "Which defaults differ from the authors'").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from nulltext.editing.attention import controlled, to_latent_grid
from nulltext.editing.composite import composite, composite_weights
from nulltext.core.conditioning import TextConditioning
from nulltext.core.ddim import sample
from nulltext.inversion.null_text import Inversion
from nulltext.inversion.file import check_model
from nulltext.model import Model
from nulltext.editing.prompt_to_prompt import LocalBlend, PromptToPrompt, latent_mask, plan_edit, weak_blend_words
from nulltext.editing.config import EditConfig
from nulltext.core.sampling import guided_ddim, guided_prediction
from nulltext.progress import Progress

@torch.no_grad()
def reconstruct(model: Model, inversion: Inversion, callback: Progress | None = None,
                one_batch: bool | None = None) -> torch.Tensor:
    """The inversion's guided reconstruction, an image (1, 3, H, W) in [-1, 1] (`one_batch`: see `guided_prediction`)."""
    check_model(inversion, model)
    cond = model.text_conditioning([inversion.prompt])
    z0 = guided_ddim(model, inversion.latent_T, cond, inversion.nulls, inversion.schedule(),
                     inversion.config.guidance_scale, callback, inversion.corrections, one_batch)
    return model.decode_latents(z0).cpu()


def token_maps(tokenizer, prompt: str, total: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """A caption's tokens (BOS and padding left out, EOS kept) and their summed attention `total`
    (all tokens, h, w) scaled to [0, 1] per token."""
    ids = tokenizer(prompt).input_ids  # BOS … EOS
    tokens = [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)][1:]
    maps = total[1 : len(ids)]
    return tokens, maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


@dataclass
class EditResult:
    """Source reconstruction first, then one image per target prompt."""

    prompts: list[str]
    images: torch.Tensor  # (1+n, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # (1+n, C, h, w)
    masks: torch.Tensor | None  # (n, h, w) final local-blend masks, if blending
    weights: torch.Tensor | None = None  # (n, 1, H, W) in [0, 1]: each edit over the photo, if composited
    warnings: list[str] = field(default_factory=list)  # one line each: blend words with almost no attention
    attention: torch.Tensor | None = None  # (1+n, tokens, h, w) each row's cross-attention per token, if recorded

    def attention_maps(self, row: int, tokenizer) -> tuple[list[str], torch.Tensor]:
        """Row `row`'s caption tokens (BOS and padding left out, EOS kept) and their maps (tokens, h, w) in [0, 1]."""
        return token_maps(tokenizer, self.prompts[row], self.attention[row])

    def shown_masks(self) -> torch.Tensor | None:
        """(n, h, w) per edit: where it may differ from the photo (compositing weights, else the blend masks)."""
        return self.weights[:, 0] if self.weights is not None else None if self.masks is None else self.masks.float()


@torch.no_grad()
def edit(model: Model, inversion: Inversion, targets: list[str], config: EditConfig | None = None,
         callback: Progress | None = None, record_attention: bool = False) -> EditResult:
    """Prompt-to-Prompt edits of an inversion: the source and the targets sampled as one batch.

    Row 0 is the source's reconstruction (equal to `reconstruct()` up to float rounding: its attention
    layers run the explicit path where the edit needs them). `record_attention`: keep every row's
    cross-attention per token (`EditResult.attention_maps`), at the cost of the explicit path everywhere.
    """
    check_model(inversion, model)
    config = config or EditConfig()
    if not targets:
        raise ValueError("no target prompt given — pass at least one edited caption")
    for p in targets:
        model.check_prompt(p)
    schedule, T, n = inversion.schedule(), inversion.num_steps, len(targets)
    latent_hw = tuple(inversion.latent_T.shape[-2:])
    plan = plan_edit(model.tokenizer, inversion.prompt, targets, config, T, latent_hw)
    user_mask = None if config.blend_mask is None else latent_mask(config.blend_mask, latent_hw)
    blend = LocalBlend(plan.blend_tokens, plan.subtract_tokens, latent_hw, config, T, user_mask)
    controller = PromptToPrompt(plan, blend, record_attention)
    cond = model.text_conditioning([inversion.prompt, *targets])  # (1+n, tokens, dim)
    nulls = inversion.nulls  # (T, tokens, dim): ∅_t for every row
    if config.target_null == "empty" and any(p != inversion.prompt for p in targets):
        # ψ("") on the rows with another caption; ∅_t, fitted to the source caption, on the rest (the source
        # row, re-weightings of the source caption): (T, 1+n, tokens, dim)
        own, empty = nulls.float().map(lambda x: x[:, None]), model.null_conditioning().float().to("cpu")
        rows = [own] + [own if p == inversion.prompt else empty.map(lambda x: x[None].expand(T, 1, *x.shape[1:]))
                        for p in targets]
        nulls = functools.reduce(TextConditioning.join_rows, rows)
    guided = guided_prediction(model, cond, nulls, inversion.config.guidance_scale, schedule, one_batch=True)

    def predict(z: torch.Tensor, i: int) -> torch.Tensor:
        controller.step = T - i  # sampling step 0 … T−1
        return guided(z, i)

    def correct(i: int, z: torch.Tensor) -> torch.Tensor:
        if inversion.corrections is not None:  # direct inversion corrects the source row only
            z = torch.cat([z[:1] + inversion.corrections[i - 1 : i].to(z), z[1:]])
        blended = blend.apply(T - i, z)  # local blend: outside the edited region, keep the source
        return z if blended is None else blended

    z_T = inversion.latent_T.to(model.device).float().expand(1 + n, -1, -1, -1)
    with controlled(model.unet, controller, model.max_tokens):
        latents = sample(predict, z_T, schedule, correct, callback)
    images = model.decode_latents(latents).cpu()
    masks = blend.masks()
    masks = None if masks is None else masks.expand(n, -1, -1)  # (n, h, w)
    weights = None
    if masks is not None and config.composite != "off":  # the photo back where the edit moved nothing or far from the mask
        photo = images[:1] if inversion.photo is None else \
            (inversion.photo.permute(2, 0, 1)[None].float() / 127.5 - 1.0)  # (1, 3, H, W) in [-1, 1]
        weights = composite_weights(images[1:].float(), images[:1].float(), config, masks)
        images = torch.cat([images[:1], composite(images[1:].float(), photo, weights).to(images.dtype)])
    return EditResult([inversion.prompt, *targets], images, latents.cpu(),
                      None if masks is None else masks.cpu(), weights,
                      weak_blend_words(model.tokenizer, inversion.prompt, config.blend_words, blend.source_maps),
                      None if controller.attention is None else controller.attention.cpu())


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
def attention_maps(model: Model, inversion: Inversion, callback: Progress | None = None
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Average cross-attention per prompt token over steps and layers during the reconstruction.

    Returns (token strings, maps (tokens, h, w) each scaled to [0, 1], reconstruction (1,3,H,W)).
    BOS and padding are left out; EOS is kept.
    """
    recorder = _CrossAttentionRecorder(tuple(inversion.latent_T.shape[-2:]))
    with controlled(model.unet, recorder, model.max_tokens):
        image = reconstruct(model, inversion, callback, one_batch=True)  # the recorder reads the conditional half
    tokens, maps = token_maps(model.tokenizer, inversion.prompt, recorder.total)
    return tokens, maps.cpu(), image
