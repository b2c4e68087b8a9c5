"""Configs written by older attnmt layouts: the classes whose module moved, old path -> new path.

A run folder's ``config.yaml``, a checkpoint's stored config and an export's ``attnmt.json`` name
classes by module path. When a class moves, its old path is added here, and
:func:`upgrade_targets` rewrites a stored config before anything reads, checks or builds it, so
runs and checkpoints made before the move still load, evaluate and resume
(``tests/test_legacy.py``, with a run folder saved from the earlier layout in ``tests/data``).
"""

from __future__ import annotations

from typing import Any

MOVED_TARGETS: dict[str, str] = {
    # the packages-by-stage layout (attnmt 0.1): training code moved under attnmt.train
    "attnmt.task.TranslationTask": "attnmt.train.task.TranslationTask",
    "attnmt.guided.GuidedAlignment": "attnmt.train.guided.GuidedAlignment",
    "attnmt.optim.ConstantWarmup": "attnmt.train.optim.ConstantWarmup",
    "attnmt.optim.InverseSqrtWarmup": "attnmt.train.optim.InverseSqrtWarmup",
    "attnmt.optim.LinearDecayWarmup": "attnmt.train.optim.LinearDecayWarmup",
    "attnmt.optim.PlateauWarmup": "attnmt.train.optim.PlateauWarmup",
    "attnmt.callbacks.LastCheckpoint": "attnmt.train.callbacks.LastCheckpoint",
    "attnmt.monitor.AttentionMonitor": "attnmt.train.monitor.AttentionMonitor",
    "attnmt.run_page.RunPage": "attnmt.train.run_page.RunPage",
    "attnmt.loggers.CSVLogger": "attnmt.train.loggers.CSVLogger",
    "attnmt.utils.checkpoint_io.AtomicCheckpointIO": "attnmt.train.checkpoint_io.AtomicCheckpointIO",
    "attnmt.evaluation.EvalSettings": "attnmt.eval.evaluate.EvalSettings",
    "attnmt.translate.DecodeSettings": "attnmt.decode.settings.DecodeSettings",
}


def upgrade_targets(node: Any) -> Any:
    """``node`` (a stored config, nested dicts and lists) with every moved ``_target_`` replaced by
    its new path, in place; other values are left as they are."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target in MOVED_TARGETS:
            node["_target_"] = MOVED_TARGETS[target]
        for value in node.values():
            upgrade_targets(value)
    elif isinstance(node, list):
        for value in node:
            upgrade_targets(value)
    return node
