"""Learning-rate schedules: warmup, then constant, linear, cosine or warmup-stable-decay."""

from __future__ import annotations

import math

from llmbuild.backends.megatron.spec import Schedule


def lr_at(step: int, steps: int, peak: float, schedule: Schedule) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``steps``."""
    warmup, floor = schedule.warmup, min(schedule.min_lr, peak)
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule.kind == "constant":
        return peak
    span = max(steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if schedule.kind == "linear":
        return peak - (peak - floor) * progress
    if schedule.kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = steps - int(schedule.decay_fraction * steps)  # wsd
    if step < decay_start:
        return peak
    return peak - (peak - floor) * (step - decay_start) / max(steps - decay_start, 1)
