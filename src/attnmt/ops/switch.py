"""Whether the fast kernels run: ``ATTNMT_PLAIN_OPS=1`` in the environment turns them off (tests
set :data:`ENABLED`)."""

from __future__ import annotations

import os

import torch

ENABLED = os.environ.get("ATTNMT_PLAIN_OPS", "") in ("", "0")


def enabled() -> bool:
    """Whether the fast kernels run. Inside code that ``torch.compile`` traces, never: the compiler
    fuses the plain formulation itself."""
    return ENABLED and not torch.compiler.is_compiling()
