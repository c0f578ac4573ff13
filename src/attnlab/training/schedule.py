"""Learning-rate schedules, as absolute rates per optimiser step (1-based)."""

from __future__ import annotations

import math

SCHEDULES = ("noam", "inverse_sqrt", "constant", "cosine")


def learning_rate(
    step: int,
    schedule: str,
    lr: float,
    warmup_steps: int,
    d_model: int,
    lr_scale: float = 1.0,
    total_steps: float = 0,
) -> float:
    """noam: the paper's lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).
    inverse_sqrt: the same shape with its peak set to `lr` (fairseq). constant / cosine:
    linear warm-up to `lr`, then flat or a half cosine to 0 at `total_steps`. Only cosine reads
    `total_steps`, which is infinite for a run without an end (trainer.max_epochs=-1): cosine then
    stays at its peak, and `config.check_trainer` refuses that combination."""
    step = max(step, 1)
    warm = max(warmup_steps, 1)
    if schedule == "noam":
        return lr_scale * d_model**-0.5 * min(step**-0.5, step * warm**-1.5)
    if schedule == "inverse_sqrt":
        return lr * min(step / warm, math.sqrt(warm / step))
    ramp = min(1.0, step / warm)
    if schedule == "constant":
        return lr * ramp
    if schedule == "cosine":
        progress = min(1.0, max(0, step - warm) / max(1, total_steps - warm))
        return lr * ramp * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule={schedule!r} is not one of {list(SCHEDULES)}")
