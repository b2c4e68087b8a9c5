"""Learning-rate schedules, stepped once per optimizer step.

Every schedule is a :class:`Schedule`: a ``LambdaLR`` whose factor depends on the update number
and, for some, on two more things the training task reports through the same two methods:
:meth:`Schedule.tick` (the wall-clock time, for a schedule with a time budget) before each update
and :meth:`Schedule.observe` (the validation score, for a schedule that follows it) after each
validation. Those that do not need them inherit the methods that do nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Annotated

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from attnmt.errors import ConfigError
from attnmt.utils.schema import Gt, Lt, NonNegativeFloat, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

FUSED_DEVICES = ("cpu", "cuda")


def prefer_fused(factory: Callable[..., Optimizer], precision: str, device_type: str) -> Callable[..., Optimizer]:
    """``factory`` (a partial of an optimizer with ``fused=None``) with ``fused`` chosen: True on
    CPU and CUDA unless ``precision`` is 16-mixed (Lightning cannot clip the gradients of a fused
    step that unscales them itself). Other factories come back unchanged."""
    if (
        not isinstance(factory, functools.partial)
        or "fused" not in factory.keywords
        or factory.keywords["fused"] is not None
    ):
        return factory
    fused = device_type in FUSED_DEVICES and precision != "16-mixed"
    return functools.partial(factory, fused=fused)


class Schedule(LambdaLR):
    """A learning-rate factor per update, with the two reports the training task makes."""

    follows_clock = False  # True: wants tick() with rank 0's clock before each update

    def elapsed(self) -> float:
        """Seconds of this schedule so far (across resumes), for a schedule that follows the clock."""
        return 0.0

    def tick(self, now: float | None = None) -> None:
        """The time (seconds, rank 0's, see :meth:`elapsed`) the next update's factor uses."""

    def observe(self, score: float) -> None:
        """One validation's score (higher is better)."""


class InverseSqrtWarmup(Schedule):
    """Vaswani et al. (2017) section 5.3 ("Noam"): linear warm-up for ``warmup_steps``, then decay
    with the inverse square root of the step. Normalised so that the peak (at the end of warm-up)
    is the optimizer's ``lr``: ``lr * min(step / warmup, sqrt(warmup / step))``."""

    def __init__(self, optimizer: Optimizer, warmup_steps: PositiveInt = 100):
        if warmup_steps < 1:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 1")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        step = step + 1
        return min(step / self.warmup_steps, (self.warmup_steps / step) ** 0.5)


class ConstantWarmup(Schedule):
    """Linear warm-up for ``warmup_steps``, then the optimizer's ``lr`` unchanged."""

    def __init__(self, optimizer: Optimizer, warmup_steps: NonNegativeInt = 0):
        if warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


class LinearDecayWarmup(Schedule):
    """Linear warm-up for ``warmup_steps``, then a straight line from the optimizer's ``lr`` down to
    ``min_lr`` at the end of the run's budget (and ``min_lr`` after it). For a fixed budget,
    decaying to (near) zero exactly when it ends anneals the last epochs instead of stopping at a
    high learning rate (Li et al., 2020, "Budgeted training").

    The budget is ``total_steps`` updates, or ``total_time`` of wall-clock time (seconds, or
    Lightning's ``"DD:HH:MM:SS"`` as in ``trainer.max_time``), or both (whichever ends first). A
    time budget makes the line end with ``trainer.max_time`` on any machine, whatever its speed;
    the learning rate then depends on the clock, so a resumed run (the elapsed time is part of
    ``state_dict``) is not bit-for-bit the uninterrupted one. The training task calls :meth:`tick`
    before each step of the schedule with the time of rank 0, so that every process of a
    distributed run uses the same rate.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, warmup_steps: NonNegativeInt = 100,
                 min_lr: NonNegativeFloat = 0.0, total_time: float | str | None = None):
        self.total_time = parse_duration(total_time, "scheduler.total_time")
        self.total_steps = total_steps if total_steps is not None and total_steps >= 0 else None
        if self.total_time is None and (self.total_steps is None or self.total_steps < 1):
            raise ConfigError(f"scheduler.total_steps={total_steps} must be >= 1 (the number of "
                              "updates the run will make, e.g. ${trainer.max_steps}), or set "
                              "scheduler.total_time (e.g. ${trainer.max_time})")
        if warmup_steps < 0 or (self.total_steps is not None and warmup_steps >= self.total_steps):
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 0 and below "
                              f"scheduler.total_steps={total_steps}")
        if min_lr < 0:
            raise ConfigError(f"scheduler.min_lr={min_lr} must be >= 0")
        self.warmup_steps, self.min_lr = warmup_steps, min_lr
        peak = max(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
        self.floor = min(1.0, min_lr / peak) if peak > 0 else 0.0
        # The clock: seconds before this process (from a resumed state) plus this process's own.
        self.elapsed_before, self.now, self.warmup_end_time = 0.0, None, None
        self._started = time.monotonic()
        self.follows_clock = self.total_time is not None
        super().__init__(optimizer, self.factor)

    def elapsed(self) -> float:
        """Seconds of this schedule so far, across resumes."""
        return self.elapsed_before + time.monotonic() - self._started

    def tick(self, now: float | None = None) -> None:
        """Fix the time the next step of the schedule uses (default: :meth:`elapsed`)."""
        self.now = self.elapsed() if now is None else now

    def factor(self, step: int) -> float:
        # ``step`` counts updates from 0: update ``warmup_steps`` runs at the peak, the last one
        # (``total_steps - 1``) at 1 / (total_steps - warmup_steps) of the way above min_lr.
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        left = 1.0
        if self.total_steps is not None:
            left = max(0.0, (self.total_steps - step) / (self.total_steps - self.warmup_steps))
        if self.total_time is not None:
            now = self.elapsed() if self.now is None else self.now
            if self.warmup_end_time is None:  # the line starts where warm-up ended, at the peak
                self.warmup_end_time = min(now, self.total_time)
            span = self.total_time - self.warmup_end_time
            left = min(left, max(0.0, (self.total_time - now) / span) if span > 0 else 0.0)
        return self.floor + (1.0 - self.floor) * left

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["elapsed_before"], state["now"] = self.elapsed(), None
        state.pop("_started", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._started = time.monotonic()


def parse_duration(value: float | str | None, key: str) -> float | None:
    """Seconds from a number of seconds or Lightning's ``"DD:HH:MM:SS"``; ``None`` stays ``None``."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [float(p) for p in value.split(":")]
            if len(parts) != 4:
                raise ValueError
            seconds = ((parts[0] * 24 + parts[1]) * 60 + parts[2]) * 60 + parts[3]
        else:
            seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(f"{key}={value!r} must be a positive number of seconds or 'DD:HH:MM:SS' "
                          "(e.g. '00:01:00:00' for one hour)")
    return seconds


class PlateauWarmup(Schedule):
    """Linear warm-up for ``warmup_steps``, then the optimizer's ``lr``, multiplied by ``factor``
    each time more than ``patience`` validations in a row bring no better BLEU, never below
    ``min_lr`` (the "plateau" schedule of Joey NMT and fairseq's ``reduce_lr_on_plateau``).

    Stepped every optimizer step like the other schedules; the training task reports each
    validation score to :meth:`observe`. The score history is part of ``state_dict`` (resumes).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: NonNegativeInt = 0,
                 factor: Annotated[float, Gt(0), Lt(1)] = 0.5, patience: NonNegativeInt = 2,
                 min_lr: NonNegativeFloat = 1e-5):
        if warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"scheduler.factor={factor} must be between 0 and 1 (exclusive)")
        if patience < 0:
            raise ConfigError(f"scheduler.patience={patience} must be >= 0")
        if min_lr < 0:
            raise ConfigError(f"scheduler.min_lr={min_lr} must be >= 0")
        self.warmup_steps, self.factor_on_plateau = warmup_steps, factor
        self.patience, self.min_lr = patience, min_lr
        self.scale, self.best, self.bad_validations = 1.0, None, 0
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.scale

    def observe(self, score: float) -> None:
        """One validation's score (higher is better)."""
        if self.best is None or score > self.best:
            self.best, self.bad_validations = score, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.patience:
            self.bad_validations = 0
            floor = min(self.min_lr / base for base in self.base_lrs) if self.min_lr else 0.0
            if self.scale > floor:
                self.scale = max(self.scale * self.factor_on_plateau, floor)
                log.info("Validation BLEU has not improved on %.2f for %d validations: learning rate x%g",
                         self.best, self.patience + 1, self.scale)
