"""Range checks of settings, shared by the settings dataclasses, the .nti loader and the command line.

Each check raises `SettingsError` (a ValueError) with one line naming the setting, its command-line
option, the value and the allowed range — before any model work, so that NaN or absurd values never
reach sampling (a NaN guidance scale makes a NaN loss that would be blamed on the learning rate).
The checks take the dataclass duck-typed, so `InversionConfig.__post_init__` can call them without
an import cycle.
"""

from __future__ import annotations

import math
from typing import Any

METHODS = ("null-text", "ddim", "negative-prompt", "direct")
MODES = ("auto", "replace", "refine")
MAX_STEPS = 10_000  # far beyond any scheduler's training timesteps; the scheduler's own limit is checked by ddim
MAX_INNER_STEPS = 100_000

# dataclass field → the command-line option that sets it
OPTIONS = {
    "num_steps": "--steps", "guidance_scale": "--guidance", "pivot_guidance_scale": None, "inner_steps": "--inner-steps",
    "learning_rate": "--lr", "early_stop": None, "early_stop_growth": None, "blend_threshold": "--threshold",
    "blend_start": "--blend-start", "reweight": "--reweight", "cross_replace": "--cross", "self_replace": "--self",
    "word_cross_replace": "--word-cross", "mode": "--mode", "method": "--method",
}


class SettingsError(ValueError):
    """A setting outside its range; one line naming the setting, its option and the range."""


def _name(field: str) -> str:
    option = OPTIONS.get(field)
    return f"{field.replace('_', ' ')} ({option})" if option else field.replace("_", " ")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite number within [low, high] (or (low, high] when low_open), else SettingsError."""
    if not is_number(value) or not math.isfinite(value):
        raise SettingsError(f"{_name(field)} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'>' if low_open else '≥'} {low:g}" if high is None else f"{low:g}…{high:g}"
        raise SettingsError(f"{_name(field)} must be {bounds}, got {value!r}")
    return float(value)


def check_count(field: str, value: Any, low: int, high: int) -> int:
    """A whole number within [low, high], else SettingsError."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SettingsError(f"{_name(field)} must be a whole number from {low} to {high}, got {value!r}")
    return value


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"{_name(field)} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_inversion_config(config: Any) -> None:
    """Types and ranges of an InversionConfig (the scheduler's own step limit is checked by ddim.make_schedule)."""
    check_choice("method", config.method, METHODS)
    check_count("num_steps", config.num_steps, 1, MAX_STEPS)
    check_number("guidance_scale", config.guidance_scale)
    check_number("pivot_guidance_scale", config.pivot_guidance_scale)
    check_count("inner_steps", config.inner_steps, 0, MAX_INNER_STEPS)
    check_number("learning_rate", config.learning_rate, 0.0, low_open=True)
    check_number("early_stop", config.early_stop, 0.0)
    check_number("early_stop_growth", config.early_stop_growth, 0.0)
    if not isinstance(config.keep_pivot, bool):
        raise SettingsError(f"keep_pivot must be true or false, got {config.keep_pivot!r}")


def _check_range(field: str, value: Any) -> None:
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if len(parts) not in (1, 2):
        raise SettingsError(f"{_name(field)} must be a fraction or a (start, end) pair, got {value!r}")
    for part in parts:
        check_number(field, part, 0.0, 1.0)
    if len(parts) == 2 and parts[0] > parts[1]:
        raise SettingsError(f"{_name(field)} step range {tuple(parts)!r} must have start ≤ end")


def check_edit_config(config: Any) -> None:
    """Types and ranges of an EditConfig: fractions in 0…1, finite scales."""
    check_choice("mode", config.mode, MODES)
    _check_range("cross_replace", config.cross_replace)
    _check_range("self_replace", config.self_replace)
    for value in dict(config.word_cross_replace).values():
        _check_range("word_cross_replace", value)
    for word, scale in dict(config.reweight).items():
        if not is_number(scale) or not math.isfinite(scale):
            raise SettingsError(f"{_name('reweight')} scale of {word!r} must be a finite number, got {scale!r}")
    check_number("blend_threshold", config.blend_threshold, 0.0, 1.0)
    check_number("blend_start", config.blend_start, 0.0, 1.0)
