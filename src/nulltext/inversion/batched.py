"""Null-text inversion of K photos at once: Algorithm 1 of Mokady et al. (2023) over a batch.

Each photo keeps everything the paper gives one photo: its own pivot z*_0 … z*_T, its own ∅_t, its
own optimiser state (Adam's moments, or the secant's step length and preconditioner) and its own early
stop. What is shared is the UNet call: one batch per inner iteration (Adam update or secant trial) for
the photos still optimising at this step (and one batch for the conditional branch and for the DDIM
inversion).

A photo that stops early **leaves the batch** for the rest of the step, rather than being masked out:
- exactness: Adam's update depends on its own step count (bias correction) and moments; a masked
  photo with a zero gradient would still move by its momentum, and its step count would run ahead.
  With one Adam per photo that only steps while the photo is in the batch, each photo sees exactly
  the updates the one-at-a-time loop gives it;
- cost: a photo that has stopped costs no more UNet work, so the batch shrinks as photos converge.

The loss of the batch is the sum of the per-photo MSE losses: the UNet treats rows independently
(group norm and attention are per sample), so d(Σ_j L_j)/d∅_t^i = dL_i/d∅_t^i, each photo's own
gradient. Numerically, a UNet batch of K runs other matmul/convolution kernels than a batch of one, so
its outputs differ from `invert`'s in the last bits (bundled model, CPU, K = 4: 5e-7 of the output's
range); over T·N Adam updates ∅_t drift apart by up to ~1e-3 of their size (bundled model, 10 steps:
≤ 5e-3 on |∅_t| ≈ 4) and the reconstruction PSNR agrees to ≤ 1e-6 dB. A photo whose loss lands within
that noise of its early-stop threshold may take one Adam iteration more or less than alone. With K = 1
the computation is the one `invert` does, bit for bit (the text and the VAE run photo by photo too). Other inversion methods have nothing to
optimise jointly; `invert_batch` runs them one photo at a time.
"""

from __future__ import annotations

import time

import torch

from nulltext.core.conditioning import TextConditioning
from nulltext.core.schedule import make_schedule
from nulltext.inversion.null_text import (Inversion, InversionConfig, InversionError, OnError, build_inversion,
                                          invert, optimise_rows)
from nulltext.inversion.pivot import ddim_invert
from nulltext.model import Model
from nulltext.progress import Progress


def invert_batch(model: Model, images: torch.Tensor | list[torch.Tensor], prompts: list[str],
                 config: InversionConfig | None = None, callback: Progress | None = None,
                 provenance: list[dict] | None = None, on_error: OnError = "raise") -> list[Inversion | InversionError]:
    """Invert K photos (each (1,3,H,W) in [-1,1], one size) with their captions; the same results as K `invert` calls.

    `callback` hears one StepReport per outer step: the most Adam iterations and the highest final
    loss over the batch. `provenance[i]` fills photo i's photo/crop_box/source_path. A photo whose
    loss or gradient is not finite raises InversionError (`on_error="raise"`), or (`"keep"`) leaves the
    batch and gets the error in its place in the returned list while the others go on.
    """
    config = config or InversionConfig()
    images = list(images) if isinstance(images, (list, tuple)) else list(images.split(1))
    provenance = provenance or [{} for _ in images]
    if not (len(images) == len(prompts) == len(provenance)) or not images:
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(provenance)} provenance entries "
                         "— pass one prompt (and one provenance) per image, at least one")
    if len({tuple(im.shape) for im in images}) != 1:
        raise ValueError("the photos of a batch must have one size — batch photos of the same size together")
    for p in prompts:
        model.check_prompt(p)
    if config.method != "null-text":  # nothing to optimise jointly: one photo at a time
        return [_invert_one(model, im, p, config, callback, prov, on_error)
                for im, p, prov in zip(images, prompts, provenance)]
    start = time.perf_counter()
    K, T = len(images), config.num_steps
    schedule = make_schedule(model.scheduler_config, T)
    # (K, tokens, dim), each encoded alone as in `invert`
    cond = TextConditioning.cat([model.text_conditioning([p]) for p in prompts])
    uncond = model.null_conditioning()  # (1, tokens, dim)
    # photo by photo through the VAE, so z0 does not depend on the batch (as `decode_latents`)
    z0 = torch.cat([model.encode_image(im).float() for im in images])  # (K, C, h, w)
    trajectory = ddim_invert(model, z0, cond, schedule, config.pivot_guidance_scale, uncond.expand(K))
    pivots = trajectory.view(T + 1, K, *z0.shape[1:])  # (T+1, K, C, h, w): z*_0 … z*_T of each photo
    optimised = optimise_rows(model, pivots, cond, uncond, schedule, config, callback, on_error=on_error)
    per_photo = (time.perf_counter() - start) / K  # each photo's share of the batch's wall time
    results: list[Inversion | InversionError] = []
    for i, result in enumerate(optimised):
        if isinstance(result, InversionError):
            results.append(result)
            continue
        pivot = pivots[:, i].contiguous()  # (T+1, C, h, w)
        results.append(build_inversion(model, images[i], prompts[i], config, pivot, result.nulls, result.losses,
                                       result.iterations, per_photo, **provenance[i]))
    return results


def _invert_one(model: Model, image: torch.Tensor, prompt: str, config: InversionConfig, callback: Progress | None,
                provenance: dict, on_error: OnError) -> Inversion | InversionError:
    try:
        return invert(model, image, prompt, config, callback, **provenance)
    except InversionError as e:
        if on_error == "raise":
            raise
        return e
