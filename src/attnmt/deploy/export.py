"""Exporting a Transformer checkpoint to CTranslate2, and the ``attnmt-export`` command.

``attnmt-export ckpt=RUN_OR_CKPT [out=DIR] [quantization=float32|int16|int8]`` writes a folder
that CTranslate2 (https://github.com/OpenNMT/CTranslate2) loads directly: ``model.bin``,
``config.json`` and the vocabularies, plus attnmt's own ``source.spm`` (and ``target.spm`` for
separate vocabularies) and ``attnmt.json`` (languages, version, source checkpoint, decoding
defaults, the training config). ``attnmt-translate``, ``evaluate.py`` and ``attnmt-serve`` accept
the folder in place of a checkpoint (:mod:`attnmt.decode.ct2`).

The converter maps our :class:`attnmt.models.transformer.Transformer` one to one onto a
CTranslate2 ``TransformerSpec``: pre- or post-norm layers (CTranslate2 puts each sublayer's
layer norm in the sublayer's spec, before it with pre-norm, after the residual with post-norm),
fused query/key/value projections, our interleaved sinusoid table (:func:`sinusoid_positions`)
given explicitly, embeddings scaled by ``sqrt(d_model)``, the LayerNorm epsilon of PyTorch, and
the vocabulary in model-id order (so ids 0-3 stay ``<pad> <unk> <s> </s>`` even for a
sentencepiece model whose ``<unk>`` and ``<pad>`` are swapped).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from attnmt.decode.exported import FORMAT, METADATA, import_ctranslate2, is_exported
from attnmt.errors import CheckpointError, ConfigError
from attnmt.utils.stored import max_len, model_name

USAGE_HEAD = """usage: attnmt-export ckpt=RUN_OR_CKPT [out=DIR] [quantization=float32]

Write a CTranslate2 model of a trained Transformer checkpoint, for fast CPU/GPU decoding.

keys:
"""
USAGE_TAIL = """
The folder holds model.bin, config.json and the vocabulary (CTranslate2's files), source.spm
(and target.spm) and attnmt.json; attnmt-translate, evaluate.py and attnmt-serve take it as
ckpt=DIR. An existing export at out is replaced; any other existing folder is an error.
Needs the ctranslate2 extra: pip install 'attnmt[ctranslate2]'. RNN models cannot be
exported (CTranslate2 has no RNN sequence-to-sequence models).
"""


@dataclass
class ExportSettings:
    """The keys of ``attnmt-export`` (its ``--help`` is written from them)."""

    ckpt: str = field(metadata={"help": "a .ckpt file or a training run's output folder", "metavar": "PATH"})
    out: str | None = field(default=None, metadata={
        "help": "the folder to write (null: RUN_DIR/ct2-QUANTIZATION)", "metavar": "DIR"})
    quantization: Literal["float32", "int16", "int8"] = field(default="float32", metadata={
        "help": "weights as float32, int16 or int8", "metavar": "Q"})


def transformer_spec(model, tokenizer):
    """The CTranslate2 ``TransformerSpec`` of ``model`` (an attnmt Transformer) with its weights."""
    import numpy as np
    import torch
    from ctranslate2.specs import transformer_spec as ts

    from attnmt.data.tokenizer import BOS_ID, EOS_ID, UNK_ID
    from attnmt.models.base import sinusoid_positions

    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy().copy()

    def linear(spec, module, *fused):
        modules = (module, *fused)
        spec.weight = np.concatenate([array(m.weight) for m in modules])
        if module.bias is not None:
            spec.bias = np.concatenate([array(m.bias) for m in modules])

    def norm(spec, module):
        spec.gamma, spec.beta = array(module.weight), array(module.bias)

    def attention(spec, module, self_attention: bool):
        if self_attention:
            linear(spec.linear[0], module.q_proj, module.k_proj, module.v_proj)
        else:
            linear(spec.linear[0], module.q_proj)
            linear(spec.linear[1], module.k_proj, module.v_proj)
        linear(spec.linear[-1], module.out_proj)
        if module.scale != 1.0 / (module.d_k ** 0.5):  # scale_scores=false
            spec.queries_scale = np.float32(module.scale)

    heads = model.encoder[0].self_attn.num_heads
    pre_norm = model.norm_first
    encoder = ts.TransformerEncoderSpec(len(model.encoder), heads, pre_norm=pre_norm)
    # alignment_heads=heads: the attention returned with return_attention is the last layer's
    # cross-attention averaged over all heads, as attnmt-translate's alignments and eval.layer=-1.
    decoder = ts.TransformerDecoderSpec(
        len(model.decoder), heads, pre_norm=pre_norm, alignment_layer=-1, alignment_heads=heads
    )
    positions = array(sinusoid_positions(model.positions.size(0), model.d_model))  # (max_positions, D)
    for side, embedding in ((encoder, model.src_embed), (decoder, model.tgt_embed)):
        side.scale_embeddings = True  # sqrt(d_model), section 3.4
        side.position_encodings.encodings = positions
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = array(embedding.weight)
    for spec, layer in zip(encoder.layer, model.encoder):
        attention(spec.self_attention, layer.self_attn, True)
        norm(spec.self_attention.layer_norm, layer.ln_1)
        linear(spec.ffn.linear_0, layer.mlp.w_1)
        linear(spec.ffn.linear_1, layer.mlp.w_2)
        norm(spec.ffn.layer_norm, layer.ln_2)
    for spec, layer in zip(decoder.layer, model.decoder):
        attention(spec.self_attention, layer.self_attn, True)
        norm(spec.self_attention.layer_norm, layer.ln_1)
        attention(spec.attention, layer.cross_attn, False)
        norm(spec.attention.layer_norm, layer.ln_2)
        linear(spec.ffn.linear_0, layer.mlp.w_1)
        linear(spec.ffn.linear_1, layer.mlp.w_2)
        norm(spec.ffn.layer_norm, layer.ln_3)
    if pre_norm:
        norm(encoder.layer_norm, model.ln_enc)
        norm(decoder.layer_norm, model.ln_dec)
    linear(decoder.projection, model.generator)

    spec = ts.TransformerSpec(encoder, decoder)
    spec.config.layer_norm_epsilon = model.encoder[0].ln_1.eps  # PyTorch's 1e-5, not CTranslate2's 1e-6
    src_vocab = tokenizer.src_pieces(list(range(tokenizer.src_vocab_size)))  # in model-id order
    tgt_vocab = tokenizer.tgt_pieces(list(range(tokenizer.tgt_vocab_size)))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = (
        tgt_vocab[i] for i in (UNK_ID, BOS_ID, EOS_ID)
    )
    spec.config.decoder_start_token = tgt_vocab[BOS_ID]
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    return spec


def default_out(ckpt: Path, quantization: str) -> Path:
    """``RUN_DIR/ct2-Q``: the run folder given, or the one a ``RUN/checkpoints/x.ckpt`` lies in."""
    ckpt = Path(ckpt)
    run = ckpt if ckpt.is_dir() else ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / f"ct2-{quantization}"


def export(ckpt: str | Path, out: str | Path | None = None, quantization: str = "float32") -> Path:
    """Write the CTranslate2 export of ``ckpt`` to ``out`` (atomically) and return ``out``."""
    ctranslate2 = import_ctranslate2()
    from ctranslate2.converters import Converter

    import attnmt
    from attnmt.decode.checkpoint import load_for_decoding
    from attnmt.decode.settings import DecodeSettings
    from attnmt.models.transformer import Transformer

    out = Path(out) if out else default_out(Path(ckpt), quantization)
    if out.exists() and not is_exported(out) and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={out}: exists and is not an attnmt export; give a new or empty folder")
    model, tokenizer, config, path = load_for_decoding(ckpt)
    if not isinstance(model, Transformer):
        name = model_name(config)
        raise CheckpointError(f"{path}: a {name} model; CTranslate2 has no RNN sequence-to-sequence models, "
                              "only Transformers can be exported")

    class AttnmtConverter(Converter):
        def _load(self):
            return transformer_spec(model, tokenizer)

    defaults = DecodeSettings()
    data = config["data"]
    meta = {
        "format": FORMAT,
        "attnmt_version": attnmt.__version__,
        "ctranslate2_version": ctranslate2.__version__,
        "source_checkpoint": str(Path(path).resolve()),
        "languages": {"source": data.get("src_lang"), "target": data.get("tgt_lang")},
        "quantization": quantization,
        "model": {k: v for k, v in config["model"].items() if k != "dropout"},
        "joint_vocab": tokenizer.joint,
        "max_len": max_len(config),
        "decoding": {"beam_size": defaults.beam_size, "alpha": defaults.alpha, "max_len_ratio": defaults.max_len_ratio},
        "attention": "cross-attention of the last decoder layer, averaged over its heads",
        "config": config,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        AttnmtConverter().convert(str(tmp), quantization=quantization, force=True)
        (tmp / "source.spm").write_bytes(tokenizer.src_proto)
        if not tokenizer.joint:
            (tmp / "target.spm").write_bytes(tokenizer.tgt_proto)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out.exists():  # an earlier export (or an empty folder): swap it out, then delete it
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> None:
    from attnmt.utils.cli import run_command, usage_text

    def run(args: ExportSettings) -> None:
        out = export(args.ckpt, args.out, args.quantization)
        print(f"wrote a CTranslate2 model ({args.quantization}) to {out}")

    run_command(argv, usage_text(USAGE_HEAD, (ExportSettings,), USAGE_TAIL), (ExportSettings,), "attnmt-export",
                "attnmt-export ckpt=RUN_OR_CKPT", run)


if __name__ == "__main__":
    main()
