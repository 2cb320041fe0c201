"""Editing an inversion (Hertz et al. 2022): attention processors that record and rewrite (`attention`),
token alignment between captions (`token_alignment`), the Prompt-to-Prompt plan and controller with local
blend (`prompt_to_prompt`), and guided sampling from an inversion under it (`from_inversion`)."""

from nulltext.editing.from_inversion import EditResult, attention_maps, edit, reconstruct
from nulltext.editing.prompt_to_prompt import EditConfig

__all__ = ["EditConfig", "EditResult", "attention_maps", "edit", "reconstruct"]
