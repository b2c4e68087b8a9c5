"""Validation checkpoints and checkpoint averaging (attnmt-average)."""

from __future__ import annotations

import pytest
import torch

from attnmt.decode.checkpoint import load_for_decoding
from attnmt.train.average import main as average_main
from attnmt.train.run import train

from conftest import compose_config, tiny_overrides


def train_run(folder, tiny_data_dir, steps: int, keep: int, *overrides: str):
    """A short run validating (and keeping the weights) every 3 updates."""
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        f"trainer.max_steps={steps}", "trainer.max_epochs=100", "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null", "data.num_valid=20", f"callbacks.val_checkpoints.save_top_k={keep}",
        *overrides,
    ], folder)
    train(cfg)
    return folder


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
    return train_run(
        tmp_path_factory.mktemp("run"), tiny_data_dir, 12, 3, "scheduler=linear", "scheduler.warmup_steps=2"
    )


def val_checkpoints(run) -> dict[int, object]:
    return {torch.load(f, weights_only=False)["global_step"]: f for f in (run / "checkpoints" / "val").glob("*.ckpt")}


@pytest.mark.slow
def test_averaging_the_last_validation_checkpoints_gives_their_mean_weights(run, capsys):
    # Validations after steps 3, 6, 9, 12: the newest 3 are kept.
    files = val_checkpoints(run)
    assert sorted(files) == [6, 9, 12]

    average_main([f"ckpt={run}", "last=2"])
    out = run / "checkpoints" / "averaged.ckpt"
    assert f"averaged 2 checkpoints (steps 9, 12) -> {out}" in capsys.readouterr().out
    averaged = torch.load(out, weights_only=False)
    nine, twelve = (torch.load(files[s], weights_only=False)["state_dict"] for s in (9, 12))
    moved = 0
    for key, value in averaged["state_dict"].items():
        torch.testing.assert_close(value, (nine[key] + twelve[key]) / 2)
        moved += int(not torch.equal(nine[key], twelve[key]))
    assert moved > 0  # the two checkpoints differ, so the mean is neither of them
    assert [x["global_step"] for x in averaged["attnmt"]["averaged_from"]] == [9, 12]
    model, _, _, _ = load_for_decoding(out)  # decodes like any checkpoint
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, averaged["state_dict"][f"model.{key}"])


def refusal(argv: list[str], capsys) -> str:
    """attnmt-average's one-line error for ``argv`` (exit status 2, nothing written)."""
    with pytest.raises(SystemExit) as e:
        average_main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), captured
    assert "averaged" not in captured.out
    return err


def test_averaging_refuses_a_folder_without_validation_checkpoints(tmp_path, capsys):
    err = refusal([f"ckpt={tmp_path}"], capsys)
    assert err.startswith(f"error: {tmp_path / 'checkpoints' / 'val'}: no validation checkpoints")
    assert refusal(["ckpt=[a.ckpt,b.ckpt]"], capsys) == "error: a.ckpt: no such checkpoint file"
    assert f"{tmp_path / 'absent'}: no such run folder" in refusal([f"ckpt={tmp_path / 'absent'}"], capsys)


@pytest.mark.slow
def test_averaging_refuses_checkpoints_that_do_not_belong_together(run, tiny_data_dir, tmp_path, capsys):
    mine = val_checkpoints(run)
    out = tmp_path / "avg.ckpt"
    assert "out=PATH is required" in refusal([f"ckpt=[{mine[9]},{mine[12]}]"], capsys)
    # Another model, another vocabulary: three updates each, weights kept after the validation.
    other_model = val_checkpoints(train_run(tmp_path / "model", tiny_data_dir, 3, 1, "model.hidden_size=96"))[3]
    other_vocab = val_checkpoints(train_run(tmp_path / "vocab", tiny_data_dir, 3, 1, "data.vocab_size=500"))[3]
    assert f"{other_model}: another model config than {mine[12]}" in refusal(
        [f"ckpt=[{other_model},{mine[12]}]", f"out={out}"], capsys
    )
    assert f"{other_vocab}: another vocabulary than {mine[12]}" in refusal(
        [f"ckpt=[{mine[12]},{other_vocab}]", f"out={out}"], capsys
    )
    # Same run settings, but weights that differ in name or shape (a damaged or edited file).
    ckpt = torch.load(mine[9], weights_only=False)
    name, weight = next((k, v) for k, v in ckpt["state_dict"].items() if v.dim() == 2)
    ckpt["state_dict"][name] = weight[:, :-1]
    torch.save(ckpt, tmp_path / "shape.ckpt")
    err = refusal([f"ckpt=[{tmp_path / 'shape.ckpt'},{mine[12]}]", f"out={out}"], capsys)
    assert f"{name} is {tuple(weight[:, :-1].shape)}, {tuple(weight.shape)} in {mine[12]}" in err
    del ckpt["state_dict"][name]
    torch.save(ckpt, tmp_path / "names.ckpt")
    assert "other weight names than" in refusal([f"ckpt=[{tmp_path / 'names.ckpt'},{mine[12]}]", f"out={out}"], capsys)
    assert not out.exists()
