"""Comparisons that hold on any CPU, BLAS and thread count: relative norms, not element-wise maxima."""

from __future__ import annotations

import torch


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """‖ours − reference‖ / ‖reference‖ over all elements (float64), the size of a difference against the signal."""
    ours, reference = ours.detach().double(), reference.detach().double()
    return float((ours - reference).norm() / reference.norm())
