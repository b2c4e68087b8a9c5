"""Datasets of encoded sentence pairs: in memory (:class:`ParallelDataset`, validation, test and
decoding) or read from a memory-mapped token store (:class:`TokenStoreDataset`, training), and
their collation into padded batches."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from attnmt.data.store import TokenStore
from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from attnmt.utils.stored import MAX_LEN


class ParallelDataset(Dataset):
    """Encoded pairs: the source ends with ``</s>``; the target is ``<s> ... </s>``."""

    def __init__(self, src_ids: list[list[int]], tgt_ids: list[list[int]] | None = None):
        self.src = [ids + [EOS_ID] for ids in src_ids]
        self.tgt = None if tgt_ids is None else [[BOS_ID] + ids + [EOS_ID] for ids in tgt_ids]

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> list[int]:
        """Padded cost of each example: its longer side (the target counts without ``<s>``)."""
        if self.tgt is None:
            return [len(s) for s in self.src]
        return [max(len(s), len(t) - 1) for s, t in zip(self.src, self.tgt)]

    def sort_keys(self) -> list[tuple[int, ...]]:
        """Batching order: cost, then target length, then source length."""
        if self.tgt is None:
            return [(len(s),) for s in self.src]
        return [(max(len(s), len(t) - 1), len(t), len(s)) for s, t in zip(self.src, self.tgt)]

    def collate(self, indices: list[int], multiple: int = 1) -> dict[str, torch.Tensor | int]:
        """A padded batch; ``multiple`` rounds the source and target lengths up to a multiple of
        it (fewer distinct shapes for a compiled model, aligned tiles for tensor cores)."""
        src = pad([self.src[i] for i in indices], multiple)
        batch = {
            "idx": torch.tensor(indices),
            "src": src,  # (B, S)
            "src_mask": src != PAD_ID,  # (B, S) True on real tokens
        }
        if self.tgt is not None:
            targets = [self.tgt[i] for i in indices]
            tgt = pad(targets, multiple, extra=1)
            batch["tgt_in"] = tgt[:, :-1]  # (B, T): <s> y_1 ... y_n
            batch["tgt_out"] = tgt[:, 1:]  # (B, T): y_1 ... y_n </s>
            batch["num_tgt_tokens"] = sum(len(t) - 1 for t in targets)  # non-padding tgt_out, a Python int
        return batch


def encode_for_eval(
    tokenizer: Tokenizer, src: list[str], tgt: list[str] | None = None, max_len: int = MAX_LEN
) -> ParallelDataset:
    """Evaluation keeps every line (so scores cover the whole split); long ones are truncated."""
    src_ids = [ids[:max_len] for ids in tokenizer.encode_src(src)]
    tgt_ids = None if tgt is None else [ids[:max_len] for ids in tokenizer.encode_tgt(tgt)]
    return ParallelDataset(src_ids, tgt_ids)


class TokenStoreDataset(Dataset):
    """Training pairs read from token stores: several corpora back to back, each repeated
    ``upsample`` times. Lengths, sort keys and batches are those :class:`ParallelDataset` gives
    for the same pairs; the tokens stay in the memory-mapped files until a batch needs them."""

    def __init__(self, parts: list[tuple[TokenStore, int]]):
        assert parts and all(upsample >= 1 for _, upsample in parts)
        self.parts = parts
        self.starts = np.cumsum([0] + [store.num_pairs * upsample for store, upsample in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> int:
        return i

    def _side_lengths(self, side: str) -> np.ndarray:
        """Number of subword ids of each pair's ``side`` (without ``<s>``, ``</s>``)."""
        if len(self.parts) == 1 and self.parts[0][1] == 1:
            return np.asarray(self.parts[0][0].lengths[side])
        return np.concatenate([np.tile(store.lengths[side], upsample) for store, upsample in self.parts])

    def _length_arrays(self) -> tuple[np.ndarray, np.ndarray, type]:
        src, tgt = self._side_lengths("src"), self._side_lengths("tgt")
        # uint16 while the longest side plus <s> and </s> fits: 6 bytes a pair for 10M pairs.
        dtype = np.uint16 if max(int(src.max()), int(tgt.max())) + 2 < 1 << 16 else np.uint32
        return src.astype(dtype, copy=False), tgt.astype(dtype, copy=False), dtype

    def _release(self, kinds: tuple[str, ...]) -> None:
        for store, _ in self.parts:
            store.release(kinds)

    def lengths(self) -> np.ndarray:
        """Padded cost of each example: its longer side (the source with ``</s>``, the target
        with one of ``<s>``, ``</s>``)."""
        src, tgt, dtype = self._length_arrays()
        cost = np.maximum(src, tgt)
        cost += dtype(1)
        self._release(("lengths",))  # the sampler keeps its own arrays
        return cost

    def sort_keys(self) -> np.ndarray:
        """(cost, target length, source length) per example, as for :class:`ParallelDataset`."""
        src, tgt, dtype = self._length_arrays()
        # Column-major: the sampler sorts column by column.
        keys = np.empty((len(src), 3), dtype=dtype, order="F")
        np.maximum(src, tgt, out=keys[:, 0])
        keys[:, 0] += dtype(1)
        np.add(tgt, dtype(2), out=keys[:, 1])
        np.add(src, dtype(1), out=keys[:, 2])
        self._release(("lengths",))  # the sampler keeps its own arrays
        return keys

    def _gather(self, side: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids padded with PAD_ID, lengths) of ``side`` for ``indices``: (B, L), (B,)."""
        part = np.searchsorted(self.starts, indices, side="right") - 1
        lengths = np.empty(len(indices), dtype=np.int64)
        where = []
        for p in np.unique(part):
            rows = np.flatnonzero(part == p)
            store = self.parts[p][0]
            local = (indices[rows] - self.starts[p]) % store.num_pairs
            lengths[rows] = store.lengths[side][local]
            where.append((rows, store, store.offsets[side][local]))
        width = int(lengths.max())
        ids = np.full((len(indices), width), PAD_ID, dtype=np.int64)
        columns = np.arange(width)
        for rows, store, offsets in where:
            inside = columns < lengths[rows, None]  # (b, L)
            positions = np.where(inside, offsets[:, None] + columns, 0)
            ids[rows] = np.where(inside, store.tokens[side][positions], PAD_ID)
        return ids, lengths

    def collate(self, indices: list[int], multiple: int = 1) -> dict[str, torch.Tensor | int]:
        """As :meth:`ParallelDataset.collate`."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = np.arange(len(idx))
        ids, lengths = self._gather("src", idx)
        src = np.full((len(idx), round_up(ids.shape[1] + 1, multiple)), PAD_ID, dtype=np.int64)
        src[:, :ids.shape[1]] = ids
        src[rows, lengths] = EOS_ID
        ids, lengths = self._gather("tgt", idx)
        tgt = np.full((len(idx), round_up(ids.shape[1] + 1, multiple) + 1), PAD_ID, dtype=np.int64)
        tgt[:, 0] = BOS_ID
        tgt[:, 1:ids.shape[1] + 1] = ids
        tgt[rows, lengths + 1] = EOS_ID
        self._release(("tokens", "offsets"))
        src, tgt = torch.from_numpy(src), torch.from_numpy(tgt)
        return {
            "idx": torch.tensor(indices),
            "src": src,  # (B, S)
            "src_mask": src != PAD_ID,  # (B, S) True on real tokens
            "tgt_in": tgt[:, :-1],  # (B, T): <s> y_1 ... y_n
            "tgt_out": tgt[:, 1:],  # (B, T): y_1 ... y_n </s>
            "num_tgt_tokens": int(lengths.sum()) + len(idx),  # non-padding tgt_out, a Python int
        }


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad(seqs: list[list[int]], multiple: int = 1, extra: int = 0) -> torch.Tensor:
    """``seqs`` padded with PAD_ID into ``(N, L)``: ``L - extra`` is the longest length less
    ``extra``, rounded up to a multiple of ``multiple`` (the target's ``extra`` 1 is its ``<s>``,
    which tgt_in and tgt_out share)."""
    width = round_up(max(len(s) for s in seqs) - extra, multiple) + extra
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
