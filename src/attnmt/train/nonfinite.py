"""What training does about a non-finite loss or gradient: stop, naming the step and the last good
checkpoint (``task.nonfinite=stop``, the default), or skip the batch and count it (``skip``).

The decision is made on the device, so that a training step never waits for the host: each
update's verdict (loss and gradient norm finite?) is folded into a few device tensors, the update
itself is skipped by the optimizer (a fused optimizer's ``found_inf``, which it reads on the
device), and the host looks at the verdicts later (:meth:`NonFiniteGuard.poll`): before the next
batch where the copy has already arrived, and always before a checkpoint is written and when
training ends. A skipped update leaves weights and optimizer state as they were, so a run stopped
one step late has lost nothing. An optimizer that cannot skip on the device falls back to reading
the verdict in the step (:meth:`NonFiniteGuard.settle`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytorch_lightning as pl
import torch
from torch import Tensor

from attnmt.errors import TrainingError

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")
# The device record, one float64 vector: how many updates were non-finite, then (step, loss, norm)
# of the first and of the last of them (step -1: none yet).
COUNT, FIRST, LAST = 0, slice(1, 4), slice(4, 7)
EMPTY = [0.0, -1.0, 0.0, 0.0, -1.0, 0.0, 0.0]


def gradient_norm(parameters) -> Tensor | None:
    """The global L2 norm of the gradients (None when no parameter has one), on the device."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a device-side ``found_inf`` flag (the fused Adam, AdamW
    and SGD do: it is how a gradient scaler skips their steps)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


class NonFiniteGuard:
    def __init__(self, policy: str):
        self.policy = policy
        self.resumed_skips = 0  # skipped batches before this process (from the checkpoint)
        self._record: Tensor | None = None  # EMPTY's layout, on the device
        self._host: Tensor | None = None  # its latest copy on the host (pinned on CUDA)
        self._copied: torch.cuda.Event | None = None  # set when that copy has arrived
        self._seen = 0  # verdicts the host has acted on
        self._sizes: OrderedDict[int, int] = OrderedDict()  # step -> sentences, for messages

    @property
    def skipped_batches(self) -> int:
        """Batches skipped so far (policy skip); reads the device record."""
        self.poll(wait=True)
        return self.resumed_skips + self._seen

    def record(self, step: int, sentences: int, loss: Tensor, norm: Tensor | None) -> Tensor:
        """Fold this update's verdict into the record; returns ``bad`` (a 0-d bool tensor, on the
        device): the loss or the gradient norm is not finite. Reads nothing back."""
        bad = ~torch.isfinite(loss)
        if norm is not None:
            bad = bad | ~torch.isfinite(norm)
        if self._record is None:
            self._record = loss.new_zeros(len(EMPTY), dtype=torch.float64)
            self._record[1], self._record[4] = -1.0, -1.0  # fills, no copy from the host
        entry = torch.stack([
            self._record.new_full((), float(step)),
            loss.detach().to(torch.float64),
            (norm if norm is not None else loss).detach().to(torch.float64),
        ])
        first_unset = self._record[1] < 0
        rec = self._record
        self._record = torch.cat([
            rec[:1] + bad.to(torch.float64),
            torch.where(bad & first_unset, entry, rec[FIRST]),
            torch.where(bad, entry, rec[LAST]),
        ])
        self._sizes[step] = sentences
        while len(self._sizes) > 256:
            self._sizes.popitem(last=False)
        self._publish()
        return bad

    def device_count(self) -> Tensor:
        """Non-finite updates recorded by this process, as a device tensor (for logging)."""
        return self._record[COUNT]

    def _publish(self) -> None:
        """Start copying the record to the host without waiting for it."""
        if self._record.device.type != "cuda":
            self._host = self._record
            return
        if self._host is None:
            self._host = torch.empty_like(self._record, device="cpu").pin_memory()
            self._copied = torch.cuda.Event()
        self._host.copy_(self._record, non_blocking=True)
        self._copied.record()

    def poll(self, trainer: pl.Trainer | None = None, wait: bool = False) -> None:
        """Act on the verdicts the host can see: with ``wait``, all of them (one wait for the
        device); without, only those already copied. Policy stop raises :class:`TrainingError`
        naming the first non-finite step; skip logs each newly skipped one."""
        if self._host is None:
            return
        if self._copied is not None:
            if not wait and not self._copied.query():
                return
            self._copied.synchronize()
        values = self._host.tolist()
        count = int(values[COUNT])
        if count == self._seen:
            return
        if self.policy == "stop":
            step, loss, norm = values[FIRST]
            raise TrainingError(
                f"step {int(step)}: {self._what(loss, norm)}{self._size(int(step))}; training stopped. "
                f"Last good checkpoint: {last_checkpoint(trainer)}. "
                "Lower optimizer.lr, or set task.nonfinite=skip to skip such batches"
            )
        step, loss, norm = values[LAST]
        self._seen = count
        log.warning("step %d: %s%s; skipped (%d so far)", int(step), self._what(loss, norm),
                    self._size(int(step)), self.resumed_skips + count)

    def settle(self, trainer: pl.Trainer, bad: Tensor) -> bool:
        """For an optimizer that cannot skip on the device: read this update's verdict now (one
        wait for the device) and act on it; True when the update must be skipped."""
        if not bool(bad):
            return False
        self.poll(trainer, wait=True)
        return True

    def reset(self) -> None:
        """Forget the record (a resumed run's count comes from its checkpoint)."""
        self._record = self._host = self._copied = None
        self._seen = 0

    @staticmethod
    def _what(loss: float, norm: float) -> str:
        if loss != loss or loss in (float("inf"), float("-inf")):
            return f"loss is {loss}"
        return f"gradient norm is {norm}"

    def _size(self, step: int) -> str:
        n = self._sizes.get(step)
        return "" if n is None else f" (batch of {n} sentences)"


def last_checkpoint(trainer: pl.Trainer | None) -> str:
    """The newest checkpoint written by a callback that records its step (``last.ckpt``)."""
    saved = [] if trainer is None else [
        (cb.last_saved_step, str(cb.path)) for cb in trainer.checkpoint_callbacks
        if getattr(cb, "last_saved_step", None) is not None
    ]
    if not saved:
        return "none written yet"
    step, path = max(saved)
    return f"{path} (step {step})"
