"""The levels of a sampling run, from a model's own scheduler config: DDIM's ᾱ or flow matching's σ.

Notation (the papers' ↔ the code's):
    τ_1 < … < τ_T      `schedule.timesteps` (ascending; index i−1 holds τ_i), what the model is given
    level i            z_i = a_i x0 + b_i ε, with (a_i, b_i) = `schedule.level(i)`; level 0 is the clean latent
    DDPM models        a = √ᾱ(τ_i), b = √(1 − ᾱ(τ_i)); level 0 has the scheduler's "final" ᾱ (Song et al. 2021)
    flow matching      a = 1 − σ_i, b = σ_i; level 0 has σ = 0 (SD 3.x: Esser et al. 2024, rectified flow)

A DDPM model's config (DDIMScheduler's keys: SD 1.x, 2.x, SDXL) gives diffusers' DDIM timesteps and
ᾱ; a flow-matching config (FlowMatchEulerDiscreteScheduler's: SD 3.x) gives that scheduler's own
shifted sigmas and timesteps (σ·1000), so a replay by the stock pipeline takes the same steps.
Pure data: no models, no prompts; `nulltext.core.ddim` steps between the levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from nulltext.errors import NulltextError, first_line, short

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]


@dataclass(frozen=True)
class Schedule:
    """The timesteps of a run and the noise level of each of its levels."""

    timesteps: torch.Tensor  # (T,) ascending τ_1 … τ_T: long for DDPM models, float32 for flow matching
    alphas: torch.Tensor  # (T+1,) float64, ᾱ at levels 0 … T (flow matching: the ᾱ of the same signal-to-noise ratio)
    prediction_type: PredictionType  # "flow": the model predicts the velocity ε − x0
    sigmas: torch.Tensor | None = None  # (T+1,) float64, flow matching's σ at levels 0 … T

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def timestep(self, i: int) -> int | float:
        """τ_i, the model's timestep for the step between levels i−1 and i (1 ≤ i ≤ T)."""
        t = self.timesteps[i - 1]
        return float(t) if t.is_floating_point() else int(t)

    def level(self, i: int) -> tuple[float, float]:
        """(a_i, b_i): level i's latent is a_i x0 + b_i ε."""
        if self.sigmas is not None:
            sigma = float(self.sigmas[i])
            return 1.0 - sigma, sigma
        alpha = float(self.alphas[i])
        return alpha ** 0.5, (1 - alpha) ** 0.5


class ScheduleError(NulltextError, ValueError):
    """A scheduler config or step count that makes no valid schedule; one line saying what and the limit."""


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # a DDPM config's; flow matching's is "flow"
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
    except (NotImplementedError, RuntimeError) as e:
        # what diffusers and torch raise on a checked config they cannot build: an unknown beta schedule
        # (NotImplementedError), betas whose square root is complex (RuntimeError from torch.linspace), each
        # tested; anything else is a bug in nulltext and keeps its traceback
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


def _ddim_schedule(scheduler_config: dict, num_steps: int) -> Schedule:
    """The DDIM schedule of a DDPM model's scheduler config, with its timestep spacing and final ᾱ."""
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


# -- flow matching (SD 3.x) ---------------------------------------------------------------------------

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
# the flow-matching keys nulltext reads; what must hold for a fixed (not resolution-dependent) schedule
_FLOW_TYPES = {"num_train_timesteps": _INT, "shift": _NUMBER, "use_dynamic_shifting": _BOOL, "invert_sigmas": _BOOL,
               "stochastic_sampling": _BOOL, "use_karras_sigmas": _BOOL, "use_exponential_sigmas": _BOOL,
               "use_beta_sigmas": _BOOL}


def is_flow_config(config) -> bool:
    """Whether a scheduler config is flow matching's (SD 3.x) rather than a DDPM model's."""
    return isinstance(config, dict) and (config.get("_class_name") == FLOW_SCHEDULER
                                         or ("shift" in config and "beta_schedule" not in config))


def _flow_schedule(config: dict, num_steps: int) -> Schedule:
    """The flow-matching scheduler's own shifted sigmas and timesteps (σ·N_train) for num_steps."""
    import logging

    from diffusers import FlowMatchEulerDiscreteScheduler

    for key, kind in _FLOW_TYPES.items():
        if key in config and not _is(config[key], kind):
            raise ScheduleError(f"scheduler setting {key} = {short(repr(config[key]))} is not {kind}")
    for key in ("use_dynamic_shifting", "invert_sigmas", "stochastic_sampling"):
        if config.get(key):
            raise ScheduleError(f"the flow-matching scheduler sets {key}, which nulltext does not follow (its steps "
                                "would depend on the image size or on noise) — set it to false in scheduler_config.json")
    if not 2 <= config.get("num_train_timesteps", 1000) <= 100_000 or not 0 < config.get("shift", 1.0) <= 1000:
        raise ScheduleError("scheduler num_train_timesteps must be 2…100000 and shift in (0, 1000]")
    logger = logging.getLogger("diffusers")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        sched = FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        sched.set_timesteps(num_steps)
    except (ImportError, ValueError) as e:
        # what it raises on settings it cannot follow: two sigma kinds at once or an unknown time_shift_type
        # (ValueError), beta sigmas without scipy (ImportError); anything else keeps its traceback
        raise ScheduleError(f"diffusers' {FLOW_SCHEDULER} refuses the scheduler config: {first_line(e, 120)}") from None
    finally:
        logger.setLevel(level)
    sigmas, timesteps = sched.sigmas.double().flip(0), sched.timesteps.float().flip(0)  # ascending: level 0 is σ = 0
    if sigmas.numel() != num_steps + 1 or timesteps.numel() != num_steps or float(sigmas[0]) != 0.0 \
            or not (torch.isfinite(sigmas).all() and (sigmas[1:] > sigmas[:-1]).all() and float(sigmas[-1]) <= 1.0):
        raise ScheduleError(f"the flow-matching scheduler gives no increasing σ from 0 to at most 1 for {num_steps} "
                            "steps — check its shift and sigma settings")
    alphas = (1 - sigmas) ** 2 / ((1 - sigmas) ** 2 + sigmas ** 2)  # ᾱ of the same signal-to-noise ratio
    return Schedule(timesteps, alphas, "flow", sigmas)


def make_schedule(scheduler_config: dict, num_steps: int) -> Schedule:
    """The schedule of a model's scheduler config: DDIM's for DDPM models, the flow-matching scheduler's for SD 3.x.

    Raises ScheduleError (one line) for a config diffusers cannot use or more steps than it allows.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ScheduleError(f"the number of sampling steps must be a whole number ≥ 1, got {short(repr(num_steps))}")
    if is_flow_config(scheduler_config):
        return _flow_schedule(scheduler_config, num_steps)
    return _ddim_schedule(scheduler_config, num_steps)
