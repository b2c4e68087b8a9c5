"""One decoding seam for every backend: attnmt's PyTorch search over a checkpoint, or a
CTranslate2 export. ``evaluate.py``, ``attnmt-translate`` and ``attnmt-serve`` load one with
:func:`load_backend` and use only the methods of :class:`Backend`:

- ``encode(lines)``: source ids (cut at the model's ``max_len``), cheap, per request;
- ``translate(dataset, settings)``: per sentence its ``n_best`` hypotheses, best first;
- ``alignments(dataset, pairs, ...)``: word links read from the cross-attention while the model
  reads given targets (teacher-forced), per layer;
- ``attention(dataset, hyps)``: the cross-attention of each output, merged to words (the server's
  picture).

Decoding an export imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnmt.errors import ConfigError
from attnmt.utils.stored import MAX_LEN, max_len, model_name

if TYPE_CHECKING:
    from attnmt.align.links import Link
    from attnmt.decode.hypothesis import Hypothesis
    from attnmt.decode.settings import DecodeSettings


def word_attention(tokenizer, src_ids: list[int], tgt_ids: list[int], weights) -> tuple[list[str], list[str], list]:
    """Source words, target words and ``weights`` ``(..., T + 1, S)`` merged to words
    ``(..., T_words, S_words)``, each row renormalised to sum to 1."""
    import numpy as np

    from attnmt.data.subwords import merge_to_words, word_ids, words

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
    """A token budget that keeps ``dataset`` in one batch (the caller has sized it already)."""
    return max(map(len, dataset.src)) * len(dataset)


class Backend:
    """A loaded model behind the seam. Set by the subclass: ``tokenizer``, ``max_len`` (source
    pieces kept), ``config`` (the training config), ``name`` (for people), ``kind``,
    ``metadata`` (file names only, never a path of the machine), and where and how it decodes:
    ``device`` and ``compute_type`` (resolved: never ``auto``)."""

    tokenizer: Any = None
    max_len: int = MAX_LEN
    device: Any = "cpu"
    compute_type: str = "float32"
    config: dict
    name: str
    metadata: dict
    kind: str

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Source ids of ``lines`` (non-blank sentences), truncated to the model's ``max_len``."""
        return [ids[: self.max_len] for ids in self.tokenizer.encode_src(lines)]

    def dataset(self, sources: list[str], references: list[str] | None = None, cut: int | None = None):
        """``sources`` (and ``references``) encoded as the decoders read them, each side cut at
        ``cut`` pieces (``None``: the model's ``max_len``)."""
        from attnmt.data.dataset import encode_for_eval

        return encode_for_eval(self.tokenizer, sources, references, max_len=cut or self.max_len)

    def translate(
        self, dataset, settings: DecodeSettings, progress: bool = False, rescore: bool = False
    ) -> list[list[Hypothesis]]:
        """Per source of ``dataset`` (in order) its ``settings.n_best`` hypotheses, best first.
        ``rescore``: scores as attnmt computes them, where the backend's own differ."""
        raise NotImplementedError

    def alignments(
        self, dataset, pairs: list[tuple[int, list[int]]], batch_tokens: int = 8000, layers: list[int] | None = None,
        method: str = "argmax", threshold: float = 0.5, heads: int | None = None, full_context: bool = False,
        word_links: str = "merged",
    ) -> list[list[set[Link]]]:
        """Word links of each (source ``dataset.src[i]``, target ids) pair while the model reads
        the target: per layer in ``layers`` (all that the backend has when ``None``), one set per
        pair (:func:`attnmt.decode.attention.attention_links`)."""
        raise NotImplementedError

    def attention(self, dataset, hyps: list[list[int]]) -> list[dict]:
        """Per output, its cross-attention merged to words: ``source``, ``target``, ``weights``
        ``(layers, heads, T_words, S_words)``, ``layers`` and ``heads`` (their names)."""
        raise NotImplementedError

    def decode(self, sources: list[list[int]], beam_size: int, attention: bool) -> list[dict]:
        """The server's call: per source (in order) ``{"translation": str}``, with ``"attention"``
        when asked for; ``sources`` are :meth:`encode`'s ids, one batch."""
        from attnmt.decode.settings import DecodeSettings

        dataset = self.sources(sources)
        settings = DecodeSettings(beam_size=beam_size, batch_tokens=one_batch(dataset))
        hyps, pictures = self.search_and_attention(dataset, settings, attention)
        out = [{"translation": t} for t in self.tokenizer.decode_tgt(hyps)]
        for item, seen in zip(out, pictures or []):
            item["attention"] = seen
        return out

    def search_and_attention(self, dataset, settings: DecodeSettings, attention: bool):
        """The best hypothesis' ids of each source and, with ``attention``, :meth:`attention` of them."""
        hyps = [h[0].tokens for h in self.translate(dataset, settings)]
        return hyps, self.attention(dataset, hyps) if attention else None

    def sources(self, ids: list[list[int]]):
        return Sources(ids)


class TorchBackend(Backend):
    """attnmt's own search over a checkpoint; attention of every layer and head."""

    kind = "pytorch"

    def __init__(self, ckpt: str | Path | list, device: str = "cpu", compute_type: str = "auto",
                 attention_member: int = 1):
        """``ckpt``: one checkpoint, or a list of them: an ensemble
        (:class:`attnmt.decode.ensemble.Ensemble`), whose attention is member ``attention_member``'s
        (counted from 1)."""
        import torch

        from attnmt.decode.checkpoint import load_for_decoding
        from attnmt.utils.device import torch_compute_type

        self.device = torch.device(device)
        self.compute_type = torch_compute_type(compute_type, self.device)  # before the model loads
        paths = list(ckpt) if isinstance(ckpt, (list, tuple)) else [ckpt]
        if not 1 <= attention_member <= len(paths):
            raise ConfigError(f"member={attention_member}: the ensemble has {len(paths)} members (1..{len(paths)})")
        loaded = [load_for_decoding(path) for path in paths]
        self.model, self.tokenizer, self.config, self.path = loaded[attention_member - 1]
        self.name = type(self.model).__name__
        checkpoints = [Path(path).name for *_, path in loaded]
        if len(loaded) > 1:
            from attnmt.decode.ensemble import Ensemble

            for _, tokenizer, _, path in loaded:
                if tokenizer.state() != self.tokenizer.state():
                    raise ConfigError(f"ckpt: {path} and {self.path} have different sentencepiece models; the members "
                                      "of an ensemble must share one")
            self.model = Ensemble([model for model, *_ in loaded], attention_member - 1)
            self.name = (f"ensemble of {len(loaded)} ({', '.join(type(m).__name__ for m, *_ in loaded)}); "
                         f"attention: member {attention_member}, {self.name}")
            self.path = ",".join(str(path) for *_, path in loaded)
        self.model.to(self.device)
        self.max_len = max_len(self.config)
        self.metadata = {
            "model": self.name, "backend": self.kind, "checkpoint": ",".join(checkpoints),
            "languages": {"source": self.config["data"].get("src_lang"), "target": self.config["data"].get("tgt_lang")},
            "attention": "cross-attention, every layer and head",
            "device": str(self.device), "compute_type": self.compute_type,
        }

    def sources(self, ids: list[list[int]]):
        from attnmt.data.dataset import ParallelDataset

        return ParallelDataset(ids)

    def translate(self, dataset, settings, progress=False, rescore=False):
        from attnmt.decode.search import translate_dataset

        return translate_dataset(self.model, dataset, settings, progress, self.compute_type)

    def alignments(self, dataset, pairs, batch_tokens=8000, layers=None, method="argmax", threshold=0.5, heads=None,
                   full_context=False, word_links="merged"):
        from attnmt.decode.attention import attention_links

        return attention_links(self.model, self.tokenizer, dataset, pairs, batch_tokens, layers, method, threshold,
                               heads, full_context, word_links)

    def attention(self, dataset, hyps):
        import torch

        from attnmt.data.dataset import pad
        from attnmt.data.tokenizer import PAD_ID
        from attnmt.decode.search import forced_attention

        with torch.inference_mode():
            src = pad(dataset.src).to(next(self.model.parameters()).device)
            cross = forced_attention(self.model, src, src != PAD_ID, hyps)[0]["cross"].float().cpu()  # (B, L, H, T, S)
        out = []
        for b, tgt in enumerate(hyps):
            w = cross[b, :, :, : len(tgt) + 1, : len(dataset.src[b])]  # (L, H, T+1, S)
            w = torch.cat([w.mean(1, keepdim=True), w], dim=1)  # head 0: the mean of the heads
            s, t, m = word_attention(self.tokenizer, dataset.src[b], tgt, w.numpy())
            L, H = w.shape[0], w.shape[1] - 1
            out.append({"source": s, "target": t, "weights": m, "layers": [f"layer {i + 1}" for i in range(L)],
                        "heads": ["mean of heads"] + [f"head {h + 1}" for h in range(H)]})
        return out


class ExportBackend(Backend):
    """A CTranslate2 export: CTranslate2's search; one attention matrix (the last layer, averaged
    over heads)."""

    kind = "ctranslate2"

    def __init__(self, path: str | Path, device: str = "cpu", device_index: int = 0, compute_type: str = "auto"):
        from attnmt.decode.ct2 import ExportedModel

        self.exported = ExportedModel(path, device=device, device_index=device_index, compute_type=compute_type)
        self.device = f"{device}:{device_index}" if device == "cuda" else device
        self.compute_type = self.exported.compute_type
        self.path = Path(path)
        self.tokenizer, self.max_len, self.config = self.exported.tokenizer, self.exported.max_len, self.exported.config
        meta = self.exported.meta
        self.name = self.exported.name
        self.num_layers = int(meta["model"].get("decoder_layers", 1))
        self.metadata = {
            "model": model_name(meta), "backend": self.kind,
            "checkpoint": Path(str(meta["source_checkpoint"])).name,
            "export": self.path.resolve().name, "quantization": meta["quantization"],
            "languages": meta["languages"], "attention": meta["attention"],
            "device": self.device, "compute_type": self.compute_type,
        }

    def translate(self, dataset, settings, progress=False, rescore=False):
        return self.exported.translate_dataset(dataset, settings, rescore=rescore)[0]

    def alignments(self, dataset, pairs, batch_tokens=8000, layers=None, method="argmax", threshold=0.5, heads=None,
                   full_context=False, word_links="merged"):
        from attnmt.decode.ct2 import word_links as links_of

        attention = self.exported.forced_attention(dataset, pairs)  # the last layer's, heads averaged
        return [[links_of(self.tokenizer, dataset.src[i], t, a, method, threshold, word_links)
                 for (i, t), a in zip(pairs, attention)]]

    def attention(self, dataset, hyps):
        rows = self.exported.forced_attention(dataset, list(enumerate(hyps)))
        return [self.picture(dataset.src[b], tgt, a) for b, (tgt, a) in enumerate(zip(hyps, rows))]

    def search_and_attention(self, dataset, settings, attention):
        found, attn = self.exported.translate_dataset(dataset, settings, attention)  # attention while searching
        hyps = [h[0].tokens for h in found]
        if not attention:
            return hyps, None
        return hyps, [self.picture(dataset.src[b], tgt, attn[b][0]) for b, tgt in enumerate(hyps)]

    def picture(self, src: list[int], tgt: list[int], rows) -> dict:
        s, t, m = word_attention(self.tokenizer, src, tgt, rows[None, None])
        return {"source": s, "target": t, "weights": m, "layers": ["last layer"], "heads": ["mean of heads"]}


def ensemble_members(ckpt: str | Path | list) -> list:
    """``ckpt`` as a list of checkpoints: a list as it is; ``"A,B"`` split at its commas (unless a
    file or folder of that very name exists)."""
    if isinstance(ckpt, (list, tuple)):
        return list(ckpt)
    text = str(ckpt)
    if "," in text and not Path(text).exists():
        return [part for part in text.split(",") if part]
    return [ckpt]


def load_backend(ckpt: str | Path | list, device: str = "cpu", compute_type: str = "auto",
                 attention_member: int = 1) -> Backend:
    """The model at ``ckpt``: a CTranslate2 export (a folder written by ``attnmt-export``), or a
    checkpoint or training run folder, or several of the latter (a list, or ``"A,B"``): an
    ensemble, whose attention is member ``attention_member``'s. ``device``: ``cpu``, ``cuda`` or
    ``cuda:N`` (resolved by :func:`attnmt.utils.device.decode_device`); ``compute_type``: see
    :mod:`attnmt.utils.device`."""
    from attnmt.decode.exported import is_exported

    members = ensemble_members(ckpt)
    if len(members) > 1:
        exports = [m for m in members if is_exported(m)]
        if exports:
            raise ConfigError(f"ckpt: {exports[0]} is a CTranslate2 export; an ensemble decodes checkpoints (or run "
                              "folders) with attnmt's own search")
        return TorchBackend(members, device, compute_type, attention_member)
    ckpt = members[0]
    if is_exported(ckpt):
        kind, _, index = str(device).partition(":")
        return ExportBackend(ckpt, device=kind, device_index=int(index or 0), compute_type=compute_type)
    return TorchBackend(ckpt, device, compute_type)
