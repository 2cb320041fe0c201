"""The pivot and its gap: DDIM inversion z*_0 … z*_T (Mokady et al. 2023, sec. 3.1), and direct inversion's
per-step corrections back onto it (Ju et al. 2023)."""

from __future__ import annotations

import torch

from nulltext.core.conditioning import TextConditioning
from nulltext.core.schedule import Schedule
from nulltext.core.ddim import ddim_inverse_step, guided, sample
from nulltext.core.sampling import guided_prediction
from nulltext.model import Model


@torch.no_grad()
def ddim_invert(model: Model, z0: torch.Tensor, cond: TextConditioning | torch.Tensor, schedule: Schedule,
                guidance_scale: float = 1.0, uncond: TextConditioning | torch.Tensor | None = None) -> torch.Tensor:
    """DDIM inversion z*_0 → z*_T; returns the trajectory (T+1, C, h, w). w = 1 uses the caption only."""
    z = z0.float()
    trajectory = [z]
    for i in range(1, schedule.num_steps + 1):
        t = schedule.timestep(i)
        out = model.predict(z, t, cond)
        if guidance_scale != 1.0:
            out = guided(model.predict(z, t, uncond), out, guidance_scale)
        z = ddim_inverse_step(out, z, i, schedule)
        trajectory.append(z)
    return torch.cat(trajectory)


def direct_corrections(model: Model, pivot: torch.Tensor, cond: TextConditioning | torch.Tensor,
                       uncond: TextConditioning | torch.Tensor, schedule: Schedule, guidance_scale: float) -> torch.Tensor:
    """Direct inversion (Ju et al. 2023, "PnP Inversion"): d_t = z*_{t−1} − z_{t−1}(z*_t, ψ(""), C), (T, C, h, w).

    Guided sampling that is put back on the pivot after every step; adding d_t after each guided step
    of the source branch does the same at edit time.
    """
    T = schedule.num_steps
    corrections = torch.zeros_like(pivot[1:])
    nulls = TextConditioning.of(uncond).float().expand(T)

    def back_on_pivot(i: int, z_prev: torch.Tensor) -> torch.Tensor:
        target = pivot[i - 1 : i].to(z_prev)
        corrections[i - 1] = (target - z_prev)[0].to(corrections)
        return target

    with torch.no_grad():
        sample(guided_prediction(model, cond, nulls, guidance_scale, schedule), pivot[T:].to(model.device), schedule,
               back_on_pivot)
    return corrections
