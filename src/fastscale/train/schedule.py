"""Learning-rate schedules as multipliers of the peak LR: linear warmup, then cosine or linear decay
to a floor (Kaplan et al. 2020: 3000-step warmup, cosine to zero; Chinchilla: cosine to 10%)."""

from __future__ import annotations

import math

DECAYS = ("cosine", "linear", "constant")


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, decay: str = "cosine", min_lr_ratio: float = 0.1) -> float:
    """Multiplier of the peak LR used for optimizer step `step` (0-based): (step + 1) / warmup_steps
    during warmup, then from 1 down to min_lr_ratio at total_steps, held there afterwards."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * shape
