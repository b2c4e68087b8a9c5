"""``key=value`` command lines for the console commands (attnmt-translate, -serve, -export, -average).

Each command describes its keys as settings dataclasses (types, ranges and defaults in one
place, :mod:`attnmt.utils.schema`); a value is converted to its key's type and checked before the
command does any work. Nothing heavy is imported here: ``--help`` and a bad argument answer at
once.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn

from attnmt.errors import ConfigError
from attnmt.utils.schema import check_value, parse_text, required


def parse_key_values(argv: list[str], schemas: tuple[type, ...], command: str, usage: str) -> list[Any]:
    """One instance of each settings dataclass in ``schemas``, from ``argv`` (``key=value``
    items; a key given twice: the last wins) and the fields' defaults. An unknown key, a value of
    the wrong type or out of range, or a missing required key (``usage`` shows how to give it) is a
    :class:`ConfigError` naming the key."""
    fields = {f.name: (schema, f) for schema in schemas for f in dataclasses.fields(schema) if f.init}
    given: dict[str, str] = {}
    for arg in argv:
        key, eq, text = arg.partition("=")
        if not eq:
            raise ConfigError(f"{arg!r}: arguments are key=value (see {command} --help)")
        if key not in fields:
            raise ConfigError(f"{key}: not a key of {command}; keys: {', '.join(fields)}")
        given[key] = text
    missing = [name for schema in schemas for name in required(schema) if name not in given]
    if missing:
        raise ConfigError(f"{missing[0]} is required: {usage} (see --help)")
    hints = {schema: typing.get_type_hints(schema, include_extras=True) for schema in schemas}
    values = {}
    for name, (schema, f) in fields.items():
        if name in given:
            values[name] = parse_text(given[name], hints[schema][name])
        else:
            values[name] = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    for name, (schema, _) in fields.items():  # in order: a bound naming another key sees it checked
        check_value(name, values[name], hints[schema][name], values, shown=given.get(name))
    return [schema(**{n: values[n] for n, (s, _) in fields.items() if s is schema}) for schema in schemas]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``error: ...``, exit 2) like the other commands."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def describe(ann: Any) -> str:
    """What an annotation accepts, as the usage text says it: ``an integer >= 1``, ``true or false``."""
    from typing import Annotated, Literal, Union, get_args, get_origin

    from attnmt.utils.schema import Bound

    marks: list[Any] = []
    if get_origin(ann) is Annotated:
        ann, *marks = get_args(ann)
    optional = get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann)
    if optional:
        ann = next(a for a in get_args(ann) if a is not type(None))
        if get_origin(ann) is Annotated:
            ann, *inner = get_args(ann)
            marks += inner
    if get_origin(ann) is Literal:
        text = " or ".join(str(c) for c in get_args(ann))
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(ann, "a value")
    bounds = [f"{m.op} {m.limit}" for m in marks if isinstance(m, Bound)]
    if bounds:
        text += " " + " and ".join(bounds)
    return text + (" or null" if optional else "")


def keys_help(schemas: tuple[type, ...]) -> str:
    """The ``keys`` section of a usage text, from the settings dataclasses: per key its meaning
    (the field's ``help`` metadata), what it accepts and its default."""
    import textwrap

    lines = []
    for schema in schemas:
        hints = typing.get_type_hints(schema, include_extras=True)
        for f in dataclasses.fields(schema):
            meta, help_text = f.metadata, f.metadata.get("help", "")
            if f.default is dataclasses.MISSING:
                text = f"{help_text} (required)"
            else:
                default = (
                    "null" if f.default is None
                    else "none" if f.default == ""
                    else str(f.default).lower() if isinstance(f.default, bool)
                    else str(f.default)
                )
                text = f"{help_text}; {describe(hints[f.name])} [{default}]"
            head = f"  {f.name}={meta.get('metavar', 'VALUE')}"
            lines += textwrap.wrap(text, width=100, initial_indent=f"{head:<21s}", subsequent_indent=" " * 21,
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def usage_text(head: str, schemas: tuple[type, ...], tail: str = "") -> str:
    """A command's ``--help``: ``head``, the keys written from its settings dataclasses
    (:func:`keys_help`), ``tail``."""
    return head + keys_help(schemas) + tail


def run_command(argv: list[str] | None, usage: str, schemas: tuple[type, ...], command: str, required_usage: str,
                run: Callable[..., None]) -> None:
    """A console command: ``--help`` prints ``usage``; otherwise the ``key=value`` arguments become one
    settings object per schema, passed to ``run``; a user error is one line on stderr and exit 2."""
    import sys

    from attnmt.errors import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage, end="")
        return
    exit_on_user_error(lambda: run(*parse_key_values(argv, schemas, command, required_usage)))()
