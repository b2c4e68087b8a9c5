"""Decoding with a CTranslate2 export (:mod:`attnmt.deploy.export`) through the same settings as attnmt's
own search (:class:`attnmt.decode.settings.DecodeSettings`).

What matches attnmt's PyTorch decoder and what does not:

- Sources are the same ids (sentencepiece pieces, truncated to the training ``max_len``, then
  ``</s>``); the decoder starts from ``<s>``; an empty output is allowed (``min_decoding_length=0``).
- Output length: attnmt forces ``</s>`` after ``max_len_ratio * |source| + 10`` tokens, per
  sentence. CTranslate2 has one cap per call, so each batch runs to its longest sentence's cap and
  longer outputs are cut to their own cap afterwards: greedy outputs are then identical, beam
  outputs can differ on sentences that reach the cap.
- ``alpha`` is passed as CTranslate2's ``length_penalty``, which is also the GNMT penalty
  ``((5 + |Y|) / 6) ** alpha``. Beam search itself is CTranslate2's (no greedy floor).
- Scores: CTranslate2's own when only ranking matters; with ``scores=true`` each hypothesis is
  rescored with ``score_batch`` so the printed score is attnmt's (summed log-probability with
  ``</s>``, divided by the GNMT penalty).
- Attention: CTranslate2 returns one matrix per hypothesis, the last decoder layer's
  cross-attention averaged over its heads (the export sets ``alignment_heads`` to all heads); no
  other layer or head is available from an export.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnmt.align.links import sentence_links
from attnmt.data.buckets import length_sorted_batches
from attnmt.data.tokenizer import Tokenizer
from attnmt.decode.exported import import_ctranslate2, read_metadata
from attnmt.decode.hypothesis import Hypothesis, length_penalty
from attnmt.errors import ConfigError
from attnmt.utils.stored import MAX_LEN, model_name

if TYPE_CHECKING:  # decoding an export needs no torch: any object with .src and .lengths() will do
    from attnmt.data.dataset import ParallelDataset


class ExportedModel:
    """A folder written by ``attnmt-export``: its tokenizer, metadata and a CTranslate2 translator."""

    def __init__(
        self, path: str | Path, device: str = "cpu", intra_threads: int = 0, inter_threads: int = 1,
        device_index: int = 0, compute_type: str = "auto",
    ):
        """``device``: ``cpu`` or ``cuda`` (GPU ``device_index``); ``compute_type``: CTranslate2's
        (:func:`attnmt.utils.device.export_compute_type`; ``auto``: float16 on a GPU)."""
        from attnmt.utils.device import export_compute_type

        ctranslate2 = import_ctranslate2()
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        target = self.path / "target.spm"
        self.tokenizer = Tokenizer(
            (self.path / "source.spm").read_bytes(), target.read_bytes() if target.is_file() else None
        )
        self.config = self.meta["config"]
        self.max_len = int(self.meta.get("max_len", MAX_LEN))
        wanted = export_compute_type(compute_type, device, str(self.meta["quantization"]))
        self.options = {"device": device, "device_index": device_index, "intra_threads": intra_threads,
                        "inter_threads": inter_threads, "compute_type": wanted}
        try:
            self.translator = ctranslate2.Translator(str(self.path), **self.options)
        except ValueError:  # a compute type the device does not run
            have = sorted(ctranslate2.get_supported_compute_types(device, device_index))
            raise ConfigError(f"compute_type={compute_type}: CTranslate2 has no fast {wanted} on {device} here; "
                              f"it runs {', '.join(have)} (or auto)") from None
        self.compute_type = self.translator.compute_type  # what CTranslate2 chose (auto: the export's own)
        tok = self.tokenizer
        self.src_vocab = tok.src_pieces(list(range(tok.src_vocab_size)))  # model id -> piece
        self.tgt_vocab = tok.tgt_pieces(list(range(tok.tgt_vocab_size)))
        self.tgt_index = {piece: i for i, piece in enumerate(self.tgt_vocab)}

    @property
    def name(self) -> str:
        return model_name(self.meta) + " (CTranslate2)"

    def src_tokens(self, ids: list[int]) -> list[str]:
        return [self.src_vocab[i] for i in ids]

    def tgt_tokens(self, ids: list[int]) -> list[str]:
        return [self.tgt_vocab[i] for i in ids]

    def translate_dataset(
        self, dataset: ParallelDataset, settings, attention: bool = False, rescore: bool = False
    ) -> tuple[list[list[Hypothesis]], list[list[np.ndarray]] | None]:
        """Per source of ``dataset`` (in order): its ``n_best`` hypotheses, best first, and, with
        ``attention``, per hypothesis the cross-attention ``(T + 1, S)`` (last layer, heads
        averaged; row ``t`` is the step that produced token ``t``, the last row ``</s>``'s)."""
        hyps: list = [None] * len(dataset)
        attn: list | None = [None] * len(dataset) if attention else None
        strategy = settings.strategy_used
        search = {"beam_size": settings.beam_size, "num_hypotheses": settings.n_best}
        copies, translator = 1, self.translator  # requests per source: n_best samples are n_best requests
        if strategy == "greedy":
            search = {"beam_size": 1, "num_hypotheses": 1}
        elif strategy == "sample":
            search = {"beam_size": 1, "num_hypotheses": 1, "sampling_topk": settings.top_k,  # 0: all tokens
                      "sampling_topp": settings.top_p, "sampling_temperature": settings.temperature}
            copies = settings.n_best
            # CTranslate2's worker threads seed their generators when the translator is made: the
            # same seed gives the same samples only from a translator made after set_random_seed.
            ctranslate2 = import_ctranslate2()
            ctranslate2.set_random_seed(settings.seed)
            translator = ctranslate2.Translator(str(self.path), **self.options)
        for indices in length_sorted_batches(dataset.lengths(), settings.batch_tokens):
            sources = [dataset.src[i] for i in indices]
            caps = [int(len(s) * settings.max_len_ratio) + 10 for s in sources]  # as attnmt.decode.search
            results = translator.translate_batch(
                [self.src_tokens(s) for s in sources for _ in range(copies)], **search,
                length_penalty=settings.alpha, max_decoding_length=max(caps) + 1, min_decoding_length=0,
                max_input_length=0, return_scores=True, return_attention=attention,
            )
            for k, (i, cap, src) in enumerate(zip(indices, caps, sources)):
                found = []
                for result in results[k * copies : (k + 1) * copies]:
                    for n, tokens in enumerate(result.hypotheses):
                        ids = [self.tgt_index[t] for t in tokens][:cap]
                        found.append(Hypothesis(ids, float(result.scores[n]), float("nan")))
                        if attention:
                            rows = np.asarray(result.attention[n], dtype=np.float32)[:, : len(src)]  # (T', S)
                            found_attn = attn[i] = attn[i] or []
                            found_attn.append(_with_end_row(rows, len(ids)))
                hyps[i] = found
        if rescore:
            hyps = self.rescore(dataset, hyps, settings.alpha)
        return hyps, attn

    def rescore(self, dataset: ParallelDataset, hyps: list[list[Hypothesis]], alpha: float) -> list[list[Hypothesis]]:
        """The hypotheses with attnmt's score and log-probability (teacher-forced, ``</s>`` included)."""
        flat = [(i, h) for i, hs in enumerate(hyps) for h in hs]
        results = self.translator.score_batch(
            [self.src_tokens(dataset.src[i]) for i, _ in flat], [self.tgt_tokens(h.tokens) for _, h in flat],
            max_input_length=0,
        )
        out: list[list[Hypothesis]] = [[] for _ in hyps]
        for (i, h), r in zip(flat, results):
            lp = float(sum(r.log_probs))  # the target tokens and </s>
            out[i].append(Hypothesis(h.tokens, lp / length_penalty(len(h.tokens) + 1, alpha), lp))
        return [sorted(hs, key=lambda h: -h.score) for hs in out]

    def forced_attention(
        self, dataset: ParallelDataset, pairs: list[tuple[int, list[int]]], batch_size: int = 64
    ) -> list[np.ndarray]:
        """Cross-attention ``(T + 1, S)`` while the model reads each (source ``i``, target ids)
        pair: the target is forced as a prefix, so row ``t`` is the step that produced token ``t``."""
        out = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            results = self.translator.translate_batch(
                [self.src_tokens(dataset.src[i]) for i, _ in chunk], [self.tgt_tokens(t) for _, t in chunk],
                beam_size=1, max_decoding_length=max(len(t) for _, t in chunk) + 1, min_decoding_length=0,
                max_input_length=0, return_attention=True,
            )
            for (i, t), r in zip(chunk, results):
                rows = np.asarray(r.attention[0], dtype=np.float32)[:, : len(dataset.src[i])]
                out.append(_with_end_row(rows, len(t)))
        return out


def _with_end_row(rows: np.ndarray, length: int) -> np.ndarray:
    """``length + 1`` rows (tokens and ``</s>``); where CTranslate2 gave none for ``</s>``, a copy of
    the last (merged to words, special rows are dropped anyway)."""
    rows = rows[: length + 1]
    if rows.shape[0] < length + 1:
        pad = rows[-1:] if rows.shape[0] else np.zeros((1, rows.shape[1]), dtype=rows.dtype)
        rows = np.concatenate([rows, np.repeat(pad, length + 1 - rows.shape[0], axis=0)])
    return rows


def word_links(tokenizer: Tokenizer, src_ids: list[int], tgt_ids: list[int], rows: np.ndarray,
               method: str = "argmax", threshold: float = 0.5, word_links: str = "merged"):
    """Word alignment links from one subword attention matrix ``(T + 1, S)`` (as
    :func:`attnmt.decode.attention.attention_links` does for one layer of the PyTorch model)."""
    return sentence_links(rows, tokenizer.tgt_pieces(tgt_ids), tokenizer.src_pieces(src_ids), method, threshold,
                          word_links)


