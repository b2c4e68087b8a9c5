"""Configs read from files are data: a checkpoint's, an export's or a run folder's stored config
may name only attnmt's own classes as ``_target_``, each where it belongs.

Hydra's ``instantiate`` calls whatever a ``_target_`` names (``torch.load`` over a base64 payload,
``os.system``, ...); its block list is no security boundary. So before a stored config node is
built, every ``_target_`` in it is checked against :data:`STORED_TARGETS`: the classes attnmt's
own configs put at that key (``tests/test_trust.py`` checks that every ``_target_`` under
``conf/model`` and ``conf/data`` is listed). Anything else, nested or not, is refused with one line
naming the key, before any module it names is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnmt.errors import CheckpointError

# key in a stored training config -> the classes it may name
STORED_TARGETS: dict[str, frozenset[str]] = {
    "model": frozenset({
        "attnmt.models.rnn.BahdanauRNN",
        "attnmt.models.rnn.LuongRNN",
        "attnmt.models.transformer.Transformer",
    }),
    "model.attention": frozenset({"attnmt.models.attention.Attention"}),
    "data": frozenset({
        "attnmt.data.datamodule.SyntheticDataModule",
        "attnmt.data.multi30k.Multi30kDataModule",
        "attnmt.data.parallel.ParallelFilesDataModule",
    }),
}


def check_stored_targets(node: Any, key: str, source: str) -> None:
    """Refuse ``node`` (the stored config's ``key``, read from ``source``) if any ``_target_`` in it
    is not one of the classes allowed at its place."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            if "_target_" in value:
                target = value["_target_"]
                allowed = STORED_TARGETS.get(path, frozenset())
                if not isinstance(target, str) or target not in allowed:
                    where = f"one of {', '.join(sorted(allowed))}" if allowed else "none (no class belongs there)"
                    raise CheckpointError(
                        f"{source}: its stored config names {path}._target_={str(target)[:80]!r}, which attnmt "
                        f"does not build from a file (allowed there: {where}); refused without running it"
                    )
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(node, key)
