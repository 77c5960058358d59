"""Training configuration: typed dataclasses are the single source of truth for every default;
YAML files only override them.

A YAML file may name a parent with ``_base_: other.yaml`` (resolved relative to the file) and
override any subset of keys; ``--set a.b=c`` overrides after that (values parsed as YAML).
Unknown keys and wrong types fail before any work with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from qfmiqm.errors import QfmiqmError, UsageError

BASE_KEY = "_base_"


def load_yaml_chain(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, merging it over its ``_base_`` chain."""
    p = Path(path).resolve()
    if p in _seen:
        raise UsageError(f"{path}: config inheritance loop ({' -> '.join(str(s.name) for s in _seen)})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config must be a mapping of keys to values")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    parent = load_yaml_chain(p.parent / base, _seen + (p,))
    return deep_merge(parent, data)


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings; values are parsed as YAML (numbers, booleans, lists, null)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set '{item}': expected KEY=VALUE, e.g. optim.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from plain data, validating keys and types recursively."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UsageError(f"config: '{where or 'root'}' must be a section (mapping), got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UsageError(f"config: unknown key '{key}' (known in '{where or 'root'}': {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, QfmiqmError) as exc:
        # validation in a (frozen) dataclass's __post_init__ becomes one line naming the section
        raise UsageError(f"config: '{where or 'root'}': {exc}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(arg, value, key)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0])
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, key)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UsageError(f"config: '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config: '{key}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. RGB mean
            if len(value) != len(args):
                raise UsageError(f"config: '{key}' must be a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"config: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"config: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"config: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"config: '{key}' must be a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"config: '{key}' must be a mapping, got {value!r}")
        return value
    return value


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def config_hash(cfg: Any) -> str:
    """Stable short hash of a resolved config (for checkpoints and caches)."""
    text = json.dumps(to_plain(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
