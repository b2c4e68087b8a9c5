"""Keep freed memory for reuse instead of handing large blocks back to the OS.

glibc serves allocations above a threshold (at most 32 MiB) with ``mmap`` and unmaps them on
free, so every step's large tensors (logits: positions x vocabulary) come back as fresh pages
that the kernel must fault in and zero; with ``mmap`` off and trimming raised they are reused
(what it saves: docs/performance.md). Set ``ATTNMT_MALLOPT=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve all allocations from the heap and return memory to the OS only above
    ``trim_threshold`` bytes of free space. True if applied (glibc on Linux)."""
    if os.environ.get("ATTNMT_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
