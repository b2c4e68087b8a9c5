"""Ctrl-C during training stops like SIGTERM: at the end of the current step, with a checkpoint.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be: in the
middle of an optimizer step, a checkpoint write, a logger flush. Lightning then tears the run down
without saving. Here the first Ctrl-C only raises Lightning's own stop flag (the one SIGTERM
raises; under DDP rank 0's flag is broadcast to every rank before each batch), so training stops
between two batches, :class:`attnmt.train.callbacks.LastCheckpoint` writes ``last.ckpt`` and the run
prints the command that continues it. A second Ctrl-C aborts at once (a plain
``KeyboardInterrupt``), as does a Ctrl-C before training has started (nothing to save yet).
"""

from __future__ import annotations

import signal
import sys
import threading

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus


class StopOnCtrlC:
    """Context manager around ``trainer.fit``: ``received`` says whether a Ctrl-C stopped it."""

    def __init__(self, trainer: pl.Trainer):
        self.trainer = trainer
        self.received = False
        self._previous = None

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _training(self) -> bool:
        state = self.trainer.state
        return (
            state.fn == TrainerFn.FITTING
            and state.status == TrainerStatus.RUNNING
            and not self.trainer.sanity_checking
        )

    def _handle(self, signum, frame) -> None:
        if self.received or not self._training():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = True
        # Lightning's SIGTERM flag: checked between batches (and broadcast from rank 0 under DDP).
        self.trainer._signal_connector.received_sigterm = True
        if self.trainer.is_global_zero:
            print(
                "\nCtrl-C: stopping at the end of this step and saving last.ckpt (Ctrl-C again aborts at once)",
                file=sys.stderr, flush=True,
            )
