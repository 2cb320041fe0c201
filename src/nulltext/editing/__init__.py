"""Editing an inversion (Hertz et al. 2022): the settings (`config`), attention processors that record and
rewrite (`attention`), token alignment between captions (`token_alignment`), the Prompt-to-Prompt plan and
controller with local blend (`prompt_to_prompt`), guided sampling from an inversion under it
(`from_inversion`), the photo put back where nothing changed (`composite`), and what a target caption
changes, word by word, with the blend words that follow (`word_diff`). The package exports the public
names, each imported on first use (`nulltext.lazy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nulltext.lazy import lazy_exports

_EXPORTS = {"EditConfig": "nulltext.editing.config", **dict.fromkeys(
    ["EditResult", "attention_maps", "edit", "reconstruct"], "nulltext.editing.from_inversion"), **dict.fromkeys(
    ["WordChange", "auto_blend_words", "word_diff"], "nulltext.editing.word_diff")}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from nulltext.editing.config import EditConfig
    from nulltext.editing.from_inversion import EditResult, attention_maps, edit, reconstruct
    from nulltext.editing.word_diff import WordChange, auto_blend_words, word_diff

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
