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


# ``compute_type``: the number format decoding computes in, in CTranslate2's words. attnmt's own
# search (a checkpoint) runs float32, or bfloat16/float16 under autocast; an export runs any type
# CTranslate2 has for the device (int8 ones included).
COMPUTE_TYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16")
TORCH_COMPUTE_TYPES = ("float32", "bfloat16", "float16")


def has_fast_bf16(device) -> bool:
    """A CUDA GPU of compute capability 8.0 or higher (bf16 tensor cores)."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def torch_compute_type(name: str, device, key: str = "compute_type") -> str:
    """What attnmt's own search computes in on ``device``: ``auto`` is bfloat16 on a GPU with fast
    bf16 and float32 elsewhere (a CPU decodes a handful of sentences at a time, where bf16 gains
    little); a one-line error naming ``key`` for a type it does not run."""
    if name not in COMPUTE_TYPES:
        raise ConfigError(f"{key}={name}: expected one of {', '.join(COMPUTE_TYPES)}")
    if name == "auto":
        return "bfloat16" if has_fast_bf16(device) else "float32"
    if name not in TORCH_COMPUTE_TYPES:
        raise ConfigError(f"{key}={name}: attnmt's own search computes in {', '.join(TORCH_COMPUTE_TYPES)}; "
                          "int8 types are CTranslate2's: export the model (attnmt-export) and decode the export")
    return name


def export_compute_type(name: str, device_type: str, quantization: str, key: str = "compute_type") -> str:
    """CTranslate2's compute type for an export stored as ``quantization`` on ``device_type``
    (``cpu`` or ``cuda``): ``auto``
    is float16 on a GPU (int8_float16 for an int8 export) and the export's own type on the CPU."""
    if name not in COMPUTE_TYPES:
        raise ConfigError(f"{key}={name}: expected one of {', '.join(COMPUTE_TYPES)}")
    if name != "auto":
        return name
    if device_type == "cuda":
        return "int8_float16" if quantization.startswith("int8") else "float16"
    return "default"
