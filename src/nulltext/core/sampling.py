"""Classifier-free guided DDIM on a model: the prediction that every sampling loop uses.

Guided DDIM from z_T with ∅_t as the unconditional embedding of step t (Mokady et al. 2023, sec. 3.3:
"we use the optimised unconditional embeddings ∅_T … ∅_1 with the target prompt P*"), built on the
one loop of `nulltext.core.ddim.sample`. The unconditional and conditional halves run as one UNet batch
(the unconditional half first), so attention controllers see (2B, heads, pixels, tokens) with the
conditional rows in the second half — but in half precision, where no controller needs them together,
they run as two UNet calls, as null-text inversion's optimiser runs them: a bf16 or fp16 batch of two
rounds differently from two batches of one, and only the optimiser's own arithmetic replays the
trajectory its ∅_t were fitted to (bundled model, bf16, 50 steps: the replay's latent error 1.11e-3 in
one batch against the optimiser's 8.27e-4; 8.27e-4 as two calls).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nulltext.core.conditioning import TextConditioning
from nulltext.core.schedule import Schedule
from nulltext.core.ddim import Predict, guided, sample
from nulltext.progress import Progress

if TYPE_CHECKING:  # core sits below model: only the type is named here, a model is passed in
    from nulltext.model import Model

def guided_prediction(model: Model, cond: TextConditioning | torch.Tensor, nulls: TextConditioning | torch.Tensor,
                      guidance_scale: float, schedule: Schedule, one_batch: bool | None = None) -> Predict:
    """(z_i, i) → u + w (c − u) with u = ε(z_i, ∅_i), c = ε(z_i, C): one UNet batch per step, or two calls.

    cond's tokens are (B, tokens, dim), or (T, B, tokens, dim) for a caption embedding per step;
    nulls' are (T, tokens, dim) for every row, or (T, B, tokens, dim) for an unconditional embedding per row
    (a bare tensor is token embeddings alone: SD 1.x/2.x). `one_batch`: both halves in one UNet call
    (needed by attention controllers); None: one call in float32, two in half precision (module docstring).
    """
    cond, nulls = TextConditioning.of(cond), TextConditioning.of(nulls)
    if one_batch is None:
        one_batch = model.dtype not in (torch.float16, torch.bfloat16)

    def predict(z: torch.Tensor, i: int) -> torch.Tensor:
        B = z.shape[0]
        null = nulls.map(lambda x: x[i - 1]).to(model.device) if nulls.tokens.ndim == 4 else \
            nulls[i - 1 : i].to(model.device).expand(B)  # (B, tokens, dim)
        c = cond if cond.tokens.ndim == 3 else cond.map(lambda x: x[i - 1]).to(model.device)  # (B, tokens, dim)
        tau = schedule.timestep(i)
        if not one_batch:  # as the optimiser: ε(z_i, ∅_i) and ε(z_i, C) in calls of their own
            return guided(model.predict(z, tau, null), model.predict(z, tau, c), guidance_scale)
        out = model.predict(torch.cat([z, z]), tau, TextConditioning.cat([null, c]))
        return guided(*out.chunk(2), guidance_scale)

    return predict


def guided_ddim(model: Model, latent_T: torch.Tensor, cond: TextConditioning | torch.Tensor,
                nulls: TextConditioning | torch.Tensor, schedule: Schedule,
                guidance_scale: float, callback: Progress | None = None,
                corrections: torch.Tensor | None = None, one_batch: bool | None = None) -> torch.Tensor:
    """Guided DDIM (eq. 12, η = 0) from z_T (1 or B, C, h, w) to z_0 with ∅_t at step t.

    `corrections` (T, C, h, w), from direct inversion, are added after step t at index t − 1;
    `one_batch` as in `guided_prediction`.
    """
    B = TextConditioning.of(cond).tokens.shape[-3]
    z = latent_T.to(model.device).float().expand(B, -1, -1, -1)

    def back_on_pivot(i: int, z_prev: torch.Tensor) -> torch.Tensor:  # direct inversion's stored gap
        return z_prev + corrections[i - 1 : i].to(z_prev)

    return sample(guided_prediction(model, cond, nulls, guidance_scale, schedule, one_batch), z, schedule,
                  None if corrections is None else back_on_pivot, callback)
