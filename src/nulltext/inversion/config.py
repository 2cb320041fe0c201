"""The settings of one inversion (`InversionConfig`, the paper's defaults): no torch, so the CLI's
`--help` and argument checks import nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from nulltext.settings import SettingsError, check_finite, check_flag, check_whole

Method = Literal["null-text", "ddim", "negative-prompt", "direct"]
# how each step's ∅_t is optimised: preconditioned descent with secant step lengths (the default, ≈ 0.4× the
# UNet work), or the paper's Adam
Optimizer = Literal["secant", "adam"]


@dataclass
class InversionConfig:
    """Settings of one inversion, with the paper's defaults."""

    method: Method = "null-text"
    num_steps: int = 50  # DDIM steps T
    guidance_scale: float = 7.5  # w used for editing and reconstruction
    pivot_guidance_scale: float = 1.0  # w of the DDIM inversion that makes the pivot
    inner_steps: int = 10  # N: Adam iterations per timestep at most (optimizer="adam")
    learning_rate: float = 1e-2  # Adam lr at the first step, decayed linearly to half at the last
    early_stop: float = 1e-5  # stop the inner loop once the loss < early_stop + k · early_stop_growth
    early_stop_growth: float = 2e-5
    keep_pivot: bool = True  # store z*_0 … z*_T in the result
    optimizer: Optimizer = "secant"  # `secant_descent`; "adam": the paper's optimiser (`InversionConfig.paper()`)
    trials: int = 4  # secant: trials per timestep at most (the paper's N is 10): at most half Adam's UNet passes
    stall: float = 0.5  # secant: end a step once an accepted trial gains < this × the step's average gain per trial
    second_moment_decay: float = 0.9  # secant: β of the gradient's running second moment (the preconditioner)
    refine_last_step: bool = True  # secant: ∅_1 past the paper's threshold, to the stall rule or the cap

    def __post_init__(self) -> None:
        """Refuse settings no inversion can run with; the CLI and the library say the same."""
        if self.method not in get_args(Method):
            raise SettingsError(f"unknown inversion method {self.method!r} — use one of {', '.join(get_args(Method))}")
        check_whole(self.num_steps, "steps", 1)
        check_whole(self.inner_steps, "inner steps", 0)
        check_whole(self.trials, "trials", 0)
        for name, value in (("guidance", self.guidance_scale), ("pivot guidance", self.pivot_guidance_scale)):
            check_finite(value, name)
        check_finite(self.learning_rate, "lr", "1e-2")
        if self.learning_rate <= 0:
            raise SettingsError(f"lr {self.learning_rate} must be positive — use e.g. 1e-2")
        for name, value in (("early stop", self.early_stop), ("early stop growth", self.early_stop_growth)):
            check_finite(value, name, "1e-5")
            if value < 0:
                raise SettingsError(f"{name} {value} must be ≥ 0")
        check_flag(self.keep_pivot, "keep pivot")
        check_flag(self.refine_last_step, "refine last step")
        if self.optimizer not in get_args(Optimizer):
            raise SettingsError(f"unknown optimizer {self.optimizer!r} — use one of {', '.join(get_args(Optimizer))}")
        for name, value in (("stall", self.stall), ("second moment decay", self.second_moment_decay)):
            check_finite(value, name, "0.5")
            if not 0 <= value < 1:
                raise SettingsError(f"{name} {value} must be in [0, 1)")

    @classmethod
    def paper(cls, **changes) -> InversionConfig:
        """Algorithm 1 exactly as published: the paper's Adam (N = 10, lr 1e-2 decayed, its early stop)."""
        return cls(**{"optimizer": "adam", **changes})

    @classmethod
    def fast(cls, **changes) -> InversionConfig:
        """`secant_descent` in place of Adam — the default; kept for code written when it was a preset."""
        return cls(**{"optimizer": "secant", **changes})

    def learning_rate_at(self, k: int) -> float:
        """lr at outer step k = 0 … T−1: the paper's 1e-2 · (1 − k/100) for T = 50, as 1 − k/(2T)."""
        return self.learning_rate * (1 - k / (2 * self.num_steps))

    def threshold_at(self, k: int) -> float:
        """The loss below which outer step k = 0 … T−1 stops: the paper's early stop, 1e-5 + k · 2e-5.

        The secant's last step (t = 1) has none with `refine_last_step`: ∅_1's loss is the reconstruction's
        own latent error, and no later step corrects it; it stops at the stall rule or the trial cap.
        """
        if self.optimizer == "secant" and self.refine_last_step and k == self.num_steps - 1:
            return 0.0
        return self.early_stop + k * self.early_stop_growth
