"""Every config in every group composes and instantiates; bad values fail early with the key."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from attnmt.errors import ConfigError
from attnmt.models import Seq2Seq, build_model
from attnmt.train.run import resolve_precision
from attnmt.utils.config import build

from conftest import CONF, MODELS, build_tiny_model, compose_config, tiny_overrides


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_model_group_holds_the_three_families():
    assert set(MODELS) <= set(options("model"))


@pytest.mark.parametrize("name", options("model"))
def test_every_model_config_builds_a_seq2seq_model(name):
    cfg = compose_config("train", [f"model={name}"])
    model = build_model(cfg.model, 100, 100, joint_vocab=True)
    assert isinstance(model, Seq2Seq) and model.num_parameters() > 0


DATA_OVERRIDES = {
    "encs_alignment": lambda tmp: [f"data.cache_dir={tmp}"],
    "synthetic": lambda tmp: [f"data.data_dir={tmp}"],
    "multi30k": lambda tmp: [f"data.cache_dir={tmp}", f"data.source_dir={tmp}/absent"],
    "parallel": lambda tmp: [f"data.train_prefix={tmp}/train", f"data.valid_prefix={tmp}/dev",
                             "data.src_lang=de", "data.tgt_lang=en"],
}


@pytest.mark.parametrize("name", options("data"))
def test_every_data_config_instantiates(name, tmp_path):
    cfg = compose_config("train", [f"data={name}", *DATA_OVERRIDES[name](tmp_path)], tmp_path)
    assert instantiate(cfg.data) is not None


@pytest.mark.parametrize("name", options("data_model"))
def test_every_data_model_config_names_a_data_and_a_model_option(name):
    """A file that matches no ``${data}_${model}`` pair would silently never be used."""
    pairs = {f"{d}_{m}" for d in options("data") for m in options("model")}
    assert name in pairs


def test_the_data_model_pairing_applies_to_its_pair_only_and_yields_to_overrides():
    assert compose_config("train", ["model=transformer"]).data.max_tokens == 512
    assert compose_config("train", []).data.max_tokens == 2048  # the RNN keeps the data default
    assert compose_config("train", ["model=transformer", "data.max_tokens=1024"]).data.max_tokens == 1024
    assert compose_config("train", ["model=transformer", "data=multi30k"]).data.max_tokens == 4096


def test_ddp_trainer_config_and_slurm_launcher_compose():
    cfg = compose_config("train", ["trainer=ddp", "trainer.devices=3", "trainer.accelerator=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.world_size == 3
    assert cfg.trainer.use_distributed_sampler is False  # our sampler shards batches itself
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
                       return_hydra_config=True)
    launcher = full.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


@pytest.mark.parametrize("name", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_instantiates(name, scheduler):
    # trainer.max_steps: scheduler=linear decays to it (and refuses the default -1, tested elsewhere).
    cfg = compose_config("train", [f"optimizer={name}", f"scheduler={scheduler}", "trainer.max_steps=1000"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] > 0


@pytest.mark.parametrize("name", options("trainer"))
def test_every_trainer_config_instantiates(name, tmp_path):
    if "gpu" in name and not torch.cuda.is_available():
        pytest.skip("trainer=gpu needs a CUDA device; none here")
    cfg = compose_config("train", [f"trainer={name}"], tmp_path)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    precision = resolve_precision(cfg.trainer)["used"]  # trainer=gpu asks for auto, which is ours
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, precision=precision)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_overrides_change_the_built_model():
    def parameters(*overrides: str) -> int:
        cfg = compose_config("train", list(overrides))
        return build_model(cfg.model, 100, 100, joint_vocab=True).num_parameters()

    assert parameters("model.hidden_size=128") < parameters("model.hidden_size=160")
    # Luong's scores (eq. 8): dot has no weights, general one matrix, concat a matrix and a vector.
    luong = {
        score: parameters("model=rnn_luong", f"model.attention.score={score}") for score in ("dot", "general", "concat")
    }
    assert luong["dot"] < luong["general"] < luong["concat"]


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException) as e:
        compose_config("train", ["model=rnn_nope"])
    assert "rnn_bahdanau" in str(e.value) and "transformer" in str(e.value)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigCompositionException):
        compose_config("train", ["model.hidden_sise=3"])


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("transformer", ["model.d_model=60", "model.num_heads=7"],
         "model.d_model=60 is not divisible by model.num_heads=7"),
        ("rnn_luong", ["model.attention.score=cosine"], "model.attention.score='cosine' is not one of"),
        ("rnn_bahdanau", ["model.rnn_type=tanh"], "model.rnn_type='tanh' is not one of gru, lstm"),
    ],
)
def test_invalid_model_values_name_the_key(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_tiny_model(name, 50, overrides)


def test_tied_embeddings_need_a_joint_vocabulary():
    cfg = compose_config("train", ["model=transformer"])
    with pytest.raises(ConfigError, match="model.tie_embeddings=true needs a joint"):
        build(cfg.model, "model", src_vocab_size=10, tgt_vocab_size=12, joint_vocab=False)


def test_max_len_must_fit_the_token_budget(tiny_data_dir, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + ["data.max_tokens=100", "data.max_len=200"], tmp_path)
    with pytest.raises(ConfigError, match="data.max_len=200 does not fit in data.max_tokens=100"):
        build(cfg.data, "data")


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_builds(name, tmp_path):
    cfg = compose_config("train", [f"experiment={name}"], tmp_path)
    dm = instantiate(cfg.data)
    model = build_model(cfg.model, 100, 100, joint_vocab=True)
    assert isinstance(model, Seq2Seq)
    if cfg.trainer.accelerator != "gpu" or torch.cuda.is_available():  # a GPU recipe's trainer needs one
        precision = resolve_precision(cfg.trainer)["used"]
        assert instantiate(cfg.trainer, logger=False, callbacks=[], precision=precision) is not None
    if name.startswith("encs_alignment"):  # the gold-aligned sentences are trained on (text only) and scored
        assert dm.prefixes["test"] == dm.train_prefixes[1] and dm.train_upsample() == [1, 20]


def test_trainer_gpu_brings_the_settings_a_gpu_wants(tmp_path):
    cfg = compose_config("train", ["trainer=gpu", "data=multi30k"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.task.compile) == ("gpu", "auto", True)
    data = cfg.data
    assert (data.max_tokens, data.pad_to_multiple, data.num_workers, data.pin_memory) == (12288, 8, 4, True)
    assert cfg.callbacks.progress_bar.refresh_rate == cfg.trainer.log_every_n_steps == 50
    assert cfg.trainer.gradient_clip_val == compose_config("train", []).trainer.gradient_clip_val  # the rest: cpu's
    assert compose_config("train", ["trainer=gpu", "data.max_tokens=4096"]).data.max_tokens == 4096
    cpu = compose_config("train", ["data=multi30k"])
    assert (cpu.task.compile, cpu.data.max_tokens, cpu.data.pad_to_multiple, "progress_bar" in cpu.callbacks) == (
        False, 4096, 1, False)
