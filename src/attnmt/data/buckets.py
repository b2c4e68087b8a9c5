"""Token-budget batches of length-sorted examples, in plain numpy: what
:class:`attnmt.data.batching.TokenBucketBatchSampler` cuts an epoch into, and what decoding with
CTranslate2 uses without importing torch. A batch of ``n`` examples whose longest is ``L`` tokens
costs ``n * L``; every batch keeps that at or below ``max_tokens``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_budget_batches(lengths: Sequence[int], max_tokens: int, order: Sequence[int]) -> list[list[int]]:
    """Cut ``order`` (indices, any order) into batches with ``n * max_len <= max_tokens``."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        length = lengths[i]
        if batch and (len(batch) + 1) * max(longest, length) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, length)
    if batch:
        batches.append(batch)
    return batches


def sorted_batch_bounds(sorted_lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Boundaries of the batches :func:`token_budget_batches` cuts from non-decreasing lengths:
    batch ``b`` is ``[bounds[b], bounds[b + 1])``. One step per batch, not per example."""
    n = len(sorted_lengths)
    bounds = [0]
    start = 0
    while start < n:
        shortest = max(1, int(sorted_lengths[start]))
        end = min(start + max(1, max_tokens // shortest), n)  # as many as fit at the first's length
        if sorted_lengths[end - 1] != shortest:
            # Longer examples in the window: the batch ends before the first j with
            # (j - start + 1) * length[j] > max_tokens (a cost that only grows with j).
            cost = sorted_lengths[start:end].astype(np.int64) * np.arange(1, end - start + 1)
            over = np.flatnonzero(cost > max_tokens)
            if over.size:
                end = start + max(1, int(over[0]))
        bounds.append(end)
        start = end
    return np.asarray(bounds, dtype=np.int64)


def length_sorted_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (ties in index order) and cut into token-budget batches: the
    batches of an unshuffled ``TokenBucketBatchSampler(lengths, max_tokens, shuffle=False)``."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    bounds = sorted_batch_bounds(lengths[order], max_tokens)
    return [order[bounds[b]: bounds[b + 1]].tolist() for b in range(len(bounds) - 1)]
