"""Checking and instantiating config nodes, so that a user's mistake surfaces as one line naming
the key, before any work starts.

A ``_target_`` node's values are checked against the annotations of its target's parameters
(:mod:`attnmt.utils.schema`): the constructor's signature is the schema, written once.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from attnmt.errors import AttnmtError, ConfigError
from attnmt.utils.schema import check_value, parameters, show

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _is_node(value: Any) -> bool:
    return isinstance(value, (dict, DictConfig)) and "_target_" in value


def _items(node: DictConfig | dict) -> Iterable[tuple[str, Any, str | None, bool]]:
    """``(key, resolved value, interpolation or None, missing)`` of each entry; a value whose
    interpolation cannot be resolved is left to Hydra to report (skipped here)."""
    if not isinstance(node, DictConfig):
        for k, v in node.items():
            yield str(k), v, None, isinstance(v, str) and v == "???"
        return
    raw = OmegaConf.to_container(node, resolve=False)
    for k in node.keys():
        k = str(k)
        if OmegaConf.is_missing(node, k):
            yield k, None, None, True
            continue
        try:
            value = node[k]
        except Exception:  # an interpolation that does not resolve: Hydra names it
            continue
        if isinstance(value, (DictConfig, ListConfig)) and not _is_node(value):
            value = OmegaConf.to_container(value, resolve=True)
        source = raw[k] if OmegaConf.is_interpolation(node, k) else None
        yield k, value, source, False


def check_node(node: DictConfig | dict, key: str, given: Iterable[str] = ()) -> None:
    """Check every configured value of the ``_target_`` node ``node`` (named ``key``, e.g.
    ``model``) against its target's parameters, and the ``_target_`` nodes inside it; values in
    ``given`` come from the caller, not the config. A :class:`ConfigError` names the first bad
    key and what it must be."""
    try:
        target = get_object(str(node["_target_"]))
    except Exception:  # a bad _target_: instantiate names it
        return
    params, takes_more = parameters(target)
    given = set(given)
    entries = [e for e in _items(node) if e[0] not in HYDRA_KEYS and e[0] not in given]
    values = {k: v for k, v, _, missing in entries if not missing}
    for k, value, source, missing in entries:
        name = f"{key}.{k}"
        if missing:
            raise ConfigError(f"{name} is required: give {name}=VALUE")
        if k not in params and not takes_more:
            raise ConfigError(f"{name}: not a parameter of {node['_target_']}; it takes {', '.join(params)}")
        if _is_node(value):
            check_node(value, name)
            continue
        if isinstance(value, list) and any(_is_node(v) for v in value):
            for i, v in enumerate(value):
                if _is_node(v):
                    check_node(v, f"{name}[{i}]")
            continue
        shown = None if source is None else f"{show(value)} (from {source})"
        check_value(k, value, params.get(k, Any), values, prefix=f"{key}.", shown=shown)


def check_config(cfg: DictConfig, own: type | None = None) -> None:
    """Check a composed config before anything is built: its own top-level keys against the
    settings dataclass ``own``, and every ``_target_`` node in it (:func:`check_node`)."""
    if own is not None:
        hints = typing.get_type_hints(own, include_extras=True)
        values = {k: v for k, v, _, missing in _items(cfg) if not missing}
        for f in dataclasses.fields(own):
            if f.name not in cfg.keys():  # (`in cfg` is false for a ??? value)
                continue
            if OmegaConf.is_missing(cfg, f.name):
                raise ConfigError(f"{f.name} is required: give {f.name}=VALUE")
            check_value(f.name, values.get(f.name), hints[f.name], values)

    def walk(node: Any, key: str) -> None:
        if _is_node(node):
            check_node(node, key)
        elif isinstance(node, DictConfig):
            for k in node.keys():
                if not OmegaConf.is_interpolation(node, k) and not OmegaConf.is_missing(node, k):
                    walk(node[k], f"{key}.{k}" if key else str(k))
        elif isinstance(node, ListConfig):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(cfg, "")


def build(node: Any, key: str, **kwargs) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after :func:`check_node`; an
    :class:`AttnmtError` raised by the constructor comes out as itself (not wrapped), a bad
    argument as a :class:`ConfigError` that names ``key`` (the config node, e.g. ``model``)."""
    check_node(node, key, given=kwargs)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, AttnmtError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"{key}: {cause}") from None
        target = node.get("_target_") if hasattr(node, "get") else None
        raise ConfigError(f"{key}: cannot build {target} ({str(e).splitlines()[0]})") from None


def compose(
    config_name: str, overrides: list[str], config_dir: str | Path, output_dir: str | Path | None = None
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as its entry point would compose it
    (Hydra's own settings resolved, then left out), for code that runs a config without the
    command line: tests and benchmarks. ``output_dir`` replaces ``paths.output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the app's config does not hold Hydra's own
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg
