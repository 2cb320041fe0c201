"""The one progress protocol: every long loop (sampling, inversion, studies, benchmarks, batch runs) calls
`progress(StepReport(...))` after each of its steps; bars, the web app and logs read what they need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StepReport:
    """What a progress callback is told after each step."""

    step: int  # steps done, 1 … total
    total: int
    label: str = ""  # what is running, e.g. a study's setting and photo
    timestep: int | None = None  # τ of a sampling or inversion step
    inner_iterations: int | None = None  # inversion: optimiser iterations of this step (the most over a batch)
    loss: float | None = None  # inversion: final loss of this step (the highest over a batch)


Progress = Callable[[StepReport], None]
