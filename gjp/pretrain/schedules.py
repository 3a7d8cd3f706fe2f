"""Training schedules as pure functions of the step (I-JEPA's, with GeoJEPA's values):
nothing to save or restore but the step, and each is testable at known steps.

- learning rate: a linear warm-up from ``start_factor × peak`` over the first
  ``warmup`` share of the steps, then a cosine down to ``final`` at the last step;
- weight decay: a cosine ramp from ``start`` up to ``end`` (regularise more as training
  settles);
- EMA momentum of the target encoder: a linear ramp from ``start`` to ``end`` (the target
  moves less and less).
"""

from __future__ import annotations

import math


def _progress(step: int, first: int, last: int) -> float:
    """Where ``step`` is between ``first`` and ``last`` (inclusive), in [0, 1]."""
    return min(1.0, max(0.0, (step - first) / max(1, last - first)))


def learning_rate(step: int, total: int, peak: float, *, warmup: float = 0.1, start_factor: float = 0.1,
                  final: float = 1e-6) -> float:
    warmup_steps = int(round(warmup * total))
    if step < warmup_steps:
        return peak * (start_factor + (1 - start_factor) * step / warmup_steps)
    t = _progress(step, warmup_steps, total - 1)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t))


def weight_decay(step: int, total: int, *, start: float = 0.04, end: float = 0.4) -> float:
    t = _progress(step, 0, total - 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def ema_momentum(step: int, total: int, *, start: float = 0.997, end: float = 0.99999) -> float:
    return start + (end - start) * _progress(step, 0, total - 1)
