"""Where decoding runs (``decode.device`` of evaluate.py, ``device=`` of attnmt-translate):
``auto`` is the current CUDA GPU where one is visible, else the CPU (as fairseq does);
``cpu``, ``cuda`` and ``cuda:N`` ask for one. Training's device is Lightning's ``trainer.accelerator``."""

from __future__ import annotations

import re

from attnmt.errors import ConfigError

DEVICES = "auto, cpu, cuda or cuda:N"


def decode_device(name: str, key: str = "decode.device"):
    """``name`` as a :class:`torch.device`, or a one-line error naming ``key`` and what is valid here."""
    import torch

    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError(f"{key}={name}: expected {DEVICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={name}: no CUDA device is visible here; use {key}=cpu (or auto)")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key}={name}: {count} CUDA device(s) visible here (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
