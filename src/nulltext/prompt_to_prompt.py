"""Prompt-to-Prompt edit control (Hertz et al. 2022, arXiv 2208.01626).

At every sampling step the source prompt's pass runs first and its attention probabilities are
recorded; then the target prompts' pass runs with its conditional branch's probabilities rewritten:

- cross-attention (sec. 3.2): word swap takes the source maps through a token mapper M,
  M*_t = M_t · M (eq. "Replace"); refinement takes the aligned source maps and keeps the target's own
  maps for new tokens; re-weighting scales chosen words' maps (negative and zero allowed). This
  happens for the steps in `cross_replace` (a fraction from the start, or a (start, end) range), with
  per-word overrides; outside it the target's own maps are used.
- self-attention: target maps are replaced by the source's for the steps in `self_replace`, on
  layers with at most 1/16 of the latent's pixels (the authors' 16×16 of SD's 64×64) or 16×16.
- local blending (sec. 3.2, "Local editing"): a mask from the cumulative cross-attention of the blend
  words (source ∪ target), dilated and thresholded; outside it the target latent is reset to the
  source latent after each step from `blend_start` on.

Defaults are the authors' published settings: cross 0.8, self 0.4, blend threshold 0.3 from 0.2, and
their dilation of 1/16 of the side — but never under 2 latent pixels, so that on small latents (the
bundled model's 16×16) the mask's edge stays clear of the object's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from nulltext.attention import to_latent_grid
from nulltext.token_alignment import (
    PromptMismatchError,
    refine_alignment,
    replace_mapper,
    reweight_vector,
    word_token_indices,
)

Mode = Literal["auto", "replace", "refine"]
StepRange = float | tuple[float, float]


@dataclass
class EditConfig:
    """How target prompts edit the source: mode, schedules, re-weighting, local blend."""

    mode: Mode = "auto"  # auto: replace when word counts match, else refine
    cross_replace: StepRange = 0.8  # fraction of steps (from the start) or (start, end) fractions
    word_cross_replace: dict[str, StepRange] = field(default_factory=dict)  # per target word
    self_replace: StepRange = 0.4
    self_max_fraction: float = 1 / 16  # self-attention replaced on layers with ≤ this share of the latent's pixels
    self_min_pixels: int = 256  # … and always on layers of 16×16 or smaller
    reweight: dict[str, float] = field(default_factory=dict)  # target word → attention scale
    blend_words: list[str] = field(default_factory=list)  # words (source or target) marking the region
    blend_subtract: list[str] = field(default_factory=list)  # words whose region is kept from the source
    blend_threshold: float = 0.3
    blend_start: float = 0.2  # fraction of steps after which blending starts
    blend_dilation: float = 1 / 16  # max-pool radius as a fraction of the latent side (the authors' 1 of 16) …
    blend_min_radius: int = 2  # … and at least this many latent pixels: a mask edge closer than ~2 latent
    # pixels to the edited object leaves a seam that the VAE decoder spreads into the background


def step_window(value: StepRange, num_steps: int) -> tuple[int, int]:
    """(first, end) sampling-step indices 0 … T of a fraction or (start, end) fractions."""
    start, end = (0.0, value) if isinstance(value, (int, float)) else value
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"step range {value!r} must be a fraction 0…1 or (start, end) with 0 ≤ start ≤ end ≤ 1")
    return int(round(start * num_steps)), int(round(end * num_steps))


def _has_word(prompt: str, word: str, tokenizer) -> bool:
    try:
        word_token_indices(prompt, word, tokenizer)
        return True
    except PromptMismatchError:
        return False


def resolve_mode(source: str, target: str, mode: Mode) -> Literal["replace", "refine"]:
    if mode != "auto":
        return mode
    return "replace" if len(source.split()) == len(target.split()) else "refine"


class PromptToPrompt:
    """The attention controller of one edit run: a source prompt and n target prompts."""

    def __init__(self, tokenizer, source: str, targets: list[str], config: EditConfig, num_steps: int,
                 latent_hw: tuple[int, int]):
        self.config, self.num_steps, self.latent_hw = config, num_steps, latent_hw
        L = tokenizer.model_max_length
        self.edits = []  # per target: ("replace", M (L, L)) or ("refine", mapper (L,), alphas (L,))
        for target in targets:
            mode = resolve_mode(source, target, config.mode)
            if mode == "replace":
                self.edits.append(("replace", replace_mapper(source, target, tokenizer)))
            else:
                self.edits.append(("refine", *refine_alignment(source, target, tokenizer)))
        self.equalizers = [self._equalizer(tokenizer, t, config.reweight) if config.reweight else None for t in targets]
        for word in config.reweight:
            if not any(_has_word(t, word, tokenizer) for t in targets):
                raise PromptMismatchError(f"reweight word {word!r} is in no target prompt — pick a word of the target")
        self.cross_alpha = self._cross_schedule(tokenizer, targets, L)  # (T, n, L)
        self.self_window = step_window(config.self_replace, num_steps)
        self.self_max_pixels = max(config.self_min_pixels, int(latent_hw[0] * latent_hw[1] * config.self_max_fraction))
        self.blend_alpha = self._word_alphas(tokenizer, source, targets, config.blend_words, L)
        self.subtract_alpha = self._word_alphas(tokenizer, source, targets, config.blend_subtract, L)
        # explicit state of the run
        self.step, self.phase = 0, "source"
        self.source_maps: dict[str, torch.Tensor] = {}
        self.blend_sum: torch.Tensor | None = None  # (1+n, h, w) cumulative blend-word attention
        self.subtract_sum: torch.Tensor | None = None

    @staticmethod
    def _equalizer(tokenizer, target: str, scales: dict[str, float]) -> torch.Tensor:
        return reweight_vector(target, {w: v for w, v in scales.items() if _has_word(target, w, tokenizer)}, tokenizer)

    # -- schedules ------------------------------------------------------------------------------

    def _cross_schedule(self, tokenizer, targets: list[str], L: int) -> torch.Tensor:
        T = self.num_steps
        alpha = torch.zeros(T, len(targets), L)  # (steps, targets, tokens)
        first, end = step_window(self.config.cross_replace, T)
        alpha[first:end] = 1.0
        for word, window in self.config.word_cross_replace.items():
            w_first, w_end = step_window(window, T)
            if not any(_has_word(t, word, tokenizer) for t in targets):
                raise PromptMismatchError(f"cross-replacement word {word!r} is in no target prompt — pick a target word")
            for j, target in enumerate(targets):
                if not _has_word(target, word, tokenizer):
                    continue
                idx = word_token_indices(target, word, tokenizer)
                alpha[:, j, idx] = 0.0
                alpha[w_first:w_end, j, idx] = 1.0
        return alpha

    @staticmethod
    def _word_alphas(tokenizer, source: str, targets: list[str], words: list[str], L: int) -> torch.Tensor | None:
        """(1+n, L) selectors of the given words' tokens in the source and each target (None if no words)."""
        if not words:
            return None
        prompts = [source, *targets]
        alphas = torch.zeros(len(prompts), L)  # (prompts, tokens)
        for word in words:
            found = False
            for j, prompt in enumerate(prompts):
                try:
                    alphas[j, word_token_indices(prompt, word, tokenizer)] = 1.0
                    found = True
                except PromptMismatchError:
                    pass
            if not found:
                raise PromptMismatchError(f"blend word {word!r} is in neither the source nor a target prompt — "
                                          "pick a word of one of the prompts")
        return alphas

    def cross_active(self) -> bool:
        return bool(self.cross_alpha[self.step].any()) or self.equalizers[0] is not None

    def self_active(self) -> bool:
        return self.self_window[0] <= self.step < self.self_window[1]

    # -- the controller protocol (see nulltext.attention) ---------------------------------------

    @property
    def rewrites(self) -> bool:
        return self.phase == "target"

    def begin(self, step: int, phase: Literal["source", "target"]) -> None:
        self.step, self.phase = step, phase

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        if is_cross:
            return self.cross_active() or self.blend_alpha is not None
        return self.self_active() and pixels <= self.self_max_pixels

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        half = probs.shape[0] // 2
        uncond, cond = probs[:half], probs[half:]  # (batch, heads, pixels, tokens) each
        if self.phase == "source":
            self.source_maps[layer] = cond[0]  # (heads, pixels, tokens)
            if is_cross:
                self._accumulate(cond, 0)
            return probs
        source = self.source_maps.pop(layer)  # (heads, pixels, tokens)
        if is_cross:
            edited = self._edit_cross(source, cond)
            self._accumulate(edited, 1)
        else:
            edited = source.unsqueeze(0).expand_as(cond)
        return torch.cat([uncond, edited])

    def _edit_cross(self, source: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Rewritten target cross-attention (n, heads, pixels, tokens) from the source's (heads, pixels, tokens)."""
        out = []
        for j, edit in enumerate(self.edits):
            if edit[0] == "replace":
                base = torch.einsum("hpw,wn->hpn", source, edit[1].to(source))  # (heads, pixels, tokens)
            else:
                mapper, alphas = edit[1].to(source.device), edit[2].to(source)
                base = source[..., mapper] * alphas + cond[j] * (1 - alphas)
            if self.equalizers[j] is not None:
                base = base * self.equalizers[j].to(source)
            a = self.cross_alpha[self.step, j].to(source)  # (tokens,)
            out.append(base * a + cond[j] * (1 - a))
        return torch.stack(out)

    # -- local blend ----------------------------------------------------------------------------

    def _accumulate(self, cond: torch.Tensor, offset: int) -> None:
        """Add this layer's blend/subtract-word attention, at latent resolution, to the running sums."""
        if self.blend_alpha is None:
            return
        n = cond.shape[0]
        maps = cond.float().mean(1)  # (batch, pixels, tokens)
        for attr, alpha in (("blend_sum", self.blend_alpha), ("subtract_sum", self.subtract_alpha)):
            if alpha is None:
                continue
            sel = (maps * alpha[offset : offset + n, None, :].to(maps)).sum(-1, keepdim=True)  # (batch, pixels, 1)
            sel = to_latent_grid(sel, self.latent_hw)[:, 0]  # (batch, h, w)
            total = getattr(self, attr)
            if total is None:
                total = torch.zeros(1 + len(self.edits), *self.latent_hw, device=sel.device)
                setattr(self, attr, total)
            total[offset : offset + n] += sel

    def _mask(self, sums: torch.Tensor) -> torch.Tensor:
        """Thresholded, dilated, max-normalised masks (1+n, h, w) of cumulative attention sums."""
        r = max(self.config.blend_min_radius, round(self.config.blend_dilation * max(self.latent_hw)))
        m = F.max_pool2d(sums[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]  # (prompts, h, w)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return m > self.config.blend_threshold

    def blend_masks(self) -> torch.Tensor | None:
        """(n, h, w) bool: where each target may differ from the source (source ∪ target words, minus subtract)."""
        if self.blend_sum is None:
            return None
        m = self._mask(self.blend_sum)
        masks = m[1:] | m[:1]
        if self.subtract_sum is not None:
            s = self._mask(self.subtract_sum)
            masks = masks & ~(s[1:] | s[:1])
        return masks

    def blend(self, z_source: torch.Tensor, z_targets: torch.Tensor) -> torch.Tensor:
        """Keep the source latent outside the mask, once blending has started."""
        if self.blend_sum is None or self.step < round(self.config.blend_start * self.num_steps):
            return z_targets
        mask = self.blend_masks()[:, None].to(z_targets)  # (n, 1, h, w)
        return z_source + mask * (z_targets - z_source)
