"""Inverting a photo (Mokady et al. 2023): the DDIM pivot, Algorithm 1 with the paper's Adam or the fast
secant optimiser as its inner loop, negative-prompt and direct inversion (`null_text`); K photos per UNet
batch (`batched`); the `Inversion` result's `.nti` file (`file`). The package exports the public names."""

from nulltext.inversion.batched import invert_batch
from nulltext.inversion.file import InversionFileError, check_model, load_inversion, save_inversion
from nulltext.inversion.null_text import (Callback, Inversion, InversionConfig, InversionError, Method, Optimised,
                                          Optimizer, SecantState, StepReport, adam_descent, invert, loss_scale,
                                          null_text_optimise, optimise_rows, secant_descent)
from nulltext.inversion.pivot import ddim_invert, direct_corrections

__all__ = ["Callback", "Inversion", "InversionConfig", "InversionError", "InversionFileError", "Method", "Optimised",
           "Optimizer", "SecantState", "StepReport", "adam_descent", "check_model", "ddim_invert",
           "direct_corrections", "invert", "invert_batch", "load_inversion", "loss_scale", "null_text_optimise",
           "optimise_rows", "save_inversion", "secant_descent"]
