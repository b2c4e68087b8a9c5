"""evaluate.py on a CTranslate2 export (``ckpt=DIR`` written by ``attnmt-export``): the same
scores (sacreBLEU BLEU, chrF, TER with their signatures), hypotheses, results.json and index.html
as for a checkpoint. Word alignments and AER come from the one attention an export returns (the
last decoder layer's cross-attention averaged over heads); heatmaps need every layer and head and
are skipped, with a log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from attnmt.alignment import alignment_error_rate, format_links, read_gold
from attnmt.ct2 import ExportedModel, word_links
from attnmt.data.datamodule import encode_for_eval
from attnmt.data.io import read_parallel
from attnmt.errors import ConfigError, DataError
from attnmt.heatmaps import write_index
from attnmt.metrics import corpus_scores
from attnmt.utils.device import decode_device
from attnmt.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def evaluate_exported(cfg, decode, e) -> dict:
    """``cfg``: evaluate.py's config; ``decode``: DecodeSettings; ``e``: EvalSettings."""
    from attnmt.evaluation import split_files

    out_dir = Path(cfg.paths.output_dir)
    device = decode_device(decode.device)
    exported = ExportedModel(cfg.ckpt, device=device.type, device_index=device.index or 0)
    tokenizer = exported.tokenizer
    src_file, ref_file, gold_file = split_files(exported.config, cfg.split, cfg.get("src_file"), cfg.get("ref_file"))
    gold_file = Path(e.gold_alignments) if e.gold_alignments else gold_file
    sources, references = read_parallel(src_file, ref_file)
    gold = read_gold(gold_file, e.possible_alignments) if gold_file else None
    if gold is not None and len(gold) != len(sources):
        raise DataError(f"{gold_file}: {len(gold)} lines of gold alignments, but {src_file} has {len(sources)} lines")
    num_layers = int(exported.meta["model"].get("decoder_layers", 1))
    if e.align_method == "shift" or getattr(e, "baseline", None):
        raise ConfigError(
            f"eval.align_method={e.align_method}, eval.baseline={getattr(e, 'baseline', None)}: not available for a "
            "CTranslate2 export (it returns the attention of each emitted token only); evaluate the checkpoint"
        )
    if e.layer == "best" or e.layer % num_layers != num_layers - 1:
        log.warning("eval.layer=%s: a CTranslate2 export returns only the last layer's attention; using it", e.layer)
    if e.num_plots:
        log.info("Heatmaps skipped: a CTranslate2 export returns one attention matrix (last layer, heads averaged), "
                 "not every layer and head; evaluate the checkpoint for heatmaps")

    dataset = encode_for_eval(tokenizer, sources, references, max_len=exported.max_len)
    found, _ = exported.translate_dataset(dataset, decode)
    hypotheses = tokenizer.decode_tgt([h[0].tokens for h in found])
    scores = corpus_scores(hypotheses, references)
    atomic_write_text(out_dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))

    pairs = [(i, t[1:-1]) for i, t in enumerate(dataset.tgt)]  # each source with its reference
    attention = exported.forced_attention(dataset, pairs)
    links = [
        word_links(tokenizer, dataset.src[i], t, a, e.align_method, e.align_threshold, e.word_links)
        for (i, t), a in zip(pairs, attention)
    ]
    atomic_write_text(out_dir / "alignments.txt", "".join(format_links(x) + "\n" for x in links))
    alignment = {"file": "alignments.txt", "layer": num_layers - 1, "num_layers": num_layers, "method": e.align_method,
                 "word_links": e.word_links}
    if gold is not None:
        alignment["gold_file"] = str(gold_file)
        alignment["aer"] = round(100 * alignment_error_rate(links, gold), 2)

    search = "greedy" if decode.beam_size == 1 else f"beam {decode.beam_size}, alpha {decode.alpha}"
    results = {
        **scores,
        "num_sentences": len(hypotheses),
        "checkpoint": str(cfg.ckpt),
        "model": exported.meta["model"]["_target_"],
        "backend": f"ctranslate2 {exported.meta['quantization']}",
        "source_checkpoint": exported.meta["source_checkpoint"],
        "source_file": str(src_file),
        "reference_file": str(ref_file),
        "hypothesis_file": "hypotheses.txt",
        "decoding": {"search": "greedy" if decode.beam_size == 1 else "beam", "beam_size": decode.beam_size,
                     "alpha": decode.alpha, "max_len_ratio": decode.max_len_ratio, "device": str(device)},
        **({"aer": alignment["aer"]} if "aer" in alignment else {}),
        "alignment": alignment,
        "heatmaps": 0,
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    summary = {
        "model": f"{exported.name} ({cfg.ckpt})",
        "data": f"{src_file} -> {ref_file} ({len(hypotheses)} sentences)",
        "decoding": search,
        **{
            name.upper() if name != "chrf" else "chrF": f"{scores[name]['score']:.2f}  ({scores[name]['signature']})"
            for name in ("bleu", "chrf", "ter")
        },
    }
    if gold is not None:
        summary["AER"] = f"{alignment['aer']:.2f}  (last layer, heads averaged, {e.align_method}, gold {gold_file})"
    write_index(
        out_dir / "index.html", f"attnmt evaluation: {exported.name}", summary, sources, hypotheses, references, {}
    )

    print(f"\n{exported.name} on {src_file} ({len(hypotheses)} sentences, {search})")
    print(f"  {'metric':7s} {'score':>6s}   signature")
    for name, label in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER")):
        print(f"  {label:7s} {scores[name]['score']:6.2f}   {scores[name]['signature']}")
    if gold is not None:
        print(f"  {'AER':7s} {alignment['aer']:6.2f}   last layer, heads averaged, {e.align_method}, vs {gold_file}")
    print(f"  wrote hypotheses.txt, alignments.txt, results.json and index.html to {out_dir} (no heatmaps)")
    return results
