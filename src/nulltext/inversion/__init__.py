"""Inverting a photo (Mokady et al. 2023): the settings (`config`), the DDIM pivot (`pivot`), Algorithm 1
with the paper's Adam or the fast secant optimiser as its inner loop, negative-prompt and direct inversion
(`null_text`); K photos per UNet batch (`batched`); the `Inversion` result's `.nti` file (`file`) and its
header, read without torch (`header`). The package exports the public names, each imported on first use
(`nulltext.lazy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nulltext.lazy import lazy_exports

_MODULES = {
    "nulltext.inversion.config": ["InversionConfig", "Method", "Optimizer"],
    "nulltext.inversion.null_text": ["Inversion", "InversionError", "Optimised", "SecantState", "adam_descent",
                                     "invert", "loss_scale", "null_text_optimise", "optimise_rows", "secant_descent"],
    "nulltext.progress": ["Progress", "StepReport"],
    "nulltext.inversion.pivot": ["ddim_invert", "direct_corrections"],
    "nulltext.inversion.batched": ["invert_batch"],
    "nulltext.inversion.file": ["check_model", "load_inversion", "save_inversion"],
    "nulltext.inversion.header": ["FileHeader", "Header", "InversionFileError", "read_file_header"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from nulltext.inversion.batched import invert_batch
    from nulltext.inversion.config import InversionConfig, Method, Optimizer
    from nulltext.inversion.file import check_model, load_inversion, save_inversion
    from nulltext.inversion.header import FileHeader, Header, InversionFileError, read_file_header
    from nulltext.inversion.null_text import (Inversion, InversionError, Optimised, SecantState, adam_descent, invert,
                                              loss_scale, null_text_optimise, optimise_rows, secant_descent)
    from nulltext.progress import Progress, StepReport
    from nulltext.inversion.pivot import ddim_invert, direct_corrections

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
