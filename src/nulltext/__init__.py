"""nulltext: edit real photos with words — Null-text Inversion + Prompt-to-Prompt on Stable Diffusion.

The public API, one import away (`from nulltext import load_model, invert, edit, …`). Names are looked
up when first used (PEP 562), so `import nulltext` and the CLI's start stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "load_model": "nulltext.model", "Model": "nulltext.model",
    "load_image": "nulltext.io.images", "to_tensor": "nulltext.io.images", "to_pil": "nulltext.io.images",
    "save_png": "nulltext.io.images", "load_mask": "nulltext.io.images",
    "InversionConfig": "nulltext.inversion", "Inversion": "nulltext.inversion", "invert": "nulltext.inversion",
    "invert_batch": "nulltext.inversion.batched",
    "save_inversion": "nulltext.inversion.file", "load_inversion": "nulltext.inversion.file",
    "reconstruct": "nulltext.editing", "edit": "nulltext.editing", "attention_maps": "nulltext.editing",
    "EditConfig": "nulltext.editing.prompt_to_prompt",
    "NulltextError": "nulltext.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from nulltext.inversion.batched import invert_batch
    from nulltext.editing.from_inversion import attention_maps, edit, reconstruct
    from nulltext.errors import NulltextError
    from nulltext.io.images import load_image, load_mask, save_png, to_pil, to_tensor
    from nulltext.inversion.null_text import Inversion, InversionConfig, invert
    from nulltext.inversion.file import load_inversion, save_inversion
    from nulltext.model import Model, load_model
    from nulltext.editing.prompt_to_prompt import EditConfig


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nulltext' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
