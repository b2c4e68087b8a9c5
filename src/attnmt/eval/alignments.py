"""What evaluation adds to the attention's AER: the layer chosen on the validation split's gold
(``eval.layer=best``) and a real aligner's AER on the same gold (``eval.baseline=eflomal``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from attnmt.align.links import Link, alignment_error_rate, read_gold
from attnmt.data.io import iter_parallel, read_parallel
from attnmt.data.tokenizer import Tokenizer
from attnmt.utils.config import build

if TYPE_CHECKING:
    from attnmt.decode.backends import Backend

log = logging.getLogger(__name__)


def per_layer_aer(per_layer: list[list[set[Link]]], gold: list[tuple[set[Link], set[Link]]]) -> list[float]:
    """AER (%) of each layer's links, rounded as results.json reports it."""
    return [round(100 * alignment_error_rate(links, gold), 2) for links in per_layer]


LENGTH_EDGES = (10, 20, 30, 45)  # source words: 1-9, 10-19, 20-29, 30-44, 45 and more


def aer_by_length(
    links: list[set[Link]], gold: list[tuple[set[Link], set[Link]]], sources: list[str],
    edges: tuple[int, ...] = LENGTH_EDGES,
) -> list[dict]:
    """Corpus AER (%) of the sentences in each source-length bucket (whitespace words), for the
    buckets that hold any: ``{"words": "10-19", "sentences": n, "aer": x}``."""
    bounds = [0, *edges, None]
    lengths = [len(s.split()) for s in sources]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        idx = [k for k, n in enumerate(lengths) if n >= lo and (hi is None or n < hi)]
        if idx:
            label = f"{max(lo, 1)}-{hi - 1}" if hi is not None else f"{lo}+"
            aer = alignment_error_rate([links[k] for k in idx], [gold[k] for k in idx])
            out.append({"words": label, "sentences": len(idx), "aer": round(100 * aer, 2)})
    return out


def best_layer(
    backend: Backend, method: str, threshold: float, batch_tokens: int, heads: int | None = None,
    full_context: bool = False, word_links: str = "merged",
) -> tuple[int, list[float], str] | None:
    """The layer whose cross-attention (its first ``heads`` heads averaged, all when ``None``;
    links by ``method``) has the lowest AER on the validation split of the data the model was
    trained on, with every layer's AER and the gold file; ``None`` when that split has no gold
    links."""
    train_cfg = backend.config
    datamodule = build(train_cfg["data"], "data")
    datamodule.prepare_corpus()
    gold_file = datamodule.alignment_file("valid")
    if gold_file is None:
        return None
    sources, references = read_parallel(*datamodule.split_files("valid"))
    gold = read_gold(gold_file)
    dataset = backend.dataset(sources, references)
    pairs = [(i, t[1:-1]) for i, t in enumerate(dataset.tgt)]
    links = backend.alignments(dataset, pairs, batch_tokens, None, method, threshold, heads, full_context, word_links)
    aer = per_layer_aer(links, gold)
    layer = min(range(len(aer)), key=lambda i: aer[i])  # the first of equals: the lower layer
    log.info("eval.layer=best: layer %d of %d (validation AER per layer: %s, gold %s)",
             layer + 1, len(aer), aer, gold_file)
    return layer, aer, str(gold_file)


def eflomal_baseline(
    train_cfg: dict, sources: list[str], references: list[str], tokenizer: Tokenizer, units: str = "subwords",
) -> list[set[Link]]:
    """eflomal's symmetrised word links for the evaluated pairs, aligned together with the training
    corpus (text only: more text makes a better statistical aligner) and cached beside it. A pair
    that is also a training pair is aligned once (a repeated pair skews eflomal's statistics).
    ``units``: eflomal aligns whitespace ``words``, or the model's ``subwords`` (its sentencepiece
    pieces), whose links become word links where any of two words' pieces are linked."""
    from attnmt.align.eflomal import eflomal_links, piece_links, pieces_to_words

    datamodule = build(train_cfg["data"], "data")
    datamodule.prepare_corpus()
    all_src: list[str] = []
    all_tgt: list[str] = []
    for src_file, tgt_file in datamodule.train_files():
        for s, t in iter_parallel(src_file, tgt_file):
            all_src.append(s)
            all_tgt.append(t)
    index = {pair: k for k, pair in enumerate(zip(all_src, all_tgt))}
    rows = []
    for pair in zip(sources, references):
        if pair not in index:
            index[pair] = len(all_src)
            all_src.append(pair[0])
            all_tgt.append(pair[1])
        rows.append(index[pair])
    if units == "words":
        links = eflomal_links(all_src, all_tgt, datamodule.spm_cache_dir())
        return [links[k] for k in rows]
    src_pieces = [tokenizer.src_pieces(ids) for ids in tokenizer.encode_src(all_src)]
    tgt_pieces = [tokenizer.tgt_pieces(ids) for ids in tokenizer.encode_tgt(all_tgt)]
    links = piece_links(src_pieces, tgt_pieces, datamodule.spm_cache_dir())
    return [pieces_to_words(links[k], src_pieces[k], tgt_pieces[k]) for k in rows]
