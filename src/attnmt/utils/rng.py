"""Every random number generator's state, to save in a checkpoint and restore on resume.

Kept as tensors and plain Python values only, so that a checkpoint loads with
``torch.load(weights_only=True)`` (numpy's state array is stored as a list of ints)."""

from __future__ import annotations

import random

import numpy as np
import torch


def get_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]  # keys: a list (this format) or an array (older checkpoints)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
