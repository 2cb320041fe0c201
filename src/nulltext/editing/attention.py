"""Attention processors that record or rewrite attention probabilities (diffusers' processor API).

`controlled(unet, controller)` installs one `ControlledAttnProcessor` per attention layer with
`unet.set_attn_processor` and restores the original processors afterwards, also on error. A
processor asks its controller, per call, whether it needs the probabilities of this layer:

- if not, the layer runs its original (fused) processor untouched;
- if it only wants to *see* them (`controller.rewrites` is False), the probabilities are computed on
  the side and the layer's output still comes from the original processor, bit for bit;
- if it rewrites them, the layer is computed explicitly from the rewritten probabilities.

Probabilities are handed over as (batch, heads, pixels, tokens) — tokens = pixels for self-attention.
SD 3.x's joint attention (one softmax over image and text keys) shows the controller its image-query
blocks as the same two kinds of map (`nulltext.editing.joint_attention`). The controller is an
explicit object; nothing is stored on the denoiser or in globals.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F

from nulltext.editing.joint_attention import controlled_joint_attention


class AttentionController(Protocol):
    rewrites: bool  # True while the current pass edits probabilities

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        """Whether this layer's probabilities are needed in the current pass."""

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        """See (and, when rewriting, return edited) probabilities (batch, heads, pixels, tokens)."""


class ControlledAttnProcessor:
    """One layer's processor: original fast path, or explicit probabilities shown to the controller."""

    def __init__(self, layer: str, original, controller: AttentionController, text_tokens: int | None = None):
        self.layer, self.original, self.controller, self.text_tokens = layer, original, controller, text_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if "Joint" in type(self.original).__name__:  # SD 3.x: image and text tokens in one softmax
            return controlled_joint_attention(attn, self.original, self.controller, self.layer, self.text_tokens,
                                              hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        is_cross = encoder_hidden_states is not None
        pixels = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if temb is not None:  # only processors that take it are handed it (SlicedAttnProcessor does not)
            kwargs["temb"] = temb
        if not self.controller.wants(self.layer, is_cross, pixels):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if not self.controller.rewrites:
            probs = attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            self.controller(self.layer, is_cross, probs)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        return explicit_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                  lambda p: self.controller(self.layer, is_cross, p))


def _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
    """Steps shared by both paths: norms, q/k/v, and the raw scores' softmax; (batch, heads, pixels, tokens)."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
    if shape4 is not None:
        b, c, h, w = shape4
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (batch, pixels, channels)
    batch, seq = hidden_states.shape[0], (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))  # (batch*heads, n, head_dim)
    probs = attn.get_attention_scores(query, key, attention_mask)  # (batch*heads, pixels, tokens)
    probs = probs.view(batch, attn.heads, *probs.shape[1:])  # (batch, heads, pixels, tokens)
    return probs, value, residual, shape4


def attention_probs(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None) -> torch.Tensor:
    """The layer's attention probabilities (batch, heads, pixels, tokens), computed on the side."""
    return _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)[0]


def explicit_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, edit) -> torch.Tensor:
    """The attention layer computed from probabilities passed through `edit` (diffusers' AttnProcessor math)."""
    probs, value, residual, shape4 = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
    probs = edit(probs).to(value.dtype)
    batch = probs.shape[0]
    probs = probs.reshape(batch * attn.heads, *probs.shape[2:])  # (batch*heads, pixels, tokens)
    out = attn.batch_to_head_dim(torch.bmm(probs, value))  # (batch, pixels, channels)
    out = attn.to_out[1](attn.to_out[0](out))
    if shape4 is not None:
        out = out.transpose(-1, -2).reshape(shape4)  # (batch, channels, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def to_latent_grid(maps: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Per-pixel maps (batch, pixels, k) of any layer, resized to the latent grid: (batch, k, h, w)."""
    h, w = latent_hw
    scale = round((h * w / maps.shape[1]) ** 0.5)  # the layer's downsampling factor
    grid = maps.transpose(1, 2).reshape(maps.shape[0], maps.shape[2], h // scale, w // scale)  # (batch, k, map_h, map_w)
    return F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False)  # (batch, k, h, w)


@contextlib.contextmanager
def controlled(denoiser, controller: AttentionController, text_tokens: int | None = None):
    """Route every attention layer of `denoiser` (a UNet or an MMDiT) through `controller`; restore the
    originals on exit. `text_tokens`: how many leading text tokens a joint layer's cross map shows (the
    caption's tokenizer length); None shows all."""
    originals = dict(denoiser.attn_processors)
    denoiser.set_attn_processor({name: ControlledAttnProcessor(name, proc, controller, text_tokens)
                                 for name, proc in originals.items()})
    try:
        yield denoiser
    finally:
        denoiser.set_attn_processor(originals)
