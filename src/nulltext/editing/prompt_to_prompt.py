"""Prompt-to-Prompt edit control (Hertz et al. 2022, arXiv 2208.01626), in three parts.

1. `EditPlan` (pure data, `plan_edit`): what the edit does to each target's attention at each step —
   compiled once from the prompts, the tokenizer and `EditConfig`:
   - cross-attention (sec. 3.2): word swap takes the source maps through a token mapper M,
     M*_t = M_t · M ("Replace"); refinement takes the aligned source maps and keeps the target's own
     maps for new tokens; re-weighting scales chosen words' maps (negative and zero allowed). This
     happens for the steps in `cross_replace` (a fraction from the start, or a (start, end) range),
     with per-word overrides; outside it the target's own maps are used.
   - self-attention: target maps are replaced by the source's for the steps in `self_replace` (over the
     last `self_fade` of the steps, by a linear mix whose source share falls to nothing), on layers with
     at most 1/16 of the latent's pixels (the authors' 16×16 of SD's 64×64) or 16×16.
2. `LocalBlend` (sec. 3.2, "Local editing"): a mask from the cumulative cross-attention of the blend
   words (source ∪ target), dilated and thresholded, optionally combined with a user-drawn mask;
   outside it the target latent is reset to the source latent after each step from `blend_start` on.
3. `PromptToPrompt`: the thin attention controller (see `nulltext.editing.attention`) that applies the plan
   at the current step and feeds the local blend. The source and the targets run as one UNet batch,
   (uncond: source, targets…, cond: source, targets…), so no call order is assumed.

Defaults are the authors' published settings — cross 0.8, blend threshold 0.3 from 0.2, and their
dilation of 1/16 of the side — but for two. Self-attention is replaced in full for 50 % of the steps and
fades out by 90 %, where the authors switch it off at 40 %, which keeps the edited object's outline
(`EditConfig.self_replace`, `self_fade`). The dilation is never under 3 latent pixels, so that on small
latents (the bundled model's 16×16) the mask's edge stays clear of a new shape's corners. After decoding,
the photo is put back wherever the edit moved no pixel and beyond a margin around the mask
(`nulltext.editing.composite`). Where nulltext differs from the authors' local blend: it pools the
blend words' cross-attention of every layer, each resized to the
latent grid, where the authors pool only the 16×16 layers of SD at 512 px (1/4 of the latent side);
on the bundled model's 16×16 latent those would be 4×4 maps, too coarse to outline a shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from nulltext.editing.attention import to_latent_grid
from nulltext.editing.config import EditConfig, resolve_mode, self_weights, step_window
from nulltext.settings import SettingsError
from nulltext.editing.token_alignment import (
    PromptMismatchError,
    refine_alignment,
    replace_mapper,
    reweight_vector,
    word_token_indices,
)

def _has_word(prompt: str, word: str, tokenizer) -> bool:
    try:
        word_token_indices(prompt, word, tokenizer)
        return True
    except PromptMismatchError:
        return False


# ---------------------------------------------------------------------------------------------
# 1. The edit plan


@dataclass(frozen=True)
class TargetEdit:
    """How one target's cross-attention is built from the source's."""

    mode: Literal["replace", "refine"]
    mapper: torch.Tensor  # replace: (L, L) M with target = source · M; refine: (L,) source index per target token
    alphas: torch.Tensor | None  # refine: (L,) 1 where the token is aligned to the source, else 0
    equalizer: torch.Tensor | None  # (L,) re-weighting scales, or None


@dataclass(frozen=True)
class EditPlan:
    """Everything an edit does at each step, compiled once; no state."""

    targets: list[TargetEdit]
    cross_alpha: torch.Tensor  # (T, n, L): 1 where target j's token takes the source's map at step k
    self_weight: list[float]  # per sampling step: the share of the source's self-attention in the targets'
    self_max_pixels: int  # self-attention injected on layers with at most this many pixels
    blend_tokens: torch.Tensor | None  # (1+n, L) selectors of the blend words in source and targets
    subtract_tokens: torch.Tensor | None  # (1+n, L) selectors of the subtract words
    num_steps: int

    def cross_active(self, step: int) -> bool:
        return bool(self.cross_alpha[step].any()) or any(t.equalizer is not None for t in self.targets)

    def self_active(self, step: int, pixels: int) -> bool:
        return self.self_weight[step] > 0 and pixels <= self.self_max_pixels


def plan_edit(tokenizer, source: str, targets: list[str], config: EditConfig, num_steps: int,
              latent_hw: tuple[int, int]) -> EditPlan:
    """Compile the edit of `source` into each of `targets` (token mappers, schedules, selectors)."""
    L = tokenizer.model_max_length
    for word in config.reweight:
        if not any(_has_word(t, word, tokenizer) for t in targets):
            raise PromptMismatchError(f"reweight word {word!r} is in no target prompt — pick a word of the target")
    edits = []
    for target in targets:
        scales = {w: v for w, v in config.reweight.items() if _has_word(target, w, tokenizer)}
        equalizer = reweight_vector(target, scales, tokenizer) if config.reweight else None
        if resolve_mode(source, target, config.mode) == "replace":
            edits.append(TargetEdit("replace", replace_mapper(source, target, tokenizer), None, equalizer))
        else:
            mapper, alphas = refine_alignment(source, target, tokenizer)
            edits.append(TargetEdit("refine", mapper, alphas, equalizer))
    self_max_pixels = max(config.self_min_pixels, int(latent_hw[0] * latent_hw[1] * config.self_max_fraction))
    return EditPlan(
        targets=edits, cross_alpha=_cross_schedule(tokenizer, targets, config, num_steps, L),
        self_weight=self_weights(config, num_steps), self_max_pixels=self_max_pixels,
        blend_tokens=_word_selectors(tokenizer, [source, *targets], config.blend_words, "blend"),
        subtract_tokens=_word_selectors(tokenizer, [source, *targets], config.blend_subtract, "subtract"),
        num_steps=num_steps,
    )


def _cross_schedule(tokenizer, targets: list[str], config: EditConfig, T: int, L: int) -> torch.Tensor:
    """(T, n, L): the global cross-replacement window, with per-word windows where given."""
    alpha = torch.zeros(T, len(targets), L)  # (steps, targets, tokens)
    first, end = step_window(config.cross_replace, T)
    alpha[first:end] = 1.0
    for word, window in config.word_cross_replace.items():
        w_first, w_end = step_window(window, T)
        if not any(_has_word(t, word, tokenizer) for t in targets):
            raise PromptMismatchError(f"cross-replacement word {word!r} is in no target prompt — pick a target word")
        for j, target in enumerate(targets):
            if _has_word(target, word, tokenizer):
                idx = word_token_indices(target, word, tokenizer)
                alpha[:, j, idx] = 0.0
                alpha[w_first:w_end, j, idx] = 1.0
    return alpha


def _word_selectors(tokenizer, prompts: list[str], words: list[str], role: str) -> torch.Tensor | None:
    """(prompts, L) selectors of the given words' tokens in each prompt (None if no words)."""
    if not words:
        return None
    selectors = torch.zeros(len(prompts), tokenizer.model_max_length)  # (prompts, tokens)
    for word in words:
        found = [j for j, p in enumerate(prompts) if _has_word(p, word, tokenizer)]
        if not found:
            raise PromptMismatchError(f"{role} word {word!r} is in neither the source nor a target prompt — "
                                      "pick a word of one of the prompts")
        for j in found:
            selectors[j, word_token_indices(prompts[j], word, tokenizer)] = 1.0
    return selectors


def edit_cross_attention(plan: EditPlan, step: int, source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The targets' cross-attention (n, heads, pixels, tokens) at `step`, from the source's (heads, pixels, tokens)."""
    out = []
    for j, edit in enumerate(plan.targets):
        if edit.mode == "replace":
            base = torch.einsum("hpw,wn->hpn", source, edit.mapper.to(source))  # (heads, pixels, tokens)
        else:
            alphas = edit.alphas.to(source)
            base = source[..., edit.mapper.to(source.device)] * alphas + targets[j] * (1 - alphas)
        if edit.equalizer is not None:
            base = base * edit.equalizer.to(source)
        a = plan.cross_alpha[step, j].to(source)  # (tokens,)
        out.append(base * a + targets[j] * (1 - a))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# 2. Local blend


@dataclass
class LocalBlend:
    """Cumulative blend-word attention at latent resolution, and the masks it gives."""

    blend_tokens: torch.Tensor | None  # (1+n, L)
    subtract_tokens: torch.Tensor | None  # (1+n, L)
    latent_hw: tuple[int, int]
    config: EditConfig
    num_steps: int
    user_mask: torch.Tensor | None = None  # (h, w) bool at latent size
    blend_sum: torch.Tensor | None = None  # (1+n, h, w)
    subtract_sum: torch.Tensor | None = None  # (1+n, h, w)
    source_maps: torch.Tensor | None = None  # (L, h, w) the source row's attention per token, summed over layers and steps

    @property
    def active(self) -> bool:
        return self.blend_tokens is not None or self.user_mask is not None

    def accumulate(self, maps: torch.Tensor) -> None:
        """Add one layer's conditional cross-attention (1+n, heads, pixels, tokens) to the running sums."""
        if self.blend_tokens is None:
            return
        per_pixel = maps.float().mean(1)  # (1+n, pixels, tokens)
        maps = to_latent_grid(per_pixel[:1], self.latent_hw)[0]  # (tokens, h, w): the source row's
        self.source_maps = maps if self.source_maps is None else self.source_maps + maps
        self.blend_sum = self._add(self.blend_sum, per_pixel, self.blend_tokens)
        if self.subtract_tokens is not None:
            self.subtract_sum = self._add(self.subtract_sum, per_pixel, self.subtract_tokens)

    def _add(self, total: torch.Tensor | None, per_pixel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        selected = (per_pixel * tokens[:, None, :].to(per_pixel)).sum(-1, keepdim=True)  # (1+n, pixels, 1)
        grid = to_latent_grid(selected, self.latent_hw)[:, 0]  # (1+n, h, w)
        return grid if total is None else total + grid

    def _threshold(self, sums: torch.Tensor) -> torch.Tensor:
        """Dilated, max-normalised, thresholded masks (1+n, h, w) of cumulative attention sums."""
        r = max(self.config.blend_min_radius, round(self.config.blend_dilation * max(self.latent_hw)))
        m = F.max_pool2d(sums[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]  # (prompts, h, w)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return m > self.config.blend_threshold

    def masks(self) -> torch.Tensor | None:
        """(n, h, w) bool: where each target may differ from the source."""
        words = None
        if self.blend_sum is not None:
            m = self._threshold(self.blend_sum)
            words = m[1:] | m[:1]  # source ∪ target words
            if self.subtract_sum is not None:
                s = self._threshold(self.subtract_sum)
                words = words & ~(s[1:] | s[:1])
        if self.user_mask is None:
            return words
        user = self.user_mask.to(torch.bool)[None]  # (1, h, w)
        if words is None:
            return user
        user = user.to(words.device)
        return words | user if self.config.blend_mask_combine == "union" else words & user

    def apply(self, step: int, z: torch.Tensor) -> torch.Tensor | None:
        """z (1+n, C, h, w) after sampling step `step` (0-based): targets kept as the source outside the mask."""
        if not self.active or step < round(self.config.blend_start * self.num_steps):
            return None
        masks = self.masks()
        if masks is None:
            return None
        mask = masks[:, None].to(z)  # (n or 1, 1, h, w)
        source, targets = z[:1], z[1:]
        return torch.cat([source, source + mask * (targets - source)])


def weak_blend_words(tokenizer, source: str, words: list[str], source_maps: torch.Tensor | None,
                     weak: float = 0.5) -> list[str]:
    """One warning line per blend word of the source caption that leads the caption's attention nowhere:
    at no pixel does it draw `weak` of an even share of the attention the caption's words (BOS and EOS
    left out) get there. A word that names a region leads inside it, however small the region; a word
    attended to nowhere gives local blend an empty region, so the edit can hardly change anything."""
    if source_maps is None:
        return []
    n = len(tokenizer(source).input_ids) - 2  # the caption's word tokens, between BOS and EOS
    share = source_maps[1 : n + 1] / source_maps[1 : n + 1].sum(0).clamp_min(1e-12)  # (n, h, w) per pixel
    out = []
    for word in words:
        if not _has_word(source, word, tokenizer):
            continue  # a target's word: it has no attention in the source to measure
        index = [i - 1 for i in word_token_indices(source, word, tokenizer)]
        peak = float(share[index].sum(0).amax())
        if peak < weak * len(index) / n:
            out.append(f"blend word {word!r} draws at most {peak:.0%} of the source caption's attention at any pixel "
                       f"(an even share is {len(index) / n:.0%}): its region is nearly empty — blend a word that "
                       "names the region to edit")
    return out


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A user mask (H, W) at image or latent size → (h, w) bool: a latent pixel is in if any of its image pixels is."""
    h, w = latent_hw
    if mask.shape[-2] % h or mask.shape[-1] % w or mask.shape[-2] // h != mask.shape[-1] // w:
        raise SettingsError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} pixels, the photo's latent is {w}x{h} — "
                         "draw the mask at the photo's size")
    f = mask.shape[-2] // h
    return F.max_pool2d(mask.float()[None, None], f, stride=f)[0, 0] > 0.5  # (h, w)


# ---------------------------------------------------------------------------------------------
# 3. The attention controller


class PromptToPrompt:
    """The attention controller of one edit run: applies the plan at `step`, feeds the local blend.

    Probabilities arrive as one batch (2(1+n), heads, pixels, tokens): unconditional rows first, then
    the conditional rows of the source and the n targets. Only the targets' conditional rows change.
    """

    rewrites = True

    def __init__(self, plan: EditPlan, blend: LocalBlend, record: bool = False):
        self.plan, self.blend, self.step, self.record = plan, blend, 0, record
        self.attention: torch.Tensor | None = None  # (1+n, tokens, h, w) summed cross-attention, if recording

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        if is_cross:
            return self.record or self.plan.cross_active(self.step) or self.blend.blend_tokens is not None
        return self.plan.self_active(self.step, pixels)

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        half = probs.shape[0] // 2
        uncond, cond = probs[:half], probs[half:]  # (1+n, heads, pixels, tokens) each
        source, targets = cond[0], cond[1:]  # (heads, pixels, tokens), (n, heads, pixels, tokens)
        if is_cross:
            if self.plan.cross_active(self.step):
                targets = edit_cross_attention(self.plan, self.step, source, targets)
            self.blend.accumulate(torch.cat([source[None], targets]))
            if self.record:
                rows = torch.cat([source[None], targets]).float().mean(1)  # (1+n, pixels, tokens)
                grid = to_latent_grid(rows, self.blend.latent_hw)  # (1+n, tokens, h, w)
                self.attention = grid if self.attention is None else self.attention + grid
        else:  # self-attention: the source's maps, fading out over the window's last steps
            weight = self.plan.self_weight[self.step]
            targets = source[None].expand_as(targets) if weight >= 1 else weight * source[None] + (1 - weight) * targets
        return torch.cat([uncond, source[None], targets])
