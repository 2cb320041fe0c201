"""How target captions edit the source (`EditConfig`, the authors' defaults) and the step windows its
fractions mean: no torch, so the CLI's `--help` and argument checks import nothing heavy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from nulltext.settings import SettingsError, check_fraction, check_whole

if TYPE_CHECKING:
    import torch

Mode = Literal["auto", "replace", "refine"]
MaskCombine = Literal["union", "intersection"]
TargetNull = Literal["empty", "inverted"]
Composite = Literal["changed", "off"]
StepRange = float | tuple[float, float]


@dataclass
class EditConfig:
    """How target prompts edit the source: mode, schedules, re-weighting, local blend."""

    mode: Mode = "auto"  # auto: replace when word counts match, else refine
    # Unconditional embedding of the target rows. "inverted": the inversion's ∅_t, as the paper does
    # (Mokady et al. sec. 3.3, "∅_t with P*"). "empty": ψ("") on every row whose caption differs from the
    # source's; ∅_t then steer the source row (and re-weightings of its caption), which follows the pivot
    # and lends the targets its attention. ∅_t are fitted to the source row's latents
    # and caption; on a target row they act as a negative prompt that carries the source's content
    # (README, "Which defaults differ from the authors'").
    target_null: TargetNull = "empty"
    cross_replace: StepRange = 0.8  # fraction of steps (from the start) or (start, end) fractions
    word_cross_replace: dict[str, StepRange] = field(default_factory=dict)  # per target word
    # The source's self-attention is injected into the target rows until `self_replace` of the steps, fading
    # linearly to nothing over the last `self_fade` of them: fully for the first 50 %, then less each step
    # until 90 % (the authors': fully until 40 %, `self_replace=0.4, self_fade=0`). The edited object keeps the
    # photo's outline without the old layout being forced on the last steps (edit benchmark, N = 30, null-text
    # with blend: object IoU 0.866 / 0.862 → 0.896 / 0.895 on colour / background swaps against the 60 % hard
    # switch, PSNR to the twin 23.05 → 23.62 dB, accuracy 94 → 95 %; docs/benchmarks.md)
    self_replace: StepRange = 0.9
    self_fade: float = 0.4
    self_max_fraction: float = 1 / 16  # self-attention replaced on layers with ≤ this share of the latent's pixels
    self_min_pixels: int = 256  # … and always on layers of 16×16 or smaller
    reweight: dict[str, float] = field(default_factory=dict)  # target word → attention scale
    blend_words: list[str] = field(default_factory=list)  # words (source or target) marking the region
    blend_subtract: list[str] = field(default_factory=list)  # words whose region is kept from the source
    blend_mask: torch.Tensor | None = None  # (H, W) bool, a user-drawn region at image (or latent) size
    blend_mask_combine: MaskCombine = "union"  # with blend words: edit where either (union) or both mark
    blend_threshold: float = 0.3
    blend_start: float = 0.2  # fraction of steps after which blending starts
    blend_dilation: float = 1 / 16  # max-pool radius as a fraction of the latent side (the authors' 1 of 16) …
    blend_min_radius: int = 3  # … and at least this many latent pixels: on small latents a tighter mask cuts
    # the corners of a new shape (bundled model, 16×16 latent: 2 → 3 raised blended accuracy 94 → 97 %, 32 cases);
    # the wider ring costs the background nothing, since compositing puts the photo back where nothing moved
    # After decoding, with local blend: "changed" puts the photo back on every pixel the edit did not move
    # from the reconstruction (`nulltext.editing.composite`); "off" keeps the decoder's output (the authors')
    composite: Composite = "changed"
    composite_change: tuple[float, float] = (0.05, 0.15)  # RGB distance (0…1 scale) from photo (below) to edit (above)
    composite_feather: float = 1 / 128  # Gaussian σ of the compositing weights, a fraction of the image side
    # … and the edit also kept within this fraction of the image side of a pixel it moved: the decoder blurs a
    # removed shape's thin parts (a triangle's tips) so the edit barely moves them, and the photo put back there
    # left specks of the old shape (colour + shape swaps with blend, N = 30: 90 → 97 % right)
    composite_reach: float = 1 / 64
    # … and never beyond this fraction of the image side from local blend's latent mask: outside the mask the
    # latents are the source's, so what the decoder changes there (its group norms and attention see the whole
    # latent; most at the corners) goes back to the photo. None: no bound (colour + shape swaps with blend,
    # N = 30: 97 → 100 % right with it)
    composite_margin: float | None = 3 / 32

    def __post_init__(self) -> None:
        """Refuse settings no edit can run with; the CLI and the library say the same."""
        if self.mode not in get_args(Mode):
            raise SettingsError(f"unknown edit mode {self.mode!r} — use auto, replace or refine")
        if self.target_null not in get_args(TargetNull):
            raise SettingsError(f"unknown target null {self.target_null!r} — use empty or inverted")
        if self.blend_mask_combine not in get_args(MaskCombine):
            raise SettingsError(f"unknown mask combination {self.blend_mask_combine!r} — use union or intersection")
        if self.composite not in get_args(Composite):
            raise SettingsError(f"unknown composite {self.composite!r} — use changed or off")
        low, high = self.composite_change
        if not 0.0 <= low < high:
            raise SettingsError(f"composite change ({low}, {high}) must be two distances 0 ≤ low < high, e.g. (0.05, 0.15)")
        check_fraction(self.composite_feather, "composite feather")
        check_fraction(self.composite_reach, "composite reach")
        if self.composite_margin is not None:
            check_fraction(self.composite_margin, "composite margin")
        check_fraction(self.self_fade, "self fade")
        step_window(self.cross_replace, 1)
        step_window(self.self_replace, 1)
        for window in self.word_cross_replace.values():
            step_window(window, 1)
        for name, value in (("blend threshold", self.blend_threshold), ("blend start", self.blend_start),
                            ("self max fraction", self.self_max_fraction), ("blend dilation", self.blend_dilation)):
            check_fraction(value, name)
        check_whole(self.self_min_pixels, "self min pixels", 0)
        check_whole(self.blend_min_radius, "blend min radius", 0)
        for word, scale in self.reweight.items():
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise SettingsError(f"reweight scale {scale!r} of {word!r} must be a finite number, e.g. {word}=2")
        if self.blend_mask is not None and self.blend_mask.ndim != 2:
            raise SettingsError(f"blend mask has shape {tuple(self.blend_mask.shape)}, expected (height, width)")


def self_weights(config: EditConfig, num_steps: int) -> list[float]:
    """Per sampling step, how much of the source's self-attention the target rows take (1: all, 0: none)."""
    first, end = step_window(config.self_replace, num_steps)
    fade = min(int(round(config.self_fade * num_steps)), end - first)
    return [0.0 if not first <= k < end else 1.0 if k < end - fade else (end - k) / (fade + 1)
            for k in range(num_steps)]


def step_window(value: StepRange, num_steps: int) -> tuple[int, int]:
    """(first, end) sampling-step indices 0 … T of a fraction or (start, end) fractions."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        start, end = 0.0, value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        start, end = value
    else:
        raise SettingsError(f"step range {value!r} must be a fraction 0…1 or a (start, end) pair")
    if not 0.0 <= start <= end <= 1.0:
        raise SettingsError(f"step range {value!r} must be a fraction 0…1 or (start, end) with 0 ≤ start ≤ end ≤ 1")
    return int(round(start * num_steps)), int(round(end * num_steps))


def resolve_mode(source: str, target: str, mode: Mode) -> Literal["replace", "refine"]:
    if mode != "auto":
        return mode
    return "replace" if len(source.split()) == len(target.split()) else "refine"
