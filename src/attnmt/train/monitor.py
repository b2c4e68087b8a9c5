"""Attention while it forms: a few fixed validation sentences, drawn at every validation.

At each validation (not the sanity check) the monitor decodes its sentences greedily and draws
their cross-attention with the code ``evaluate.py`` uses (:func:`attnmt.viz.heatmaps.export_heatmaps`:
word level, the chosen layer with heads averaged, and for models with several layers or heads
the layers x heads grid). It writes

* ``<run>/attention/step_NNNNNNN/NNNN.cross[.layerK].png`` (and ``.grid.png``), ``NNNN`` being
  the sentence's line in the validation split, and ``monitor.json`` beside them (the sentences,
  their hypotheses, entropy and AER), which the run page (:mod:`attnmt.train.run_page`) reads;
* the scalars ``attention/entropy`` and, where the corpus has gold alignments (the embedded one
  does), ``attention/aer``, through Lightning's logging (every logger);
* the images and the hypotheses to every logger that takes images (TensorBoard, W&B, MLflow).

Entropy and AER are measured on the attention while the model reads the *reference*
(teacher-forced), as ``evaluate.py`` scores AER: gold links are links between reference words,
and the same target makes values of different steps comparable. Entropy is the mean, over target
words, of the entropy (nats) of the word-level attention row, renormalised to sum to 1 over the
source words (``</s>`` dropped). AER links each target piece to its most attended source piece and
two words when any of their pieces are linked (``evaluate.py``'s default ``eval.word_links=any``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from attnmt.utils.io import atomic_write_text
from attnmt.utils.schema import Ge
from attnmt.utils.stored import MAX_LEN

log = logging.getLogger(__name__)

RECORD = "monitor.json"


def step_dir(dirpath: str | Path, step: int) -> Path:
    return Path(dirpath) / f"step_{step:07d}"


def row_entropy(weights: np.ndarray) -> float:
    """Mean entropy (nats) of the rows of ``weights`` ``(T, S)``, each renormalised to sum to 1."""
    p = weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return float(h.mean()) if len(h) else 0.0


class AttentionMonitor(Callback):
    """Draws and scores the cross-attention of ``num_sentences`` validation sentences (the first
    ones of the split) at every validation; see the module docstring for what it writes."""

    def __init__(
        self,
        dirpath: str,
        num_sentences: Annotated[int, Ge(0)] = 4,
        layer: int = -1,
        grid: bool = True,
        level: Literal["word", "subword"] = "word",
        log_images: bool = True,
    ):
        self.dirpath = Path(dirpath)
        self.num_sentences = num_sentences
        self.layer = layer
        self.grid = grid
        self.level = level
        self.log_images = log_images
        self._sentences = None  # (dataset, sources, references, gold or None), built on first use
        self.seconds = 0.0  # spent at validations, reported at the end: what the monitor costs

    # -- the sentences ----------------------------------------------------------------------------
    def _load(self, trainer: pl.Trainer, pl_module) -> tuple:
        from attnmt.align.links import read_gold
        from attnmt.data.dataset import encode_for_eval
        from attnmt.data.io import read_parallel

        dm = trainer.datamodule
        sources, references = read_parallel(*dm.split_files("valid"))
        n = min(self.num_sentences, len(sources))
        sources, references = sources[:n], references[:n]
        gold_file = dm.alignment_file("valid")
        gold = read_gold(gold_file)[:n] if gold_file is not None else None
        tokenizer = pl_module.tokenizer or dm.tokenizer
        dataset = encode_for_eval(tokenizer, sources, references, getattr(dm, "max_len", MAX_LEN))
        return dataset, sources, references, gold

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.num_sentences == 0:
            return
        from attnmt.align.links import layer_index

        self._sentences = self._load(trainer, pl_module)
        layer_index(self.layer, self._num_layers(pl_module), "callbacks.attention_monitor.layer")
        if trainer.is_global_zero:  # a resumed run repeats the steps after its checkpoint
            for old in self.dirpath.glob("step_*"):
                if old.name[5:].isdigit() and int(old.name[5:]) > trainer.global_step:
                    shutil.rmtree(old, ignore_errors=True)

    def _num_layers(self, pl_module) -> int:
        import torch

        from attnmt.decode.search import forced_attention

        dataset, model = self._sentences[0], pl_module.model
        src = torch.tensor([dataset.src[0][:8]], device=pl_module.device)
        training = model.training
        model.eval()  # no dropout: the probe must not draw from the random stream training uses
        try:
            attn, _ = forced_attention(model, src, torch.ones_like(src, dtype=torch.bool), [[]])
        finally:
            model.train(training)
        return attn["cross"].size(1)

    # -- at every validation --------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        # Rank 0 alone: the other ranks hold the same weights, and nothing here is collective.
        if trainer.sanity_checking or self._sentences is None or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        scores = self.measure(pl_module)
        pl_module.log("attention/entropy", scores["entropy"], rank_zero_only=True)
        if scores["aer"] is not None:
            pl_module.log("attention/aer", scores["aer"], rank_zero_only=True)
        record = self.draw(trainer, pl_module, scores)
        if self.log_images:
            send_to_loggers(trainer.loggers, record, self.dirpath)
        self.seconds += time.perf_counter() - start

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._sentences is not None:
            log.info("Attention monitor: %.1f s in all", self.seconds)

    def measure(self, pl_module) -> dict:
        """Greedy hypotheses, and per sentence the entropy and AER of the attention while reading
        the reference (layer ``self.layer``, heads averaged, word level)."""
        from attnmt.align.links import alignment_error_rate, layer_index, sentence_links
        from attnmt.data.dataset import pad
        from attnmt.data.subwords import merge_to_words, word_ids
        from attnmt.data.tokenizer import PAD_ID
        from attnmt.decode.search import forced_attention, greedy_search

        dataset, _, _, gold = self._sentences
        tokenizer = pl_module.tokenizer
        src = pad(dataset.src).to(pl_module.device)  # (B, S)
        mask = src != PAD_ID
        hyp_ids = [
            h.tokens for h in greedy_search(pl_module.model, src, mask, getattr(pl_module, "max_len_ratio", 1.5))
        ]
        references = [t[1:-1] for t in dataset.tgt]
        attn, _ = forced_attention(pl_module.model, src, mask, references)
        cross = attn["cross"].float().mean(2).cpu().numpy()  # (B, L, T, S), heads averaged
        layer = layer_index(self.layer, cross.shape[1], "callbacks.attention_monitor.layer")
        entropies, links = [], []
        for b, tgt in enumerate(references):
            tgt_pieces, src_pieces = tokenizer.tgt_pieces(tgt), tokenizer.src_pieces(dataset.src[b])
            rows, cols = word_ids(tgt_pieces + ["</s>"]), word_ids(src_pieces)
            weights = cross[b, layer, : len(rows), : len(cols)]  # (T + 1, S)
            entropies.append(row_entropy(merge_to_words(weights, rows, cols)))  # over (T_words, S_words)
            links.append(sentence_links(weights, tgt_pieces, src_pieces, word_links="any"))  # as evaluate.py
        aers = None if gold is None else [alignment_error_rate([a], [g]) for a, g in zip(links, gold)]
        return {
            "hyp_ids": hyp_ids,
            "hypotheses": tokenizer.decode_tgt(hyp_ids),
            "entropies": entropies,
            "aers": aers,
            "entropy": float(np.mean(entropies)),
            "aer": None if gold is None else alignment_error_rate(links, gold),
            "layer": layer,
        }

    def draw(self, trainer: pl.Trainer, pl_module, scores: dict) -> dict:
        """The pictures of this step and ``monitor.json`` in ``step_NNNNNNN/``; returns the record."""
        from attnmt.viz.heatmaps import HeatmapSettings, export_heatmaps

        dataset, sources, references, gold = self._sentences
        step = trainer.global_step
        out = step_dir(self.dirpath, step)
        settings = HeatmapSettings(
            num_plots=len(sources), layer=self.layer, grid=self.grid, level=self.level, formats=("png",)
        )
        name = type(pl_module.model).__name__
        pictures = export_heatmaps(
            pl_module.model, pl_module.tokenizer, dataset, scores["hyp_ids"], references, gold, out,
            settings, f"{name}, step {step}", "greedy", subdir="",
        )
        record = {
            "step": step,
            "epoch": trainer.current_epoch,
            "layer": scores["layer"],
            "entropy": scores["entropy"],
            "aer": scores["aer"],
            "sentences": [
                {
                    "index": i,
                    "source": sources[i],
                    "reference": references[i],
                    "hypothesis": scores["hypotheses"][i],
                    "entropy": scores["entropies"][i],
                    "aer": None if scores["aers"] is None else scores["aers"][i],
                    # the chosen layer (heads averaged) first, then the layers x heads grid if any
                    "images": [p.relative_to(self.dirpath).as_posix() for p in pictures[i]],
                }
                for i in range(len(sources))
            ],
        }
        atomic_write_text(out / RECORD, json.dumps(record, indent=1) + "\n")
        return record


def read_records(dirpath: str | Path) -> list[dict]:
    """Every validation's ``monitor.json`` under ``dirpath``, by step."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in Path(dirpath).glob(f"step_*/{RECORD}")]
    return sorted(records, key=lambda r: r["step"])


def hypotheses_text(record: dict) -> str:
    """The sentences of one validation as Markdown (TensorBoard renders its text as Markdown)."""
    lines = [f"step {record['step']}", ""]
    for s in record["sentences"]:
        score = f"entropy {s['entropy']:.3f}" + ("" if s["aer"] is None else f", AER {s['aer']:.3f}")
        lines += [
            f"**sentence {s['index']}** ({score})", "",
            f"    source:     {s['source']}", f"    hypothesis: {s['hypothesis']}",
            f"    reference:  {s['reference']}", "",
        ]
    return "\n".join(lines)


def send_to_loggers(loggers: list, record: dict, dirpath: Path) -> None:
    """The pictures and hypotheses of one validation, to every logger that takes images."""
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    step = record["step"]
    images = [(f"attention/sentence_{s['index']}" + ("/grid" if ".grid." in p else ""), dirpath / p, s)
              for s in record["sentences"] for p in s["images"]]
    text = hypotheses_text(record)
    for logger in loggers:
        try:
            if isinstance(logger, TensorBoardLogger):
                from PIL import Image

                for tag, path, _ in images:
                    with Image.open(path) as im:
                        logger.experiment.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
                logger.experiment.add_text("attention/hypotheses", text, step)
            elif isinstance(logger, WandbLogger):
                for tag, path, s in images:
                    logger.log_image(key=tag, images=[str(path)], step=step, caption=[s["hypothesis"]])
                logger.log_text(
                    key="attention/hypotheses", columns=["step", "sentence", "source", "hypothesis", "reference"],
                    data=[
                        [step, s["index"], s["source"], s["hypothesis"], s["reference"]] for s in record["sentences"]
                    ],
                    step=step,
                )
            elif isinstance(logger, MLFlowLogger):
                where = f"attention/step_{step:07d}"
                for _, path, _ in images:
                    logger.experiment.log_artifact(logger.run_id, str(path), where)
                logger.experiment.log_text(logger.run_id, text, f"{where}/hypotheses.md")
        except Exception as e:  # a logger's hiccup (a full disk, a server away) must not stop training
            log.warning("attention monitor: %s did not take the step %d images: %s", type(logger).__name__, step, e)
