"""nulltext: edit real photos with words — Null-text Inversion + Prompt-to-Prompt on Stable Diffusion.

The public API, one import away (`from nulltext import load_model, invert, edit, …`). Names are looked
up when first used (PEP 562), so `import nulltext` and the CLI's start stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nulltext.lazy import lazy_exports

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "load_model": "nulltext.model", "Model": "nulltext.model",
    "load_image": "nulltext.io.images", "to_tensor": "nulltext.io.images", "to_pil": "nulltext.io.images",
    "save_png": "nulltext.io.images", "load_mask": "nulltext.io.images",
    "InversionConfig": "nulltext.inversion.config", "Inversion": "nulltext.inversion.null_text",
    "invert": "nulltext.inversion.null_text",
    "invert_batch": "nulltext.inversion.batched",
    "save_inversion": "nulltext.inversion.file", "load_inversion": "nulltext.inversion.file",
    "reconstruct": "nulltext.editing.from_inversion", "edit": "nulltext.editing.from_inversion",
    "attention_maps": "nulltext.editing.from_inversion", "EditConfig": "nulltext.editing.config",
    "NulltextError": "nulltext.errors", "load_captioner": "nulltext.captioning",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from nulltext.inversion.batched import invert_batch
    from nulltext.editing.from_inversion import attention_maps, edit, reconstruct
    from nulltext.errors import NulltextError
    from nulltext.io.images import load_image, load_mask, save_png, to_pil, to_tensor
    from nulltext.inversion.config import InversionConfig
    from nulltext.inversion.null_text import Inversion, invert
    from nulltext.inversion.file import load_inversion, save_inversion
    from nulltext.model import Model, load_model
    from nulltext.editing.config import EditConfig
    from nulltext.captioning import load_captioner


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
