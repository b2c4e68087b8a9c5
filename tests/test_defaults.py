"""One source of truth for defaults: what a constructor of attnmt's falls back to is what its
config in conf/ says, so a model or task built in Python behaves as the same name in a command."""

from __future__ import annotations

import inspect
from collections import defaultdict

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import CONF, compose_config

GROUPS = ["data", "model", "task", "optimizer", "scheduler", "trainer", "callbacks", "logger"]
EXTRAS = {"data=parallel": ["data.train_prefix=a", "data.valid_prefix=b", "data.src_lang=de", "data.tgt_lang=en"],
          "scheduler=linear": ["trainer.max_steps=100"]}


def configured_values() -> dict[tuple[str, str], dict[str, object]]:
    """``(target, parameter) -> {option: value}`` over every option of every group (and evaluate.yaml),
    for attnmt's own targets."""
    found: dict[tuple[str, str], dict[str, object]] = defaultdict(dict)

    def walk(node, where: str) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_") if "_target_" in node else None
            for k in node:
                if OmegaConf.is_interpolation(node, k) or str(k).startswith("_"):
                    continue
                child = node[k]
                if isinstance(child, (DictConfig, ListConfig)):
                    walk(child, where)
                elif target and target.startswith("attnmt."):
                    found[(target, str(k))][where] = child
        elif isinstance(node, ListConfig):
            for v in node:
                walk(v, where)

    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            choice = f"{group}={path.stem}"
            cfg = compose_config("train", [choice, *EXTRAS.get(choice, [])])
            walk(cfg[group], choice)
    walk(compose_config("evaluate", ["ckpt=x"]), "evaluate.yaml")
    return found


VALUES = configured_values()


def default_of(target: str, name: str) -> tuple[object, str]:
    """The default of ``name`` in the attnmt constructor that takes it (a subclass may pass it on
    to its base through ``**kwargs``); ``empty`` where it is required or not attnmt's own, with
    why there is no default to compare."""
    obj = get_object(target)
    for cls in getattr(obj, "__mro__", [obj]):
        init = cls.__dict__.get("__init__") if isinstance(obj, type) else obj
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if name in params:
            found = params[name].default
            where = f"{cls.__module__}.{cls.__qualname__}"
            if not cls.__module__.startswith("attnmt"):
                return inspect.Parameter.empty, (f"{name} is a parameter of {where}, not of attnmt's own code: "
                                                 "its default is not attnmt's to keep equal to conf/")
            if found is inspect.Parameter.empty:
                return found, f"{where}() has no default for {name} (a required argument): conf/ is the only place"
            return found, ""
    return inspect.Parameter.empty, f"no constructor of {target} names {name}: no default to compare"


@pytest.mark.parametrize("target, name", sorted(VALUES), ids=[f"{t.rsplit('.', 1)[-1]}.{n}" for t, n in sorted(VALUES)])
def test_constructor_defaults_equal_the_configs(target, name):
    by_option = VALUES[(target, name)]
    default, why = default_of(target, name)
    if default is inspect.Parameter.empty:
        pytest.skip(why)
    values = {repr(v) for v in by_option.values()}
    if len(values) == 1:  # every config agrees: so must the constructor
        assert default == next(iter(by_option.values())), f"{target}({name}={default!r}) but conf says {by_option}"
    else:  # a per-option choice (Bahdanau's concat score, Luong's general): one of them
        assert repr(default) in values, f"{target}({name}={default!r}) is none of {by_option}"


def test_the_check_sees_the_models_and_the_decoding_settings():
    names = {(t.rsplit(".", 1)[-1], n) for t, n in VALUES}
    for expected in [("Transformer", "d_model"), ("Transformer", "d_ff"), ("BahdanauRNN", "emb_size"),
                     ("Attention", "score"), ("DecodeSettings", "beam_size"), ("TranslationTask", "label_smoothing")]:
        assert expected in names, expected
