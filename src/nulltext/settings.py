"""Checks that the settings dataclasses run in `__post_init__`, so the library and the CLI refuse alike.

Each raises `SettingsError` (a ValueError) with one line naming the setting, the value and the
allowed range, before any model work: a NaN guidance scale never reaches sampling.
"""

from __future__ import annotations

import math
from nulltext.errors import NulltextError


class SettingsError(NulltextError, ValueError):
    """A setting outside its range; one line naming it, its value and the range."""


def check_whole(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SettingsError(f"{name} {value!r} must be a whole number ≥ {low}")


def check_finite(value, name: str, example: str = "7.5") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingsError(f"{name} {value!r} must be a finite number, e.g. {example}")


def check_fraction(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name} {value!r} must be a fraction from 0 to 1")


def check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise SettingsError(f"{name} {value!r} must be true or false")


def utf8_problem(text: str) -> str | None:
    """Where `text` cannot be written as UTF-8 ("byte 0xe9 at character 4": an undecodable byte kept as a
    surrogate escape; "U+D800 at character 1": a lone surrogate), or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        return f"{byte} at character {e.start + 1}"
    return None
