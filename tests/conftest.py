"""Shared fixtures: the real Hydra config, composed and shrunk to CPU-test size."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from attnmt.models import build_model
from attnmt.train.run import train
from attnmt.utils.config import compose

ROOT = Path(__file__).resolve().parents[1]
# ATTNMT_GPU_TIER_ON_CPU=1 runs the GPU tier (tests/test_gpu.py) on the CPU: a check of the tests'
# own code on a machine without a GPU, not of the GPU.
GPU_TIER_ON_CPU = os.environ.get("ATTNMT_GPU_TIER_ON_CPU") == "1"
CONF = ROOT / "conf"
MODELS = ["rnn_bahdanau", "rnn_luong", "transformer"]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Small enough to train in tens of seconds on two CPU cores, large enough to learn the grammar.
TINY_MODEL = {
    "rnn_bahdanau": ["model.emb_size=64", "model.hidden_size=128"],
    "rnn_luong": ["model.emb_size=64", "model.hidden_size=128"],
    "transformer": ["model.d_model=64", "model.num_heads=4", "model.d_ff=128", "model.encoder_layers=2",
                    "model.decoder_layers=2"],
}


def pytest_collection_modifyitems(config, items):
    """The GPU tier skips, saying why, where no CUDA device is visible."""
    if torch.cuda.is_available() or GPU_TIER_ON_CPU:
        return
    skip = pytest.mark.skip(reason="the GPU tier needs a CUDA device; none is visible here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compose_config(config_name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` exactly as the entry point would, with overrides."""
    return compose(config_name, overrides, CONF, output_dir)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A small synthetic corpus (same generator, fewer pairs), shared by the whole session."""
    from attnmt.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), num_train=6000, num_valid=200, num_test=200)


def tiny_overrides(data_dir: Path, model: str = "rnn_bahdanau", tiny_model: bool = True,
                   pictures: bool = False) -> list[str]:
    """The real config made small. ``pictures``: keep the attention monitor and the run page (seconds
    at every validation; the tests of those pictures ask for them)."""
    return [
        f"model={model}",
        f"data.data_dir={data_dir}",
        "data.num_train=6000", "data.num_valid=200", "data.num_test=200",
        "data.vocab_size=600", "data.max_tokens=2048",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        *(TINY_MODEL[model] if tiny_model else []),
        *([] if pictures else ["callbacks.attention_monitor=null", "callbacks.run_page=null"]),
    ]


@pytest.fixture(scope="session")
def tiny_datamodule(tiny_data_dir, tmp_path_factory):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir), tmp_path_factory.mktemp("out"))
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_tiny_model(name: str, vocab_size: int = 50, overrides: list[str] = (), dropout: float = 0.0):
    """A model from its real config, with small sizes and a made-up vocabulary size."""
    cfg = compose_config("train", [f"model={name}", *TINY_MODEL[name], f"model.dropout={dropout}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size, vocab_size, joint_vocab=True)
    return model.eval()


STEPS = 400


@pytest.fixture(scope="session")
def trained_runs(tiny_data_dir, tmp_path_factory):
    """Each model as configured in conf/model (its real size) trained briefly on the small corpus,
    in the layout of a Hydra multirun folder (one numbered run folder per model)."""
    folder = tmp_path_factory.mktemp("multirun")
    runs = {}
    for i, name in enumerate(MODELS):
        cfg = compose_config(
            "train",
            tiny_overrides(tiny_data_dir, name, tiny_model=False, pictures=True)
            + [f"trainer.max_steps={STEPS}", "trainer.max_epochs=100", "trainer.val_check_interval=200",
               "trainer.check_val_every_n_epoch=null"],
            folder / str(i),
        )
        runs[name] = (cfg, folder / str(i), train(cfg))
    return folder, runs


@pytest.fixture(scope="session")
def exported_transformer(trained_runs, tmp_path_factory):
    """The trained Transformer run and its CTranslate2 exports: ``(run_dir, {quantization: dir})``."""
    pytest.importorskip("ctranslate2",
                        reason="the ctranslate2 extra is not installed (pip install -e '.[ctranslate2]')")
    from attnmt.deploy.export import export

    run_dir = trained_runs[1]["transformer"][1]
    folder = tmp_path_factory.mktemp("ct2")
    return run_dir, {q: export(run_dir, folder / q, q) for q in ("float32", "int8")}


def untrained_model(folder: Path, name: str):
    """An untrained model ``name`` (tiny) and a small sentencepiece tokenizer trained in ``folder``:
    quick, and every line gets a (long) output."""
    from attnmt.data.tokenizer import Tokenizer, train_sentencepiece

    words = [f"w{i} x{i % 7} y{i % 13}" for i in range(2000)]
    settings = {"vocab_size": 150, "model_type": "bpe", "character_coverage": 1.0}
    tokenizer = Tokenizer(train_sentencepiece(words, folder, "joint", settings, []))
    return build_tiny_model(name, tokenizer.src_vocab_size), tokenizer


@contextmanager
def serving(backend, **keys):
    """attnmt-serve's app for ``backend`` under uvicorn, configured as attnmt-serve configures it
    (``keys`` are its settings), on a free loopback port in a thread; yields the port."""
    import uvicorn

    from attnmt.deploy.serve import ServeSettings, create_app
    from attnmt.deploy.serve_http import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(ckpt="served", port=port, **keys)
    server = uvicorn.Server(uvicorn_config(create_app(backend, settings), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.025)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
