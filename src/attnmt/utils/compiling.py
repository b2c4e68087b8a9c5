"""``task.compile``: run the training step through ``torch.compile``.

``false`` (eager), ``true`` (the compiler's default mode) or a mode name. Shapes are compiled as
dynamic from the first batch (token-budget batches vary in both sentences and length), so one
compilation serves every batch; ``data.pad_to_multiple`` rounds lengths up to cut the variety
further. What is compiled keeps its parameters and state-dict keys (no wrapper prefix), so
checkpoints, resume, averaging, evaluation and export do not know whether training compiled.
"""

from __future__ import annotations

from typing import Any

from attnmt.errors import ConfigError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(value: Any) -> dict | None:
    """The ``torch.compile`` keyword arguments ``task.compile=value`` stands for (None: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return {"dynamic": True}
    if isinstance(value, str) and value in MODES:
        return {"dynamic": True, "mode": value}
    raise ConfigError(f"task.compile={value!r} must be false, true or one of {', '.join(MODES)}")
