"""Strict reading of plain values (YAML/JSON) into dataclasses: an unknown key, a wrong type or a
non-finite number fails with the key path (``settings[0].objectve``) and, for a misspelling, the
key that was probably meant."""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from mechunlearn.errors import MechunlearnError


class ConfigError(MechunlearnError):
    pass


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _keys(cls) -> dict[str, Any]:
    """Each key ``cls`` reads and its type; a class may list them itself (``config_keys()``), e.g.
    to take sections for entries registered at run time."""
    if hasattr(cls, "config_keys"):
        return cls.config_keys()
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def check_keys(cls, data: dict, path: str) -> None:
    known = list(_keys(cls))
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"config key {_join(path, key)!r} is unknown{hint}")


def read_fields(cls, data: Any, path: str, partial: bool = False) -> dict:
    """The checked and converted values of ``data`` for dataclass ``cls``; ``partial`` reads an
    override (only the keys given)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {path or 'file'} must be a mapping, got {_shown(data)}")
    check_keys(cls, data, path)
    out = {key: convert(hint, data[key], _join(path, key)) for key, hint in _keys(cls).items() if key in data}
    for f in fields(cls):
        if f.name not in out and not partial and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"config key {_join(path, f.name)!r} is required")
    return out


def read(cls, data: Any, path: str = ""):
    return cls(**read_fields(cls, data, path))


def convert(hint, value: Any, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(option, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"config {path!r}: expected {' or '.join(_type_name(a) for a in args)}, got {_shown(value)}")
    if is_dataclass(hint):
        return read(hint, value, path)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {path!r}: expected a list, got {_shown(value)}")
        item = args[0] if args else Any
        items = [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {path!r}: expected a mapping, got {_shown(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: convert(item, v, _join(path, k)) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path!r}: expected true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {path!r}: expected a whole number, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {path!r}: expected a number, got {_shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"config {path!r}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {path!r}: expected text, got {_shown(value)}")
        return value
    raise ConfigError(f"config {path!r}: cannot check values of type {_type_name(hint)}")


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
