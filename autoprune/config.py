"""Typed, validated dataclasses read from mappings: command configs (saved with results) and search
spaces, all through ``read`` (unknown keys refused, one-line errors)."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from types import UnionType
from typing import Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from autoprune.errors import UserError

C = TypeVar("C", bound="Config")
T = TypeVar("T")


class Config:
    """Mixin for dataclass configs: ``from_dict`` reads one with ``read`` (unknown keys refused, types
    checked); ``save`` writes JSON."""

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        return read(cls, d, cls.__name__)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def check_positive(cfg: Config, *names: str) -> None:
    """A one-line error unless each named field is None or positive."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"{name.replace('_', '-')} must be positive, got {value}")


def check_out(path: Path) -> None:
    """A one-line error unless ``path`` is a folder or can be made one; a probe leaves nothing behind."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--out {path}: a file is there, not a folder")
        return
    missing = [path, *(p for p in path.parents if not p.exists())]
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"--out {path}: cannot be created ({e.strerror})") from None
    for p in missing:  # deepest first
        os.rmdir(p)


# --- one reader for every config and search space ---------------------------------------------

class Invalid(UserError):
    """A dataclass's own check failed; ``read`` names the file (or command) before the message."""


def need(ok: bool, message: str) -> None:
    """A dataclass check: ``message`` (one line, naming the key) unless ``ok``."""
    if not ok:
        raise Invalid(message)


def read(cls: type[T], mapping: dict | T | None, where: str) -> T:
    """``cls`` (a dataclass) from a YAML or JSON mapping (an instance passes as it is), one-line
    ``UserError``s naming ``where``.

    Unknown keys are refused; each value is checked against its field's annotation (int, float,
    bool, str, Path, None, Literal choices, tuples, dicts and unions of them; a list becomes a
    tuple, an int a float); then the dataclass's own checks run (``__post_init__`` calling
    ``need``). A field's metadata may give its key in the file (``{"key": "lambda"}``) and a
    converter for values no annotation describes (``{"read": fn}``, raising its own UserError).
    """
    if isinstance(mapping, cls):
        return mapping
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise UserError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    hints = get_type_hints(cls)
    by_key = {f.metadata.get("key", f.name): f for f in fields(cls) if f.init}
    unknown = sorted(str(k) for k in mapping if k not in by_key)
    if unknown:
        raise UserError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(by_key)})")
    missing = [k for k, f in by_key.items() if k not in mapping and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise UserError(f"{where}: {', '.join(missing)} required")
    kw = {}
    for key, value in mapping.items():
        f = by_key[key]
        convert = f.metadata.get("read")
        kw[f.name] = convert(value) if convert is not None else _convert(value, hints[f.name], f"{where}: {key}")
    try:
        return cls(**kw)
    except Invalid as e:
        raise UserError(f"{where}: {e}") from None


class _Mismatch(Exception):
    pass


def _convert(value, hint, what: str):
    try:
        return _as(value, hint)
    except _Mismatch:
        raise UserError(f"{what} must be {_describe(hint)}, got {value!r}") from None


def _as(value, hint):
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        if value is None:
            return None
    elif origin in (Union, UnionType):
        for arg in args:
            try:
                return _as(value, arg)
            except _Mismatch:
                pass
    elif origin is Literal:
        if value in args:
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_as(v, args[0]) for v in value)
            if len(value) == len(args):
                return tuple(_as(v, a) for v, a in zip(value, args))
    else:
        return value  # a type this reader does not check: the dataclass checks it
    raise _Mismatch


def _describe(hint) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_describe(args[0])})"
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
             dict: "a mapping"}
    return names.get(hint, names.get(origin, getattr(hint, "__name__", str(hint))))
