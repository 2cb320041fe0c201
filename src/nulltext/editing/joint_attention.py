"""Prompt-to-Prompt on joint attention (SD 3.x's MMDiT, Esser et al. 2024): the blocks a controller sees.

In an MMDiT block the image tokens and the text tokens attend over one joint sequence: one softmax per
image query over [image keys | text keys]. Prompt-to-Prompt (Hertz et al. 2022) reads and rewrites a
per-token "cross-attention" map and a "self-attention" map; here they are the image-query rows'
blocks, each renormalised over its own keys:

    cross = P[img, text₁…L] / its row sum   (batch, heads, pixels, tokens): the first L text tokens, CLIP's
    self  = P[img, img]     / its row sum   (batch, heads, pixels, pixels)

and a rewritten block goes back at the row's own share of that block, so every row still sums to 1
and the keys the controller does not see (T5's tokens) keep their attention. Text-query rows are
never changed. The controller is the same object the UNet's processors talk to
(`nulltext.editing.attention.AttentionController`), so word swap, refinement, re-weighting, local
blend and the attention maps run unchanged above it.

Memory: the image rows' full matrix is (batch, heads, pixels, pixels + text), 7 GB in fp32 for an edit of
one target at 1024 px on SD 3.x. It is built only when the controller needs the self map. For the cross
map alone, the text block comes from a softmax over key chunks, the rows from fused attention, and an
edit is added to the image rows as (P'_text − P_text)·V_text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(attn, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, attn.heads, head_dim).transpose(1, 2)  # (batch, heads, n, head_dim)


def joint_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """q, k, v over the joint sequence [image | text] (batch, heads, n, head_dim), as JointAttnProcessor2_0 builds them."""
    key = attn.to_k(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    q, k, v = (_heads(attn, x, head_dim) for x in (attn.to_q(hidden_states), key, attn.to_v(hidden_states)))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if encoder_hidden_states is not None:
        eq, ek, ev = (_heads(attn, proj(encoder_hidden_states), head_dim)
                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))  # (batch, heads, text, head_dim)
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
    return q, k, v


def image_rows(q: torch.Tensor, k: torch.Tensor, pixels: int) -> torch.Tensor:
    """The image queries' softmax over all keys, float32: (batch, heads, pixels, pixels + text)."""
    scale = q.shape[-1] ** -0.5
    return (q[:, :, :pixels].float() @ k.float().transpose(-1, -2) * scale).softmax(-1)


def text_rows(q: torch.Tensor, k: torch.Tensor, pixels: int, tokens: int, budget: int = 2 ** 28) -> torch.Tensor:
    """The image queries' softmax over all keys, restricted to the first `tokens` text keys, float32:
    (batch, heads, pixels, tokens), computed `budget` bytes of scores at a time."""
    scale = q.shape[-1] ** -0.5
    keys = k.float().transpose(-1, -2)  # (batch, heads, head_dim, keys)
    rows = max(1, budget // (4 * q.shape[0] * q.shape[1] * k.shape[2]))
    out = []
    for start in range(0, pixels, rows):
        scores = q[:, :, start : min(pixels, start + rows)].float() @ keys * scale  # (batch, heads, rows, keys)
        out.append((scores[..., pixels : pixels + tokens] - scores.logsumexp(-1, keepdim=True)).exp())
    return torch.cat(out, 2)


def _show(controller, layer: str, is_cross: bool, block: torch.Tensor, rewrite: bool) -> torch.Tensor:
    """One block renormalised per row, shown to the controller; the (edited) block at the row's own share."""
    share = block.sum(-1, keepdim=True)  # (batch, heads, pixels, 1)
    seen = controller(layer, is_cross, block / share.clamp_min(1e-30))
    return seen.float() * share if rewrite else block


def _shown_tokens(keys: int, pixels: int, text_tokens: int | None) -> int:
    """How many leading text keys the cross map shows: `text_tokens` (CLIP's), or every text key."""
    return keys - pixels if text_tokens is None else min(text_tokens, keys - pixels)


def controlled_blocks(controller, layer: str, probs: torch.Tensor, pixels: int, tokens: int, cross: bool,
                      rewrite: bool) -> torch.Tensor:
    """The image rows (batch, heads, pixels, keys) after the controller saw (and, rewriting, edited) its self
    block and, if `cross`, its first `tokens` text keys."""
    own, text, rest = probs[..., :pixels], probs[..., pixels : pixels + tokens], probs[..., pixels + tokens :]
    if cross:
        text = _show(controller, layer, True, text, rewrite)  # (batch, heads, pixels, tokens)
    own = _show(controller, layer, False, own, rewrite)  # (batch, heads, pixels, pixels)
    return torch.cat([own, text, rest], -1)


def controlled_joint_attention(attn, original, controller, layer: str, text_tokens: int | None,
                               hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                               attention_mask=None, **kwargs):
    """One joint-attention layer through the controller: the original processor when the controller does
    not need this layer; else attention from this layer's own q, k, v with the image rows the controller
    saw (and, rewriting, edited)."""
    pixels, has_text = hidden_states.shape[1], encoder_hidden_states is not None
    wants_cross, wants_self = has_text and controller.wants(layer, True, pixels), controller.wants(layer, False, pixels)
    if not wants_cross and not wants_self:
        return original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
    q, k, v = joint_qkv(attn, hidden_states, encoder_hidden_states)
    tokens = _shown_tokens(k.shape[2], pixels, text_tokens)
    if not wants_self:  # the cross map alone: no (pixels × pixels) matrix
        text = text_rows(q, k, pixels, tokens)  # (batch, heads, pixels, tokens)
        edited = _show(controller, layer, True, text, controller.rewrites)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)  # (batch, heads, n, head_dim)
        if controller.rewrites:  # the image rows plus (P'_text − P_text)·V_text
            delta = (edited - text).to(v.dtype) @ v[:, :, pixels : pixels + tokens]  # (batch, heads, pixels, head_dim)
            out = torch.cat([out[:, :, :pixels] + delta, out[:, :, pixels:]], 2)
        return _project(attn, out, pixels, has_text)
    probs = controlled_blocks(controller, layer, image_rows(q, k, pixels), pixels, tokens, wants_cross,
                              controller.rewrites)
    if not controller.rewrites:
        return _project(attn, F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False), pixels, has_text)
    out = (probs.to(v.dtype) @ v,)  # image rows: (batch, heads, pixels, head_dim)
    if has_text:  # text rows as the original computes them
        out += (F.scaled_dot_product_attention(q[:, :, pixels:], k, v, dropout_p=0.0, is_causal=False),)
    return _project(attn, torch.cat(out, 2), pixels, has_text)


def _project(attn, out: torch.Tensor, pixels: int, has_text: bool):
    """The layer's output from its attention rows (batch, heads, pixels + text, head_dim), projected as
    JointAttnProcessor2_0 projects them: the image rows through to_out, the text rows through to_add_out."""
    batch, heads, n, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, n, heads * head_dim)  # (batch, pixels + text, channels)
    image, text = out[:, :pixels], out[:, pixels:]
    image = attn.to_out[1](attn.to_out[0](image))
    if not has_text:
        return image
    if not attn.context_pre_only:
        text = attn.to_add_out(text)
    return image, text
