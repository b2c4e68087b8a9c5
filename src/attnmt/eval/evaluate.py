"""Evaluating a checkpoint or a CTranslate2 export, in named stages over the decoding seam
(:mod:`attnmt.decode.backends`): **load** the model, **check** every setting that depends on it,
**decode** a split (greedy or beam) and score it with sacreBLEU, **align**: word alignments read
from the cross-attention, scored (AER) against gold links, and **report**: hypotheses,
alignments, heatmaps, ``results.json``, ``index.html`` and the printed table, all in the output
folder. An export returns one attention matrix (the last layer, heads averaged): its evaluation
has the scores and that layer's alignments, and no heatmaps."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from omegaconf import DictConfig, ListConfig

from attnmt.align.eflomal import require_eflomal
from attnmt.align.links import (
    Link,
    alignment_error_rate,
    alignment_scores,
    format_links,
    layer_index,
    read_gold,
)
from attnmt.data.dataset import ParallelDataset
from attnmt.data.io import read_parallel
from attnmt.data.tokenizer import EOS_ID
from attnmt.decode.backends import Backend, ExportBackend, TorchBackend, load_backend
from attnmt.decode.search import forced_attention
from attnmt.decode.settings import DecodeSettings
from attnmt.errors import ConfigError, DataError
from attnmt.eval.alignments import aer_by_length, best_layer, eflomal_baseline, per_layer_aer
from attnmt.eval.metrics import corpus_scores
from attnmt.utils.config import build, check_config
from attnmt.utils.device import decode_device
from attnmt.utils.io import atomic_write_text
from attnmt.utils.schema import NON_EMPTY, Ge, Gt, Le
from attnmt.viz.heatmaps import HeatmapSettings, export_heatmaps, write_index

if TYPE_CHECKING:
    from attnmt.models.base import Seq2Seq

log = logging.getLogger(__name__)


@dataclass
class EvaluateSettings:
    """evaluate.py's own keys (conf/evaluate.yaml); ``decode`` is a :class:`DecodeSettings`,
    ``eval`` an :class:`EvalSettings`."""

    ckpt: str | list[str]
    split: Literal["train", "valid", "test"] = "test"
    src_file: str | None = None
    ref_file: str | None = None


@dataclass
class EvalSettings:
    """evaluate.py's ``eval`` node: heatmaps and word alignments (conf/evaluate.yaml says what
    each key does)."""

    num_plots: Annotated[int, Ge(0)] = 10
    member: Annotated[int, Ge(1)] = 1
    attention: Literal["cross", "encoder_self", "decoder_self"] = "cross"
    layer: int | Literal["best"] = -1
    plot_grid: bool = True
    level: Literal["word", "subword"] = "word"
    formats: Annotated[list[Literal["png", "svg", "pdf"]], NON_EMPTY] = field(default_factory=lambda: ["png", "svg"])
    plot_target: Literal["hypothesis", "reference"] = "hypothesis"
    gold_alignments: str | None = None
    possible_alignments: str | None = None
    align_method: Literal["argmax", "threshold", "shift"] = "argmax"
    align_threshold: Annotated[float, Gt(0), Le(1)] = 0.5
    heads: Annotated[int, Ge(1)] | None = None
    full_context: bool | None = None
    word_links: Literal["merged", "any"] = "any"
    baseline: Literal["eflomal"] | None = None
    baseline_units: Literal["subwords", "words"] = "subwords"
    max_len: Annotated[int, Ge(1)] | None = None

    def heatmaps(self, layer: int) -> HeatmapSettings:
        return HeatmapSettings(
            num_plots=self.num_plots, attention=self.attention, layer=layer, grid=self.plot_grid,
            level=self.level, formats=tuple(self.formats), target=self.plot_target,
        )


def precision_recall(scores: dict[str, float], one_link: bool = False) -> str:
    """``precision P, recall R`` of :func:`alignment_scores`, with the recall that one link per
    target word can reach where the links are made so (``one_link``)."""
    bound = f" (one link per target word reaches at most {scores['recall_bound']:.2f})" if one_link else ""
    return f"precision {scores['precision']:.2f}, recall {scores['recall']:.2f}{bound}"


def alignment_heads(asked: int | None, train_cfg: dict, num_heads: int) -> tuple[int | None, str]:
    """How many of the first heads the alignments average (``None``: all) and how to say it.
    ``eval.heads=null`` means the heads a guided model was trained to align
    (``task.guided_alignment.heads``), else all of them."""
    guided = (train_cfg.get("task") or {}).get("guided_alignment") or {}
    supervised = guided.get("heads", 1) if guided.get("weight", 0) > 0 else None
    heads = asked if asked is not None else supervised
    if heads is not None and heads > num_heads:
        raise ConfigError(f"eval.heads={heads}: the model's cross-attention has {num_heads} heads (1..{num_heads})")
    if heads is None or heads == num_heads:
        return None, "heads averaged" if num_heads > 1 else "its single head"
    label = "head 1" if heads == 1 else f"heads 1-{heads} averaged"
    return heads, f"{label} of {num_heads}{' (the guided ones)' if asked is None else ''}"


def alignment_full_context(asked: bool | None, train_cfg: dict, model: Seq2Seq) -> bool:
    """Whether alignments read the target with the future mask lifted: ``eval.full_context``, or
    (null) as a guided model was trained (``task.guided_alignment.full_context``)."""
    guided = (train_cfg.get("task") or {}).get("guided_alignment") or {}
    full = asked if asked is not None else bool(guided.get("weight", 0) > 0 and guided.get("full_context", False))
    if full and not model.has_full_context:
        raise ConfigError(f"eval.full_context=true needs a Transformer: {type(model).__name__} reads the target "
                          "left to right only (set it to null or false)")
    return full


def split_files(
    train_cfg: dict, split: str, src_file: str | None, ref_file: str | None
) -> tuple[Path, Path, Path | None]:
    """Explicit files, or the named split of the data the checkpoint was trained on; plus that
    split's gold alignments where the corpus has them."""
    if src_file or ref_file:
        if not (src_file and ref_file):
            raise ConfigError("src_file and ref_file go together: give both, or neither to use split=")
        return Path(src_file), Path(ref_file), None
    datamodule = build(train_cfg["data"], "data")
    datamodule.prepare_corpus()
    return (*datamodule.split_files(split), datamodule.alignment_file(split))


def decode_lines(
    backend: Backend, sources: list[str], references: list[str], settings: DecodeSettings, progress: bool = True,
    max_len: int | None = None,
) -> tuple[ParallelDataset, list[list[int]], list[str], dict]:
    """Decode ``sources`` and score them against ``references``: the encoded pairs (each side cut
    at ``max_len`` pieces; ``None``: the training ``data.max_len``), the best hypothesis' ids, the
    detokenized hypotheses and the sacreBLEU scores."""
    dataset = backend.dataset(sources, references, max_len)
    hyp_ids = [h[0].tokens for h in backend.translate(dataset, settings, progress)]
    hypotheses = backend.tokenizer.decode_tgt(hyp_ids)
    return dataset, hyp_ids, hypotheses, corpus_scores(hypotheses, references)


@dataclass
class Plan:
    """What the check stage decided, before the long work starts."""

    src_file: Path
    ref_file: Path
    sources: list[str]
    references: list[str]
    gold_file: Path | None
    gold: list | None
    max_len: int
    cut: int
    heads: int | None = None
    heads_label: str = "heads averaged"
    full_context: bool = False
    chosen: tuple[int, list[float], str] | None = None  # eval.layer=best: layer, AER per layer, gold file
    attention_layers: int = 1  # layers of the attention that the heatmaps show
    num_heads: int = 1  # of the cross-attention


def load(cfg: DictConfig) -> tuple[DecodeSettings, EvalSettings, Backend]:
    """Every key checked, then the model behind the decoding seam, on ``decode.device``."""
    check_config(cfg, EvaluateSettings)  # every key, before the model loads
    decode: DecodeSettings = build(cfg.decode, "decode")
    e: EvalSettings = build(cfg.eval, "eval", _convert_="all")
    ckpt = list(cfg.ckpt) if isinstance(cfg.ckpt, ListConfig) else cfg.ckpt
    backend = load_backend(ckpt, str(decode_device(decode.device)), decode.compute_type, e.member)
    log.info("Decoding on %s in %s (%s)", backend.device, backend.compute_type, backend.kind)
    return decode, e, backend


def check(cfg: DictConfig, decode: DecodeSettings, e: EvalSettings, backend: Backend) -> Plan:
    """The data and every setting that depends on the model, checked before decoding."""
    src_file, ref_file, gold_file = split_files(backend.config, cfg.split, cfg.get("src_file"), cfg.get("ref_file"))
    gold_file = Path(e.gold_alignments) if e.gold_alignments else gold_file
    sources, references = read_parallel(src_file, ref_file)
    gold = read_gold(gold_file, e.possible_alignments) if gold_file else None
    if gold is not None and len(gold) != len(sources):
        raise DataError(f"{gold_file}: {len(gold)} lines of gold alignments, but {src_file} has {len(sources)} lines")
    plan = Plan(src_file, ref_file, sources, references, gold_file, gold, e.max_len or backend.max_len, 0)
    if isinstance(backend, ExportBackend):
        check_export(e, backend)
    else:
        check_model(decode, e, backend, plan)
    lengths = zip(backend.tokenizer.encode_src(sources), backend.tokenizer.encode_tgt(references))
    plan.cut = sum(max(len(s), len(t)) > plan.max_len for s, t in lengths)
    if plan.cut:
        log.warning("%d of %d sentence pairs have a side longer than %d pieces and are cut there (eval.max_len=%s%s), "
                    "so their links past it count as missed", plan.cut, len(sources), plan.max_len, e.max_len or "null",
                    "" if e.max_len else ": the training data.max_len")
    return plan


def check_export(e: EvalSettings, backend: ExportBackend) -> None:
    num_layers = backend.num_layers
    if e.align_method == "shift" or e.baseline:
        raise ConfigError(
            f"eval.align_method={e.align_method}, eval.baseline={e.baseline}: not available for a "
            "CTranslate2 export (it returns the attention of each emitted token only); evaluate the checkpoint"
        )
    if e.layer == "best" or e.layer % num_layers != num_layers - 1:
        log.warning("eval.layer=%s: a CTranslate2 export returns only the last layer's attention; using it", e.layer)
    if e.num_plots:
        log.info("Heatmaps skipped: a CTranslate2 export returns one attention matrix (last layer, heads averaged), "
                 "not every layer and head; evaluate the checkpoint for heatmaps")


def check_model(decode: DecodeSettings, e: EvalSettings, backend: TorchBackend, plan: Plan) -> None:
    model, tokenizer, train_cfg = backend.model, backend.tokenizer, backend.config
    device = next(model.parameters()).device
    first = torch.tensor([tokenizer.encode_src(plan.sources[:1])[0][:8] + [EOS_ID]], device=device)
    probe, _ = forced_attention(model, first, torch.ones_like(first, dtype=torch.bool), [[]])
    if e.attention not in probe:
        raise ConfigError(f"eval.attention={e.attention}: {backend.name} has no {e.attention} attention; "
                          f"it has {', '.join(sorted(probe))}")
    if e.layer != "best":
        layer_index(e.layer, probe[e.attention].size(1))
        layer_index(e.layer, probe["cross"].size(1))
    plan.attention_layers, plan.num_heads = probe[e.attention].size(1), probe["cross"].size(2)
    plan.heads, plan.heads_label = alignment_heads(e.heads, train_cfg, probe["cross"].size(2))
    plan.full_context = alignment_full_context(e.full_context, train_cfg, model)
    if plan.full_context:
        plan.heads_label += ", full target context"
    if e.baseline == "eflomal":
        require_eflomal("eval.baseline=eflomal")  # before eval.layer=best reads the validation split
    positions = getattr(model, "positions", None)  # a Transformer's sinusoid table bounds the length
    # Sources and references with <s>/</s>; hypotheses up to decode.max_len_ratio * source + 10.
    longest = max(e.max_len + 2, decode.max_len_ratio * e.max_len + 12) if e.max_len else 0
    if positions is not None and longest > len(positions):
        most = min(len(positions) - 2, int((len(positions) - 12) / decode.max_len_ratio))
        raise ConfigError(f"eval.max_len={e.max_len}: the model has {len(positions)} positions, so at most {most} "
                          f"pieces per sentence with decode.max_len_ratio={decode.max_len_ratio} (or null: the "
                          "training data.max_len)")
    if e.layer == "best":
        plan.chosen = best_layer(backend, e.align_method, e.align_threshold, decode.batch_tokens, plan.heads,
                                 plan.full_context, e.word_links)
        if plan.chosen is None:
            log.warning("eval.layer=best: the validation split has no gold alignments; using the last layer")


def align(
    decode: DecodeSettings, e: EvalSettings, backend: Backend, plan: Plan, dataset: ParallelDataset, out_dir: Path,
) -> tuple[dict, int, list[set[Link]] | None]:
    """Word alignments of each source with its reference, read by the model (teacher-forced), per
    layer, written for the layer reported: the alignment record (scores against gold included),
    that layer, and eflomal's links where asked for."""
    pairs = [(i, t[1:-1]) for i, t in enumerate(dataset.tgt)]
    per_layer = backend.alignments(dataset, pairs, decode.batch_tokens, None, e.align_method, e.align_threshold,
                                   plan.heads, plan.full_context, e.word_links)
    if isinstance(backend, ExportBackend):  # one layer: the last
        num_layers, layer, index = backend.num_layers, backend.num_layers - 1, 0
    else:
        num_layers = len(per_layer)
        layer = plan.chosen[0] if plan.chosen else layer_index(-1 if e.layer == "best" else e.layer, num_layers)
        index = layer
    links = per_layer[index]
    atomic_write_text(out_dir / "alignments.txt", "".join(format_links(x) + "\n" for x in links))
    alignment = {"file": "alignments.txt", "layer": layer, "num_layers": num_layers, "method": e.align_method,
                 "word_links": e.word_links}
    if isinstance(backend, TorchBackend):
        alignment.update(heads=plan.heads or plan.num_heads, full_context=plan.full_context)
    if e.layer == "best" and isinstance(backend, TorchBackend):
        alignment["layer_choice"] = (
            {"by": "lowest validation AER", "gold_file": plan.chosen[2], "valid_aer_per_layer": plan.chosen[1]}
            if plan.chosen else {"by": "last layer: the validation split has no gold alignments"}
        )
    gold, baseline = plan.gold, None
    if gold is not None:
        alignment["gold_file"] = str(plan.gold_file)
        alignment["aer_per_layer"] = per_layer_aer(per_layer, gold)
        alignment["aer"] = alignment["aer_per_layer"][index]
        alignment["scores"] = alignment_scores(links, gold)
        alignment["by_length"] = aer_by_length(links, gold, plan.sources)
        if e.baseline == "eflomal":
            baseline = eflomal_baseline(backend.config, plan.sources, plan.references, backend.tokenizer,
                                        e.baseline_units)
            atomic_write_text(out_dir / "alignments.eflomal.txt", "".join(format_links(x) + "\n" for x in baseline))
            alignment["baseline"] = {
                "aligner": "eflomal", "units": e.baseline_units, "symmetrisation": "grow-diag-final-and",
                "file": "alignments.eflomal.txt",
            }
            alignment["aer_baseline"] = round(100 * alignment_error_rate(baseline, gold), 2)
            alignment["baseline"]["scores"] = alignment_scores(baseline, gold)
            alignment["baseline"]["by_length"] = aer_by_length(baseline, gold, plan.sources)
            # How closely the attention follows eflomal (a guided model's teacher): its links scored
            # against eflomal's as if they were sure gold.
            teacher = [(x, x) for x in baseline]
            alignment["baseline"]["agreement"] = {
                k: v for k, v in alignment_scores(links, teacher).items() if k in ("precision", "recall")
            }
    elif e.baseline is not None:
        log.warning("eval.baseline=%s: no gold alignments for %s, so no AER to compare", e.baseline, plan.src_file)
    return alignment, layer, baseline


def evaluate(cfg: DictConfig) -> dict:
    """evaluate.py: load, check, decode, align, report."""
    decode, e, backend = load(cfg)
    plan = check(cfg, decode, e, backend)
    out_dir = Path(cfg.paths.output_dir)

    dataset, hyp_ids, hypotheses, scores = decode_lines(
        backend, plan.sources, plan.references, decode, max_len=plan.max_len
    )
    atomic_write_text(out_dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))
    alignment, layer, baseline = align(decode, e, backend, plan, dataset, out_dir)

    pictures: dict[int, list[Path]] = {}
    if isinstance(backend, TorchBackend):
        shown = layer if e.attention == "cross" else layer_index(-1 if e.layer == "best" else e.layer,
                                                                  plan.attention_layers)
        pictures = export_heatmaps(backend.model, backend.tokenizer, dataset, hyp_ids, plan.references, plan.gold,
                                   out_dir, e.heatmaps(shown), backend.name, decode.search, baseline)
    return report(cfg, decode, e, backend, plan, scores, hypotheses, alignment, pictures, out_dir)


def report(
    cfg: DictConfig, decode: DecodeSettings, e: EvalSettings, backend: Backend, plan: Plan, scores: dict,
    hypotheses: list[str], alignment: dict, pictures: dict[int, list[Path]], out_dir: Path,
) -> dict:
    """results.json, index.html and the printed table."""
    exported = isinstance(backend, ExportBackend)
    num_layers, layer = alignment["num_layers"], alignment["layer"]
    results = {
        **scores,
        "num_sentences": len(hypotheses),
        "checkpoint": str(cfg.ckpt if exported else backend.path),
        "model": backend.config["model"]["_target_"],
        **({"backend": f"ctranslate2 {backend.exported.meta['quantization']}",
            "source_checkpoint": backend.exported.meta["source_checkpoint"]} if exported else {}),
        "source_file": str(plan.src_file),
        "reference_file": str(plan.ref_file),
        "hypothesis_file": "hypotheses.txt",
        "decoding": {
            "search": {"beam": "beam", "greedy": "greedy", "sample": "sampling"}[decode.strategy_used],
            "beam_size": decode.beam_size, "alpha": decode.alpha, "max_len_ratio": decode.max_len_ratio,
            **({"top_k": decode.top_k, "top_p": decode.top_p, "temperature": decode.temperature, "seed": decode.seed}
               if decode.strategy_used == "sample" else {}),
            "device": str(backend.device), "compute_type": backend.compute_type,
        },
        "max_len": plan.max_len,
        "cut_sentences": plan.cut,
        **({"aer": alignment["aer"]} if "aer" in alignment else {}),
        **({"aer_per_layer": alignment["aer_per_layer"]}
           if "aer" in alignment and len(alignment["aer_per_layer"]) > 1 else {}),
        **({"aer_baseline": alignment["aer_baseline"]} if "aer_baseline" in alignment else {}),
        "alignment": alignment,
        "heatmaps": sum(len(v) for v in pictures.values()),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")

    chosen = " (best on valid)" if plan.chosen else ""
    where = ("last layer, heads averaged" if exported else
             f"layer {layer + 1} of {num_layers}{chosen}, {plan.heads_label}")
    # argmax and shift over merged word attention make one link per target word: a recall bound.
    one_link = e.word_links == "merged" and e.align_method != "threshold"
    summary = {
        "model": f"{backend.name} ({results['checkpoint']})",
        "data": f"{plan.src_file} -> {plan.ref_file} ({len(hypotheses)} sentences)",
        "decoding": decode.search,
        **{
            name.upper() if name != "chrf" else "chrF": f"{scores[name]['score']:.2f}  ({scores[name]['signature']})"
            for name in ("bleu", "chrf", "ter")
        },
    }
    if plan.gold is not None:
        summary["AER"] = (f"{alignment['aer']:.2f}  ({where}, {e.align_method}, word links {e.word_links}, "
                          f"gold {plan.gold_file}; {precision_recall(alignment['scores'], one_link)})")
        if "aer_baseline" in alignment:
            summary["AER eflomal"] = (
                f"{alignment['aer_baseline']:.2f}  (on {e.baseline_units}, both directions, grow-diag-final-and, "
                f"same gold; {precision_recall(alignment['baseline']['scores'])})"
            )
        if len(alignment["aer_per_layer"]) > 1:
            summary["AER per layer"] = "  ".join(f"{x:.2f}" for x in alignment["aer_per_layer"])
    write_index(out_dir / "index.html", f"attnmt evaluation: {backend.name}", summary, plan.sources, hypotheses,
                plan.references, pictures)

    print(f"\n{backend.name} on {plan.src_file} ({len(hypotheses)} sentences, {decode.search})")
    print(f"  {'metric':7s} {'score':>6s}   signature")
    for name, label in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER")):
        print(f"  {label:7s} {scores[name]['score']:6.2f}   {scores[name]['signature']}")
    if plan.gold is not None:
        print(f"  {'AER':7s} {alignment['aer']:6.2f}   {where}, {e.align_method}, "
              f"word links {e.word_links}, vs {plan.gold_file}")
        print(f"  {'':7s} {'':6s}   {precision_recall(alignment['scores'], one_link)}")
        if "aer_baseline" in alignment:
            print(f"  {'eflomal':7s} {alignment['aer_baseline']:6.2f}   "
                  f"AER of eflomal (on {e.baseline_units}, both directions, grow-diag-final-and), same gold; "
                  f"{precision_recall(alignment['baseline']['scores'])}")
            agree = alignment["baseline"]["agreement"]
            print(f"  {'':7s} {'':6s}   the attention's links against eflomal's: precision {agree['precision']:.2f}, "
                  f"recall {agree['recall']:.2f}")
        print("  AER by source length (words): " + ", ".join(
            f"{b['words']}: {b['aer']:.2f}" + (f" (eflomal {x['aer']:.2f})" if x else "")
            for b, x in zip(alignment["by_length"], alignment.get("baseline", {}).get("by_length") or repeat(None))
        ))
        if len(alignment["aer_per_layer"]) > 1:
            print("  AER per layer: "
                  + ", ".join(f"{i + 1}: {x:.2f}" for i, x in enumerate(alignment["aer_per_layer"])))
    images = f" and {results['heatmaps']} images" if not exported else " (no heatmaps: an export)"
    print(f"  wrote hypotheses.txt, alignments.txt, results.json, index.html{images} to {out_dir}")
    return results
