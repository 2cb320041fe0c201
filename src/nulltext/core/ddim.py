"""The deterministic DDIM step (Song et al. 2021, eq. 12 with η = 0), in both directions.

Notation (the papers' ↔ the code's; the levels come from `nulltext.core.schedule`):
    τ_i                    `schedule.timestep(i)`, the model's timestep between levels i−1 and i
    z_i = a_i x0 + b_i ε   the latent at level i, (a_i, b_i) = `schedule.level(i)` (z_0 clean, z_T noisiest)
    ε_θ(z, τ, c)           the model's output: ε, v, x0 or (flow matching) the velocity ε − x0

Sampling goes from level i to i−1 with the model evaluated at (z_i, τ_i); inversion goes from level
i−1 to i with the model evaluated at (z_{i−1}, τ_i) — the usual DDIM-inversion approximation. A step
re-noises the predicted x0 along the predicted ε to the new level; for flow matching that is exactly
the Euler step of its ODE (Esser et al. 2024), computed as FlowMatchEulerDiscreteScheduler computes it.
This module is pure tensor math: no models, no prompts. `sample` is the one loop that reconstruction,
editing and direct inversion share: a plain function of a prediction function, latents, the schedule
and a callback (k-diffusion's `sampling.py` style).
"""

from __future__ import annotations

from typing import Callable

import torch

from nulltext.core.schedule import PredictionType, Schedule
from nulltext.progress import Progress, StepReport

Level = tuple[float, float]  # (a, b): the latent is a·x0 + b·ε


def split_prediction(output: torch.Tensor, sample: torch.Tensor, level: Level,
                     prediction_type: PredictionType) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) from the model output at a sample of level (a, b)."""
    a, b = level
    if prediction_type == "epsilon":
        return (sample - b * output) / a, output
    if prediction_type == "v_prediction":
        return a * sample - b * output, a * output + b * sample
    if prediction_type == "sample":
        return output, (sample - a * output) / b
    if prediction_type == "flow":  # v = ε − x0, z = a x0 + b ε
        x0 = (sample - b * output) / (a + b)
        return x0, x0 + output
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def ddim_move(output: torch.Tensor, sample: torch.Tensor, level_from: Level, level_to: Level,
              prediction_type: PredictionType) -> torch.Tensor:
    """Move a sample from one level to another along the model's predicted (x0, ε) (DDIM eq. 12, η = 0)."""
    if prediction_type == "flow":  # a + b = 1: the same move is the Euler step z + (σ_to − σ_from) v
        return sample + (level_to[1] - level_from[1]) * output
    # 1. predicted clean sample and noise at the current level
    x0, eps = split_prediction(output, sample, level_from, prediction_type)
    # 2. re-noise x0 to the new level along the same ε
    return level_to[0] * x0 + level_to[1] * eps


def ddim_step(output: torch.Tensor, sample: torch.Tensor, i: int, schedule: Schedule) -> torch.Tensor:
    """Sampling: z_{i−1} from z_i and the model output at (z_i, τ_i)."""
    return ddim_move(output, sample, schedule.level(i), schedule.level(i - 1), schedule.prediction_type)


def ddim_inverse_step(output: torch.Tensor, sample: torch.Tensor, i: int, schedule: Schedule) -> torch.Tensor:
    """Inversion: z_i from z_{i−1} and the model output at (z_{i−1}, τ_i)."""
    return ddim_move(output, sample, schedule.level(i - 1), schedule.level(i), schedule.prediction_type)


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the model output: u + w (c − u)."""
    return uncond + scale * (cond - uncond)


Predict = Callable[[torch.Tensor, int], torch.Tensor]  # (z_i, i) → model output at (z_i, τ_i)
Correct = Callable[[int, torch.Tensor], "torch.Tensor | None"]  # (i, z_{i−1}) → corrected z_{i−1} or None


def sample(predict: Predict, z_T: torch.Tensor, schedule: Schedule, correct: Correct | None = None,
           progress: Progress | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling z_T → z_0 (Song et al. 2021, eq. 12 with η = 0; flow matching: Euler).

    `correct(i, z_{i−1})` may replace each new latent (direct inversion's return to the pivot,
    Prompt-to-Prompt's local blend) or return None to keep it; `progress` hears a StepReport each step.
    """
    z, T = z_T, schedule.num_steps
    for i in range(T, 0, -1):
        # 1. the model's output at (z_i, τ_i), e.g. classifier-free guided
        out = predict(z, i)
        # 2. one DDIM step to level i − 1
        z = ddim_step(out, z, i, schedule)
        # 3. the caller's correction of z_{i−1}, if any
        if correct is not None:
            corrected = correct(i, z)
            z = z if corrected is None else corrected
        # 4. progress
        if progress is not None:
            progress(StepReport(T - i + 1, T, timestep=schedule.timestep(i)))
    return z
