"""Checking a setting's value against its type annotation, so that a bad value is refused in one
line naming the key, before any work starts.

A setting's type is the annotation of the parameter (or dataclass field) that receives it:
``int``, ``float`` (ints accepted), ``bool`` (true or false only), ``str``, ``None``, ``Literal``
choices, ``Optional``/``Union``, ``list``/``tuple``/``dict`` of these, and classes (an instance
fits; a string fits ``Path``). Ranges are ``typing.Annotated`` markers::

    beam_size: Annotated[int, Ge(1)] = 5
    n_best: Annotated[int, Ge(1), Le("beam_size")] = 1     # a bound may name another key
    dropout: Fraction = 0.1                                 # [0, 1)

Whatever cannot be checked (``Callable``, ``Any``, an unknown class on its own) is accepted: the
constructor has the last word. This module imports nothing heavy: console commands check their
arguments with it before torch is loaded.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from attnmt.errors import ConfigError

NoneType = type(None)


@dataclass(frozen=True)
class Bound:
    """A numeric bound: ``value OP limit``; ``limit`` is a number or the name of another key."""

    op: Literal[">=", ">", "<=", "<"]
    limit: float | str


def Ge(limit: float | str) -> Bound:  # noqa: N802 (reads like the comparison)
    return Bound(">=", limit)


def Gt(limit: float | str) -> Bound:  # noqa: N802
    return Bound(">", limit)


def Le(limit: float | str) -> Bound:  # noqa: N802
    return Bound("<=", limit)


def Lt(limit: float | str) -> Bound:  # noqa: N802
    return Bound("<", limit)


NON_EMPTY = "non-empty"  # marker: a list or string with at least one item

Positive = Gt(0)
PositiveInt = Annotated[int, Positive]  # >= 1
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Positive]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Ge(0), Lt(1)]  # dropout, label smoothing: [0, 1)


# -- checking a value ---------------------------------------------------------------------------
class _Unchecked:
    """The annotation says nothing we can check about this value."""


UNCHECKED = _Unchecked()


@dataclass
class _Expected:
    """The value is of none of the expected kinds."""

    kinds: list[str]
    choices: list[Any] = dataclasses.field(default_factory=list)

    def phrase(self) -> str:
        parts = [k for k in self.kinds if k != "null"]
        if self.choices:
            names = list(dict.fromkeys(_plain(c) for c in self.choices))
            parts.append(f"one of {', '.join(names)}" if len(names) > 1 else names[0])
        if "null" in self.kinds:
            parts.append("null")
        return "is not " + (" or ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " or " + parts[-1])


@dataclass
class _Violation:
    """The value has an expected kind but breaks a constraint (range, length, an item)."""

    text: str

    def phrase(self) -> str:
        return self.text


Result = None | _Expected | _Violation | _Unchecked


def _plain(value: Any) -> str:
    """A value as a user writes it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def show(value: Any) -> str:
    """A configured value in a message: strings quoted (``'tanh'``), the rest as written."""
    return repr(value) if isinstance(value, (str, list, tuple, dict)) else _plain(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _strip(ann: Any) -> Any:
    """An annotation without its ``Annotated`` markers."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return ann


def _check(value: Any, ann: Any, siblings: Mapping[str, Any], prefix: str) -> Result:
    marks: list[Any] = []
    while get_origin(ann) is Annotated:
        ann, *extra = get_args(ann)
        marks = list(extra) + marks
    result = _check_type(value, ann, siblings, prefix)
    if result is None and marks:
        return _check_marks(value, marks, siblings, prefix, integral=ann is int)
    return result


def _check_type(value: Any, ann: Any, siblings: Mapping[str, Any], prefix: str) -> Result:
    if ann is Any or ann is object or ann is inspect.Parameter.empty:
        return None
    if isinstance(ann, (str, typing.ForwardRef, typing.TypeVar)):
        return UNCHECKED
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        return _check_union(value, get_args(ann), siblings, prefix)
    if origin is Literal:
        choices = get_args(ann)
        if any(type(value) is type(c) and value == c for c in choices):
            return None
        return _Expected([], list(choices))
    if ann is NoneType or ann is None:
        return None if value is None else _Expected(["null"])
    if ann is bool:
        return None if isinstance(value, bool) else _Expected(["a boolean (true or false)"])
    if ann is int:
        return None if _is_int(value) else _Expected(["an integer"])
    if ann is float:
        if not _is_number(value):
            return _Expected(["a number"])
        return None if math.isfinite(value) else _Violation("is not a finite number")
    if ann is str:
        return None if isinstance(value, str) else _Expected(["a string"])
    if ann in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return _Expected(["a list"])
        args = get_args(ann)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return _Violation(f"is not a list of {len(args)} items")
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        for item, item_ann in zip(value, item_types):
            found = _check(item, item_ann, siblings, prefix)
            if isinstance(found, (_Expected, _Violation)):
                return _Violation(f"holds {show(item)}, which {found.phrase()}")
        return None
    if ann in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, dict):
            return _Expected(["a mapping"])
        args = get_args(ann) or (Any, Any)
        for k, v in value.items():
            for item, item_ann in ((k, args[0]), (v, args[1])):
                found = _check(item, item_ann, siblings, prefix)
                if isinstance(found, (_Expected, _Violation)):
                    return _Violation(f"holds {show(item)}, which {found.phrase()}")
        return None
    if isinstance(ann, type):
        if isinstance(value, ann) or (isinstance(value, str) and issubclass(ann, PurePath)):
            return None
        return UNCHECKED  # e.g. a Tensor or an Accelerator: a config value cannot say which
    return UNCHECKED  # Callable[...], type[...], ...


def _check_union(value: Any, members: tuple, siblings: Mapping[str, Any], prefix: str) -> Result:
    results = [_check(value, m, siblings, prefix) for m in members]
    if any(r is None for r in results):
        return None
    violations = [r for r in results if isinstance(r, _Violation)]
    if violations:
        return violations[0]
    expected = [r for r, m in zip(results, members) if isinstance(r, _Expected) and m is not NoneType]
    if not expected:  # only classes we cannot check (and perhaps null)
        return UNCHECKED
    merged = _Expected([], [])
    for r in results:
        if isinstance(r, _Expected):
            merged.kinds += [k for k in r.kinds if k not in merged.kinds]
            merged.choices += r.choices
    return merged


def _limit(bound: Bound, siblings: Mapping[str, Any], prefix: str) -> tuple[float, str] | None:
    """The bound's number, and how a message names it."""
    if isinstance(bound.limit, str):
        other = siblings.get(bound.limit)
        return (other, f"{prefix}{bound.limit}={_plain(other)}") if _is_number(other) else None
    return bound.limit, _plain(bound.limit)


def _check_marks(value: Any, marks: list[Any], siblings: Mapping[str, Any], prefix: str, integral: bool) -> Result:
    if NON_EMPTY in marks and isinstance(value, (list, tuple, str)) and not value:
        return _Violation("must not be empty")
    if not _is_number(value):
        return None
    low = high = None  # (limit, name, inclusive)
    ok = True
    for bound in (m for m in marks if isinstance(m, Bound)):
        found = _limit(bound, siblings, prefix)
        if found is None:
            continue
        limit, name = found
        inclusive = bound.op in (">=", "<=")
        if integral and _is_int(bound.limit) and not inclusive:  # int settings: > 0 reads as >= 1
            limit = limit + 1 if bound.op == ">" else limit - 1
            name, inclusive = _plain(limit), True
        if bound.op in (">=", ">"):
            low = (limit, name, inclusive)
            ok &= value >= limit if inclusive else value > limit
        else:
            high = (limit, name, inclusive)
            ok &= value <= limit if inclusive else value < limit
    if ok:
        return None
    if low and high:
        if low[2] and high[2]:
            return _Violation(f"must be between {low[1]} and {high[1]}")
        return _Violation(f"must be in {'[' if low[2] else '('}{low[1]}, {high[1]}{']' if high[2] else ')'}")
    limit, name, inclusive = low or high
    op = (">=" if inclusive else ">") if low else ("<=" if inclusive else "<")
    return _Violation(f"must be {op} {name}")


def check_value(key: str, value: Any, annotation: Any, siblings: Mapping[str, Any] | None = None,
                prefix: str = "", shown: str | None = None) -> None:
    """Raise a :class:`ConfigError` ``PREFIXKEY=VALUE is not .../must be ...`` unless ``value``
    fits ``annotation``. ``siblings`` are the other keys' values (for bounds that name a key);
    ``shown`` is how the message writes the value (default: as configured)."""
    found = _check(value, annotation, siblings or {}, prefix)
    if isinstance(found, (_Expected, _Violation)):
        raise ConfigError(f"{prefix}{key}={show(value) if shown is None else shown} {found.phrase()}")


# -- what a callable takes ----------------------------------------------------------------------
def _hints(fn: Callable) -> dict[str, Any]:
    """``fn``'s parameter annotations, resolved; one that cannot be resolved stays a string
    (unchecked)."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a name imported only for type checkers: resolve the others one by one
        hints = {}
        globalns = getattr(inspect.unwrap(fn), "__globals__", {})
        for name, ann in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = typing.get_type_hints(types.SimpleNamespace(__annotations__={name: ann}), globalns,
                                                    include_extras=True)[name]
            except Exception:
                hints[name] = ann if isinstance(ann, str) else str(ann)
        return hints


def parameters(target: Callable) -> tuple[dict[str, Any], bool]:
    """The keyword parameters ``target`` takes (name -> annotation, ``Any`` when there is none),
    following ``**kwargs`` up a class's bases; and whether it takes other keywords as well."""
    params: dict[str, Any] = {}
    if isinstance(target, type):
        inits = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__]
    else:
        inits = [target]
    for init in inits:
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin: nothing to say
            return params, True
        hints = _hints(init)
        open_ = False
        for name, p in signature.parameters.items():
            if name == "self" or p.kind is p.VAR_POSITIONAL or p.kind is p.POSITIONAL_ONLY:
                continue
            if p.kind is p.VAR_KEYWORD:
                open_ = True
                continue
            params.setdefault(name, hints.get(name, Any))
        if not open_:
            return params, False
    return params, True


def required(target: type) -> list[str]:
    """The fields of a settings dataclass that have no default."""
    return [f.name for f in dataclasses.fields(target)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


# -- values typed on a command line -------------------------------------------------------------
_INT = re.compile(r"[+-]?\d+")


def parse_text(text: str, ann: Any) -> Any:
    """``text`` (a command-line value) converted to the annotation's type where it can be: ``5``
    to an int, ``0.5`` to a float, ``true``/``false`` to a bool, ``null`` to None, ``[a,b]`` to a
    list; text that converts to nothing expected stays text (and :func:`check_value` refuses it)."""
    ann = _strip(ann)
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        members = get_args(ann)
        for member in sorted(members, key=lambda m: m is str):  # text last: "5" is an int first
            value = parse_text(text, member)
            if _check_type(value, _strip(member), {}, "") is None:  # the kind, not the range
                return value
        return text
    if origin is Literal:
        return next((c for c in get_args(ann) if _plain(c) == text), text)
    if ann is NoneType:
        return None if text == "null" else text
    if ann is bool:
        return {"true": True, "false": False}.get(text.lower(), text)
    if ann is int:
        return int(text) if _INT.fullmatch(text) else text
    if ann is float:
        try:
            return float(text)
        except ValueError:
            return text
    if (ann in _SEQUENCES or origin in _SEQUENCES) and text.startswith("[") and text.endswith("]"):
        item = (get_args(ann) or (str,))[0]
        inner = text[1:-1].strip()
        return [parse_text(t.strip(), item) for t in inner.split(",")] if inner else []
    return text
