"""Files from strangers are data: a checkpoint's, an export's or a run folder's stored config that
names a function to call is refused, and nothing it names runs. Each payload here would create a
marker file if it ran (``builtins.open(marker, "w")`` through Hydra's ``_args_``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from attnmt.decode.checkpoint import CHECKPOINT_KEY, load_for_decoding
from attnmt.errors import CheckpointError, ConfigError
from attnmt.models import build_model
from attnmt.utils.trust import STORED_TARGETS, check_stored_targets

from conftest import ROOT, compose_config


def payload(marker: Path) -> dict:
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def test_every_target_of_the_model_and_data_configs_is_allowed():
    """A new model or corpus config is allowed in stored configs as soon as it exists, or this fails."""
    for group in ("model", "data"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            node = yaml.safe_load(path.read_text())
            if "_target_" not in node:  # a config made of defaults only
                continue
            check_stored_targets(node, group, str(path))
            assert node["_target_"] in STORED_TARGETS[group], path


def write_checkpoint(tiny_datamodule, folder: Path, model_cfg: dict) -> Path:
    cfg = compose_config("train", ["model=rnn_bahdanau", "model.emb_size=16", "model.hidden_size=16"])
    tok = tiny_datamodule.tokenizer
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint)
    path = folder / "model.ckpt"
    torch.save({
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        CHECKPOINT_KEY: {"config": {"model": model_cfg, "data": {}}, "tokenizer": tok.state()},
    }, path)
    return path


def test_a_checkpoint_whose_config_names_a_function_is_refused(tiny_datamodule, tmp_path):
    cfg = compose_config("train", ["model=rnn_bahdanau", "model.emb_size=16", "model.hidden_size=16"])
    from omegaconf import OmegaConf

    genuine = OmegaConf.to_container(cfg.model, resolve=True)
    model, *_ = load_for_decoding(write_checkpoint(tiny_datamodule, tmp_path, genuine))  # the control: it loads
    assert model.num_parameters() > 0
    marker = tmp_path / "ran"
    for poisoned in ({**genuine, "attention": payload(marker)}, {**payload(marker), "rnn_type": "gru"},
                     {**genuine, "dropout": payload(marker)}):
        path = write_checkpoint(tiny_datamodule, tmp_path, poisoned)
        with pytest.raises(CheckpointError, match=r"model\.(attention\.|dropout\.|)_target_='builtins.open'.*refused"):
            load_for_decoding(path)
        assert not marker.exists()


def test_an_export_whose_metadata_names_a_function_is_refused(tmp_path):
    from attnmt.decode.exported import read_metadata
    from attnmt.deploy.export import FORMAT, METADATA

    marker = tmp_path / "ran"
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / METADATA).write_text(json.dumps({"format": FORMAT, "config": {"data": payload(marker)}}))
    with pytest.raises(CheckpointError, match=r"data\._target_='builtins.open'.*refused without running it"):
        read_metadata(folder)
    assert not marker.exists()
    (folder / METADATA).write_text('{"format": ')
    with pytest.raises(CheckpointError, match=rf"^{folder / METADATA}: not readable as JSON \(JSONDecodeError"):
        read_metadata(folder)


def test_a_run_folder_whose_overrides_name_a_function_is_refused_on_resume(tmp_path, monkeypatch):
    from attnmt.train.resume import _REWRITTEN, resume_argv

    monkeypatch.delenv(_REWRITTEN, raising=False)
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    evil = f"+callbacks.x={{_target_: builtins.open, _args_: [{marker}, w]}}"
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=transformer", evil]))
    with pytest.raises(ConfigError, match=r"names a _target_ \(a function to call\); a resumed run takes only"):
        resume_argv(["train.py", f"resume={run}"])
    assert not marker.exists()
    monkeypatch.delenv(_REWRITTEN, raising=False)
    argv = resume_argv(["train.py", f"resume={run}", evil])  # the user's own command line: their call
    assert argv.count(evil) == 1 and "model=transformer" in argv
    monkeypatch.delenv(_REWRITTEN, raising=False)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=transformer"]))
    assert "model=transformer" in resume_argv(["train.py", f"resume={run}"])  # settings are fine


class Payload:
    """Pickles as a call of ``open(marker, "w")``: what a checkpoint crafted to run code does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_whose_pickle_calls_a_function_is_refused_unless_trusted(tmp_path, monkeypatch):
    from attnmt.decode.checkpoint import TRUST_ENV, read_checkpoint

    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({CHECKPOINT_KEY: {}, "state_dict": {}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: holds more than tensors and plain data \(it names "
                                               rf"(builtins|io).open\).* load it with {TRUST_ENV}=1$"):
        load_for_decoding(path)
    assert not marker.exists()

    # A checkpoint from before the random states were plain lists (a numpy array in it): refused by
    # default, read when the user says the file is theirs.
    import numpy as np

    old = tmp_path / "old.ckpt"
    torch.save({CHECKPOINT_KEY: {"rng": {"numpy": np.random.get_state()}}, "state_dict": {}}, old)
    with pytest.raises(CheckpointError, match=r"it names numpy\."):
        read_checkpoint(old)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert read_checkpoint(old)[CHECKPOINT_KEY]["rng"]["numpy"][0] == "MT19937"


def test_random_states_are_saved_as_data(tmp_path):
    """What a checkpoint stores of the random generators loads with weights_only=True and restores."""
    import io
    import random

    import numpy as np

    from attnmt.utils.rng import get_rng_state, set_rng_state

    state = get_rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    first = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1)) == first
