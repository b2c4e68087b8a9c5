"""The models behind ``attnmt-serve``: attnmt's PyTorch search or a CTranslate2 export.

Both speak one interface: ``encode(lines)`` turns sentences into source ids (cheap, run per
request, so text that cannot be encoded fails only its own request) and ``decode(sources,
beam_size, attention)`` translates a batch of encoded sentences, possibly from several requests.
``metadata`` describes the model with file names only (never a path of the machine serving it).
"""

from __future__ import annotations

from pathlib import Path


def word_attention(tokenizer, src_ids: list[int], tgt_ids: list[int], weights) -> tuple[list[str], list[str], list]:
    """Source words, target words and ``weights`` ``(..., T + 1, S)`` merged to words
    ``(..., T_words, S_words)``, each row renormalised to sum to 1."""
    import numpy as np

    from attnmt.subwords import merge_to_words, word_ids, words

    src_pieces, tgt_pieces = tokenizer.src_pieces(src_ids), tokenizer.tgt_pieces(tgt_ids)
    rows, cols = word_ids(tgt_pieces + ["</s>"]), word_ids(src_pieces)
    weights = np.asarray(weights, dtype=np.float64)
    lead = weights.shape[:-2]
    flat = weights.reshape(-1, *weights.shape[-2:])[:, : len(rows), : len(cols)]
    merged = np.stack([merge_to_words(w, rows, cols) for w in flat]) if len(flat) else flat  # (N, Tw, Sw)
    merged = merged / np.maximum(merged.sum(-1, keepdims=True), 1e-12)
    merged = merged.reshape(*lead, *merged.shape[-2:])
    return words(src_pieces), words(tgt_pieces), np.round(merged, 5).tolist()


class Sources:
    """Encoded sentences as the decoders read them (ids ending in ``</s>``), without torch: the
    part of :class:`attnmt.data.dataset.ParallelDataset` that decoding an export uses."""

    def __init__(self, ids: list[list[int]]):
        from attnmt.data.tokenizer import EOS_ID

        self.src = [s + [EOS_ID] for s in ids]

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> list[int]:
        return [len(s) for s in self.src]


def one_batch(dataset) -> int:
    """A token budget that keeps ``dataset`` in one batch: the scheduler has sized it already."""
    return max(map(len, dataset.src)) * len(dataset)


class Backend:
    """What the server needs of a model: ``tokenizer``, ``max_len`` and ``metadata`` set by the
    subclass, :meth:`encode` and :meth:`decode`."""

    tokenizer = None
    max_len: int = 128
    metadata: dict

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Source ids of ``lines`` (non-blank sentences), truncated to the model's ``max_len``."""
        return [ids[: self.max_len] for ids in self.tokenizer.encode_src(lines)]

    def decode(self, sources: list[list[int]], beam_size: int, attention: bool) -> list[dict]:
        """Per source (in order) ``{"translation": str}``, with ``"attention"`` when asked for."""
        raise NotImplementedError


class TorchBackend(Backend):
    """attnmt's own search; attention of every layer and head (teacher-forced on the output)."""

    def __init__(self, ckpt: str):
        from attnmt.checkpoint import load_for_decoding

        self.model, self.tokenizer, config, path = load_for_decoding(ckpt)
        self.max_len = config["data"].get("max_len", 128)
        self.metadata = {
            "model": config["model"]["_target_"].rsplit(".", 1)[-1], "backend": "pytorch",
            "checkpoint": Path(path).name,
            "languages": {"source": config["data"].get("src_lang"), "target": config["data"].get("tgt_lang")},
            "attention": "cross-attention, every layer and head",
        }

    def decode(self, sources: list[list[int]], beam_size: int, attention: bool) -> list[dict]:
        import torch

        from attnmt.data.dataset import ParallelDataset, pad
        from attnmt.data.tokenizer import PAD_ID
        from attnmt.search import forced_attention
        from attnmt.translate import DecodeSettings, translate_dataset

        dataset = ParallelDataset(sources)
        settings = DecodeSettings(beam_size=beam_size, batch_tokens=one_batch(dataset))
        hyps = [h[0].tokens for h in translate_dataset(self.model, dataset, settings, progress=False)]
        out = [{"translation": t} for t in self.tokenizer.decode_tgt(hyps)]
        if attention:
            with torch.inference_mode():
                src = pad(dataset.src)
                cross = forced_attention(self.model, src, src != PAD_ID, hyps)[0]["cross"].float()  # (B, L, H, T, S)
            for b, item in enumerate(out):
                w = cross[b, :, :, : len(hyps[b]) + 1, : len(dataset.src[b])]  # (L, H, T+1, S)
                w = torch.cat([w.mean(1, keepdim=True), w], dim=1)  # head 0: the mean of the heads
                s, t, m = word_attention(self.tokenizer, dataset.src[b], hyps[b], w.numpy())
                L, H = w.shape[0], w.shape[1] - 1
                item["attention"] = {
                    "source": s, "target": t, "weights": m,
                    "layers": [f"layer {i + 1}" for i in range(L)],
                    "heads": ["mean of heads"] + [f"head {h + 1}" for h in range(H)],
                }
        return out


class ExportBackend(Backend):
    """CTranslate2; one attention matrix (the last layer, averaged over heads)."""

    def __init__(self, path: str):
        from attnmt.ct2 import ExportedModel

        self.exported = ExportedModel(path)
        self.tokenizer, self.max_len = self.exported.tokenizer, self.exported.max_len
        meta = self.exported.meta
        self.metadata = {
            "model": meta["model"]["_target_"].rsplit(".", 1)[-1], "backend": "ctranslate2",
            "checkpoint": Path(str(meta["source_checkpoint"])).name,
            "export": Path(path).resolve().name, "quantization": meta["quantization"],
            "languages": meta["languages"], "attention": meta["attention"],
        }

    def decode(self, sources: list[list[int]], beam_size: int, attention: bool) -> list[dict]:
        from attnmt.translate import DecodeSettings

        dataset = Sources(sources)  # serving an export imports no torch: about half the memory
        settings = DecodeSettings(beam_size=beam_size, batch_tokens=one_batch(dataset))
        found, attn = self.exported.translate_dataset(dataset, settings, attention)
        hyps = [h[0].tokens for h in found]
        out = [{"translation": t} for t in self.tokenizer.decode_tgt(hyps)]
        if attention:
            for b, item in enumerate(out):
                s, t, m = word_attention(self.tokenizer, dataset.src[b], hyps[b], attn[b][0][None, None])
                item["attention"] = {"source": s, "target": t, "weights": m,
                                     "layers": ["last layer"], "heads": ["mean of heads"]}
        return out


def load_backend(ckpt: str) -> Backend:
    from attnmt.export import is_exported

    return ExportBackend(ckpt) if is_exported(ckpt) else TorchBackend(ckpt)
