"""The paper's reconstruction claim as one measurement, shared by the model-family tests."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import Inversion, InversionConfig, invert
from nulltext.evaluation.metrics import psnr
from nulltext.core.sampling import guided_ddim


class PivotCheck(NamedTuple):
    null_text: Inversion
    ddim: Inversion
    mse_null_text: float  # latent MSE to z0 of guided sampling at w = 7.5 from each inversion
    mse_ddim: float
    reconstruction: torch.Tensor  # (1, 3, H, W) null-text's, in [-1, 1]
    psnr: float  # of that reconstruction against the photo
    ddim_psnr: float  # of DDIM's at w = 7.5
    vae_bound: float  # of the photo through the VAE alone


def null_text_against_ddim(model, image, caption: str, config: InversionConfig) -> PivotCheck:
    """Null-text and DDIM inversions of one photo, each sampled at w = 7.5 (Mokady et al. 2023, sec. 4)."""
    x = to_tensor(image)
    nt = invert(model, x, caption, config)
    dd = invert(model, x, caption, dataclasses.replace(config, method="ddim"))
    z0, cond = model.encode_image(x), model.text_conditioning([caption])
    with torch.no_grad():
        z_nt, z_dd = (guided_ddim(model, inv.latent_T, cond, inv.nulls, inv.schedule(), 7.5) for inv in (nt, dd))
    ours = reconstruct(model, nt)
    return PivotCheck(nt, dd, ((z_nt - z0) ** 2).mean().item(), ((z_dd - z0) ** 2).mean().item(), ours,
                      psnr(to_pil(ours)[0], image), psnr(to_pil(model.decode_latents(z_dd))[0], image),
                      psnr(to_pil(model.decode_latents(z0))[0], image))


class ErrorAndWork(NamedTuple):
    mse: float  # latent MSE to z0 of guided sampling at the inversion's w (= its last step's loss)
    forward: int  # UNet forward samples
    backward: int  # UNet backward passes
    seconds: float  # the inversion's wall time

    @property
    def passes(self) -> int:
        return self.forward + self.backward

    @property
    def work(self) -> int:
        """Pass-equivalents: a backward pass costs about two forward passes."""
        return self.forward + 2 * self.backward


def error_and_work(model, image, caption: str, config: InversionConfig) -> ErrorAndWork:
    """One inversion's final latent error and the UNet work it took, counted by a forward hook."""
    counts = [0, 0]

    def seen(module, args, out) -> None:  # a forward hook returning None keeps the output
        counts[0] += out.sample.shape[0]
        if out.sample.requires_grad:
            out.sample.register_hook(lambda g: counts.__setitem__(1, counts[1] + 1))

    handle = model.unet.register_forward_hook(seen)
    try:
        inv = invert(model, to_tensor(image), caption, config)
    finally:
        handle.remove()
    z0, cond = model.encode_image(to_tensor(image)), model.text_conditioning([caption])
    with torch.no_grad():
        z = guided_ddim(model, inv.latent_T, cond, inv.nulls, inv.schedule(), config.guidance_scale)
    return ErrorAndWork(((z.float() - z0.float()) ** 2).mean().item(), counts[0], counts[1], inv.wall_time)
