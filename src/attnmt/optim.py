"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from attnmt.errors import ConfigError


class InverseSqrtWarmup(LambdaLR):
    """Vaswani et al. (2017) section 5.3 ("Noam"): linear warm-up for ``warmup_steps``, then decay
    with the inverse square root of the step. Normalised so that the peak (at the end of warm-up)
    is the optimizer's ``lr``: ``lr * min(step / warmup, sqrt(warmup / step))``."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 4000):
        if warmup_steps < 1:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 1")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        step = step + 1
        return min(step / self.warmup_steps, (self.warmup_steps / step) ** 0.5)


class ConstantWarmup(LambdaLR):
    """Linear warm-up for ``warmup_steps``, then the optimizer's ``lr`` unchanged."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0):
        if warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
