"""The deterministic DDIM step (Song et al. 2021, eq. 12 with η = 0), in both directions.

Notation (the papers' ↔ the code's):
    τ_1 < … < τ_T         `schedule.timesteps` (ascending; index i−1 holds τ_i)
    ᾱ at level i           `schedule.alphas[i]`: ᾱ(τ_i) for i ≥ 1, and the "final" ᾱ for i = 0
    z_i                    the latent at level i (z_0 = the clean latent, z_T = the noisiest)
    ε_θ(z, τ, c)           the UNet's prediction, converted from ε, v or x0 by `prediction_type`

Sampling goes from level i to i−1 with the model evaluated at (z_i, τ_i); inversion goes from level
i−1 to i with the model evaluated at (z_{i−1}, τ_i) — the usual DDIM-inversion approximation. The
levels match diffusers' DDIMScheduler and DDIMInverseScheduler for "leading" and "trailing" spacing.
This module is pure tensor math: no models, no prompts. `sample` is the one DDIM loop that
reconstruction, editing and direct inversion share: a plain function of a prediction function,
latents, the schedule and a callback (k-diffusion's `sampling.py` style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass(frozen=True)
class Schedule:
    """The timesteps of a DDIM run and ᾱ at each of its levels."""

    timesteps: torch.Tensor  # (T,) long, ascending τ_1 … τ_T
    alphas: torch.Tensor  # (T+1,) float64, ᾱ at levels 0 … T
    prediction_type: PredictionType

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def timestep(self, i: int) -> int:
        """τ_i, the model's timestep for the step between levels i−1 and i (1 ≤ i ≤ T)."""
        return int(self.timesteps[i - 1])


def make_schedule(scheduler_config: dict, num_steps: int) -> Schedule:
    """The DDIM schedule of a model's scheduler config, with its timestep spacing and final ᾱ."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_steps)
    timesteps = sched.timesteps.flip(0).long()  # diffusers gives them descending
    ac = sched.alphas_cumprod.double()
    alphas = torch.cat([torch.tensor([float(sched.final_alpha_cumprod)], dtype=torch.float64), ac[timesteps]])
    return Schedule(timesteps, alphas, sched.config.prediction_type)


def split_prediction(output: torch.Tensor, sample: torch.Tensor, alpha: float,
                     prediction_type: PredictionType) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) from the model output at a sample whose level has ᾱ = alpha."""
    a, b = alpha ** 0.5, (1 - alpha) ** 0.5
    if prediction_type == "epsilon":
        return (sample - b * output) / a, output
    if prediction_type == "v_prediction":
        return a * sample - b * output, a * output + b * sample
    if prediction_type == "sample":
        return output, (sample - a * output) / b
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def ddim_move(output: torch.Tensor, sample: torch.Tensor, alpha_from: float, alpha_to: float,
              prediction_type: PredictionType) -> torch.Tensor:
    """Move a sample from level ᾱ_from to ᾱ_to along the model's predicted (x0, ε) (DDIM eq. 12, η = 0)."""
    # 1. predicted clean sample and noise at the current level
    x0, eps = split_prediction(output, sample, alpha_from, prediction_type)
    # 2. re-noise x0 to the new level along the same ε
    return alpha_to ** 0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def ddim_step(output: torch.Tensor, sample: torch.Tensor, i: int, schedule: Schedule) -> torch.Tensor:
    """Sampling: z_{i−1} from z_i and the model output at (z_i, τ_i)."""
    return ddim_move(output, sample, float(schedule.alphas[i]), float(schedule.alphas[i - 1]), schedule.prediction_type)


def ddim_inverse_step(output: torch.Tensor, sample: torch.Tensor, i: int, schedule: Schedule) -> torch.Tensor:
    """Inversion: z_i from z_{i−1} and the model output at (z_{i−1}, τ_i)."""
    return ddim_move(output, sample, float(schedule.alphas[i - 1]), float(schedule.alphas[i]), schedule.prediction_type)


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the model output: u + w (c − u)."""
    return uncond + scale * (cond - uncond)


Predict = Callable[[torch.Tensor, int], torch.Tensor]  # (z_i, i) → model output at (z_i, τ_i)
AfterStep = Callable[[int, torch.Tensor], "torch.Tensor | None"]  # (i, z_{i−1}) → corrected z_{i−1} or None


def sample(predict: Predict, z_T: torch.Tensor, schedule: Schedule, after_step: AfterStep | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling z_T → z_0 (Song et al. 2021, eq. 12 with η = 0).

    `after_step(i, z_{i−1})` sees each new latent and may return a replacement (direct inversion's
    correction, Prompt-to-Prompt's local blend) or None to keep it; it is also the progress hook.
    """
    z = z_T
    for i in range(schedule.num_steps, 0, -1):
        # 1. the model's output at (z_i, τ_i), e.g. classifier-free guided
        out = predict(z, i)
        # 2. one DDIM step to level i − 1
        z = ddim_step(out, z, i, schedule)
        # 3. the caller's correction of z_{i−1}, if any
        if after_step is not None:
            corrected = after_step(i, z)
            z = z if corrected is None else corrected
    return z
