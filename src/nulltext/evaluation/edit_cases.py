"""The edit benchmark's cases with ground truth: one scene drawn twice, with the source caption and with
the target caption, same position and size, so the correct edit is known pixel for pixel.

Edit types: the shape's colour, the shape's class, the background colour, and colour + shape at once.
Each case carries its edit mask (the shape in both scenes; for a background edit, the background) plus
every anti-aliased edge pixel that differs between the two drawings, and the words that changed. Only
scenes whose source and ground truth the bundled judge reads correctly are used, so a failed edit is the
edit's fault. The scenes are held out: their own seed stream, not the train/val/test splits. PIE-Bench
cases (`pie_bench.pie_cases`) are `EditCase`s too, without ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from nulltext.bundled import data
from nulltext.bundled.judge import judge

EDIT_TYPES = ("colour", "shape", "background", "colour+shape")
BENCH_STREAM = 9  # the first entropy word of the benchmark's scenes (the splits use 0, 1, 2 with 3 words)


@dataclass
class EditCase:
    """One edit whose intent is known: source photo and captions, edit region, changed words."""

    case_id: str
    edit_type: str
    source: Image.Image
    source_prompt: str
    target_prompt: str
    mask: np.ndarray  # (H, W) bool, True = the edit may change this pixel
    changed: list[tuple[str, str]]  # (source word, target word) per change
    blend_words: list[str]  # local-blend words (source and target)
    target: Image.Image | None = None  # the ground-truth twin, if known
    target_scene: data.Scene | None = None  # what the judge should see, if known


def _changed_scene(s: data.Scene, edit_type: str, rng: np.random.Generator) -> tuple[data.Scene, list[tuple[str, str]]]:
    """The target scene of one edit type and the (source, target) word pairs that changed."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    colour = pick([c for c in data.COLOURS if c not in (s.colour, s.background)])
    shape = pick([x for x in data.SHAPES if x != s.shape])
    background = pick([c for c in data.COLOURS if c not in (s.background, s.colour)])
    if edit_type == "colour":
        return replace(s, colour=colour), [(s.colour, colour)]
    if edit_type == "shape":
        return replace(s, shape=shape), [(s.shape, shape)]
    if edit_type == "background":
        return replace(s, background=background), [(s.background, background)]
    if edit_type == "colour+shape":
        return replace(s, colour=colour, shape=shape), [(s.colour, colour), (s.shape, shape)]
    raise ValueError(f"unknown edit type {edit_type!r}; choose from {', '.join(EDIT_TYPES)}")


def _reads_as(image: Image.Image, scene: data.Scene) -> bool:
    return all(judge(image).matches(scene).values())


def make_case(edit_type: str, index: int, seed: int = 0, resolution: int = 64) -> EditCase:
    """Case `index` of one edit type: the first draw of its seed stream that the judge reads correctly."""
    type_index = EDIT_TYPES.index(edit_type) if edit_type in EDIT_TYPES else -1
    if type_index < 0:
        raise ValueError(f"unknown edit type {edit_type!r}; choose from {', '.join(EDIT_TYPES)}")
    for attempt in range(100):
        rng = np.random.default_rng(np.random.SeedSequence([BENCH_STREAM, seed, type_index, index, attempt]))
        s = data.random_scene(rng, resolution)
        t, changed = _changed_scene(s, edit_type, rng)
        source, target = data.render(s, resolution), data.render(t, resolution)
        if not (_reads_as(source, s) and _reads_as(target, t)):
            continue
        shape = data.shape_mask(s, resolution)
        region = ~shape if edit_type == "background" else shape | data.shape_mask(t, resolution)
        differs = (np.asarray(source, dtype=np.int16) != np.asarray(target, dtype=np.int16)).any(-1)
        words = [w for pair in changed for w in pair]
        return EditCase(f"{edit_type}-{index}", edit_type, source, s.caption(), t.caption(), region | differs,
                        changed, words, target, t)
    raise RuntimeError(f"no judgeable scene for {edit_type} case {index} in 100 draws")


def make_cases(per_type: int, seed: int = 0, resolution: int = 64,
               types: tuple[str, ...] = EDIT_TYPES) -> list[EditCase]:
    """`per_type` held-out cases of each edit type, deterministic in `seed`."""
    return [make_case(t, i, seed, resolution) for t in types for i in range(per_type)]
