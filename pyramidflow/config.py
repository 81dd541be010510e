"""Typed configs: dataclasses filled from YAML presets and ``key=value`` overrides.

A config is a (possibly nested) dataclass. ``load_config(Cls, "configs/x.yaml", ["a.b=3"])``
reads the YAML, applies the overrides and checks every key and type, so a typo fails at once
with the list of valid keys instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pyramidflow.errors import PyramidflowError

T = TypeVar("T")
SEED_MAX = 2**63 - 1  # seeds are stored in torch generators (64 bits); larger ones are refused


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed: an integer in [0, SEED_MAX]; a one-line error naming the range otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise PyramidflowError(f"{name} must be an integer from 0 to 2**63 - 1 ({SEED_MAX}), got {value!r}")
    return value


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> Python values; a one-line error naming ``where`` and the line for bad YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise PyramidflowError(f"{where}: invalid YAML{at}: {problem}") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` (converting lists to tuples and ints to floats)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PyramidflowError:
                continue
        raise PyramidflowError(f"{key}: {value!r} does not fit {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise PyramidflowError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise PyramidflowError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise PyramidflowError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise PyramidflowError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise PyramidflowError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            raise PyramidflowError(f"{key}: expected a number, got {value!r}") from None
    if annotation is bool:
        if not isinstance(value, bool):
            raise PyramidflowError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PyramidflowError(f"{key}: expected an integer, got {value!r}")
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise PyramidflowError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise PyramidflowError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain (YAML-safe) dict of a config dataclass; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise PyramidflowError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"--set {item}") if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a (nested) config dataclass."""
    out = []
    for name, kind in _field_types(cls).items():
        out.append(prefix + name)
        if dataclasses.is_dataclass(kind):
            out.extend(_paths(kind, f"{prefix}{name}."))
    return out


def expand_key(cls: type, key: str) -> str:
    """``key`` as given if it is a dotted key of ``cls``, else the one key ending in ``.key``.

    So ``checkpoint_every`` means ``loop.checkpoint_every`` when no other section has that field;
    an ambiguous short key is an error that lists the full keys to choose from.
    """
    paths = _paths(cls)
    if key in paths:
        return key
    matches = [p for p in paths if p.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise PyramidflowError(f"config key {key!r} is ambiguous; write one of: {', '.join(matches)}")
    head = key.split(".")[0]
    top = sorted(_field_types(cls))
    hint = f"valid keys: {', '.join(top)}" if head not in top else f"see the fields of {head!r}"
    raise PyramidflowError(f"unknown config key {key}; {hint}")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML preset (optional) with ``key=value`` overrides applied on top.

    An override's key may be shortened to its last part(s) when that is unambiguous
    (:func:`expand_key`).
    """
    expanded = []
    for item in overrides or []:
        if "=" not in item:
            raise PyramidflowError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            key = expand_key(cls, key)
        except PyramidflowError:
            if "." not in key:
                raise
            # a dotted key into a nested section: let _check_keys name the valid fields
        expanded.append(f"{key}={raw}")
    overrides = expanded
    base = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PyramidflowError(f"{path}: not a text file (a YAML config was expected)") from None
        loaded = parse_yaml(text, str(path)) or {}
        if not isinstance(loaded, dict):
            raise PyramidflowError(f"{path}: the top level must be a mapping of config keys")
        _check_keys(cls, loaded)
        base = _merge(base, loaded)
    _check_keys(cls, apply_overrides({}, overrides))
    return from_dict(cls, apply_overrides(base, overrides))


def _check_keys(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    types_ = _field_types(cls)
    for key, value in data.items():
        if key not in types_:
            raise PyramidflowError(
                f"unknown config key {prefix}{key}; valid keys: {', '.join(sorted(types_))}"
            )
        if dataclasses.is_dataclass(types_[key]) and isinstance(value, dict):
            _check_keys(types_[key], value, prefix=f"{prefix}{key}.")


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
