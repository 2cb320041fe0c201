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

from nulltext.errors import NulltextError, first_line, short
from nulltext.progress import Progress, StepReport

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


class ScheduleError(NulltextError, ValueError):
    """A scheduler config or step count that makes no valid DDIM schedule; one line saying what and the limit."""


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_BOOL, _INT, _NUMBER, _TEXT = "true or false", "a whole number", "a finite number", "a string"
# the DDIM config keys nulltext reads and what each must be; other keys (diffusers' bookkeeping,
# settings of other schedulers) are ignored, as diffusers itself ignores them
_CONFIG_TYPES = {
    "num_train_timesteps": _INT, "beta_start": _NUMBER, "beta_end": _NUMBER, "beta_schedule": _TEXT,
    "clip_sample": _BOOL, "set_alpha_to_one": _BOOL, "steps_offset": _INT, "prediction_type": _TEXT,
    "thresholding": _BOOL, "dynamic_thresholding_ratio": _NUMBER, "clip_sample_range": _NUMBER,
    "sample_max_value": _NUMBER, "timestep_spacing": _TEXT, "rescale_betas_zero_snr": _BOOL,
}


def _is(value, kind: str) -> bool:
    import math

    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, str)


def check_scheduler_config(config) -> dict:
    """The DDIM keys of a scheduler config, type-checked; raises ScheduleError naming the first bad one."""
    if not isinstance(config, dict):
        raise ScheduleError(f"the scheduler config is a {type(config).__name__}, not a JSON object")
    known = {k: v for k, v in config.items() if k in _CONFIG_TYPES or k == "trained_betas" or k == "_use_default_values"}
    for key, value in known.items():
        if key == "_use_default_values":  # diffusers' own: these keys take their defaults
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ScheduleError("scheduler setting _use_default_values is not a list of names")
            continue
        if key == "trained_betas":
            if value is not None and not (isinstance(value, list) and value and all(_is(b, _NUMBER) for b in value)):
                raise ScheduleError("scheduler setting trained_betas is not a list of finite numbers")
        elif not _is(value, _CONFIG_TYPES[key]):
            raise ScheduleError(f"scheduler setting {key} = {short(repr(value))} is not {_CONFIG_TYPES[key]}")
    if known.get("timestep_spacing", "leading") not in TIMESTEP_SPACINGS:
        raise ScheduleError(f"scheduler timestep_spacing {short(repr(known['timestep_spacing']))} is not one of "
                            + ", ".join(TIMESTEP_SPACINGS))
    if known.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise ScheduleError(f"scheduler prediction_type {short(repr(known['prediction_type']))} is not one of "
                            + ", ".join(PREDICTION_TYPES))
    if not 2 <= known.get("num_train_timesteps", 1000) <= 100_000 or not 0 <= known.get("steps_offset", 0) < 1000:
        raise ScheduleError("scheduler num_train_timesteps must be 2…100000 and steps_offset 0…999")
    betas, n = known.get("trained_betas"), known.get("num_train_timesteps", 1000)
    if betas is not None and len(betas) != n:  # diffusers would index past them
        raise ScheduleError(f"scheduler trained_betas has {len(betas)} values but num_train_timesteps is {n} — "
                            "give one beta per training timestep")
    return known


def _ddim_scheduler(config: dict):
    """diffusers' DDIMScheduler for a checked config, built without its log lines; ScheduleError if it refuses."""
    import logging
    import warnings

    from diffusers import DDIMScheduler

    known = check_scheduler_config(config)
    logger = logging.getLogger("diffusers")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DDIMScheduler.from_config(known)
    except (NotImplementedError, ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        # what diffusers and torch raise on values it cannot build (an unknown beta schedule, betas torch
        # refuses…); anything else is a bug in nulltext and keeps its traceback
        raise ScheduleError(f"diffusers' DDIMScheduler refuses the scheduler config: {first_line(e, 120)}") from None
    finally:
        logger.setLevel(level)



def _timesteps(sched, num_steps: int) -> torch.Tensor | None:
    """diffusers' DDIM timesteps for num_steps, or None if they do not fit the training timesteps."""
    try:
        sched.set_timesteps(num_steps)
    except (ValueError, IndexError, RuntimeError, ZeroDivisionError):
        return None
    t = sched.timesteps
    if t.numel() != num_steps or int(t.min()) < 0 or int(t.max()) >= sched.config.num_train_timesteps:
        return None  # e.g. "leading" spacing with steps_offset 1 at T = num_train_timesteps reaches index T
    return t


def make_schedule(scheduler_config: dict, num_steps: int) -> Schedule:
    """The DDIM schedule of a model's scheduler config, with its timestep spacing and final ᾱ.

    Raises ScheduleError (one line) for a config diffusers cannot use or more steps than it allows.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ScheduleError(f"the number of DDIM steps must be a whole number ≥ 1, got {short(repr(num_steps))}")
    sched = _ddim_scheduler(scheduler_config)
    found = _timesteps(sched, num_steps)
    if found is None:
        n, spacing = int(sched.config.num_train_timesteps), sched.config.timestep_spacing
        fits = next((k for k in range(min(num_steps, n), max(0, min(num_steps, n) - 1000), -1)
                     if _timesteps(sched, k) is not None), None)
        raise ScheduleError(f"{num_steps} DDIM steps do not fit this model's scheduler ({n} training timesteps, "
                            f"{spacing} spacing, steps_offset {sched.config.steps_offset})"
                            + (f" — use e.g. --steps {fits}" if fits else " — check its settings"))
    timesteps = found.flip(0).long()  # diffusers gives them descending
    ac = sched.alphas_cumprod.double()
    alphas = torch.cat([torch.tensor([float(sched.final_alpha_cumprod)], dtype=torch.float64), ac[timesteps]])
    if not (torch.isfinite(alphas).all() and (alphas > 0).all() and (alphas <= 1).all()):
        raise ScheduleError("the scheduler config gives ᾱ outside (0, 1] — check its beta_start, beta_end and betas")
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
Correct = Callable[[int, torch.Tensor], "torch.Tensor | None"]  # (i, z_{i−1}) → corrected z_{i−1} or None


def sample(predict: Predict, z_T: torch.Tensor, schedule: Schedule, correct: Correct | None = None,
           progress: Progress | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling z_T → z_0 (Song et al. 2021, eq. 12 with η = 0).

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
