"""``key=value`` command lines for the small console commands (attnmt-translate, attnmt-average)."""

from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnmt.errors import ConfigError


def parse_key_values(argv: list[str], defaults: dict, command: str, usage: str) -> dict:
    """``argv`` merged onto ``defaults`` (unknown keys and bad values refused in one line);
    ``ckpt`` is required (``usage`` shows how to give it)."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"{bad[0]!r}: arguments are key=value (see {command} --help)")
    cfg = OmegaConf.create(defaults)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        raise ConfigError(f"{key}: not a key of {command}, or a bad value; keys: {', '.join(defaults)}") from None
    if cfg.ckpt is None:
        raise ConfigError(f"ckpt is required: {usage} (see --help)")
    return OmegaConf.to_container(cfg)
