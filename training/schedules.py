"""Per-iteration schedules (DINOv2's `CosineScheduler`): optional frozen span, linear warmup, cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """`start_warmup` → `base` linearly over `warmup` steps after `freeze` steps at 0, then cosine to `final`.

    Past `total` the value stays at `final`, so a run extended beyond its plan does not wrap around.
    """

    base: float
    final: float
    total: int
    warmup: int = 0
    start_warmup: float = 0.0
    freeze: int = 0

    def __call__(self, step: int) -> float:
        if step < self.freeze:
            return 0.0
        step -= self.freeze
        if step < self.warmup:
            return self.start_warmup + (self.base - self.start_warmup) * step / self.warmup
        span = max(1, self.total - self.freeze - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * progress))
