"""Frozen config dataclasses: strict loading from dicts and TOML, and stable hashing.

Every task, model, mechanism and training run is configured by a small frozen
dataclass that lives next to its class. Each field carries a comment in the
class body; validation happens in the dataclass's `__post_init__` through
`check`, so a bad value raises a `ConfigError` that names the field.

Numbers must be finite: `nan`, `inf` and `-inf` (all valid TOML) are refused for
every float field of every config, built-in or plugin, unless the field allows
them explicitly (`field(default=..., metadata={NONFINITE: True})`). A learning
rate of `inf` trains a NaN model, and a NaN model must never reach a board.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import reprlib
import typing
from typing import Any, TypeVar

from sparsebench.errors import ConfigError
from sparsebench.io import canonical_json

C = TypeVar("C")
NONFINITE = "nonfinite"  # field metadata key: True lets a float field be nan or +-inf


def _show(value: Any) -> str:
    """A short repr of a user's value for an error line (a 5 MB string is not repeated back)."""
    return reprlib.repr(value)


def check(where: str, ok: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming `field` unless `ok`."""
    if not ok:
        raise ConfigError(where, field, message)


def _coerce(where: str, name: str, hint: Any, value: Any, nonfinite: bool = False) -> Any:
    """Check `value` against the field's type hint; widen int to float, list to tuple; refuse nan and
    infinities unless `nonfinite`."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(where, name, arg, value, nonfinite)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        check(where, value in allowed, name, f"must be one of {', '.join(map(repr, allowed))} (got {_show(value)})")
        return value
    if hint is bool:
        check(where, isinstance(value, bool), name, f"must be true or false (got {_show(value)})")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        check(where, isinstance(value, int) and not isinstance(value, bool), name,
              f"must be an integer (got {_show(value)})")
        return value
    if hint is float:
        check(where, isinstance(value, (int, float)) and not isinstance(value, bool), name,
              f"must be a number (got {_show(value)})")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float's range
            value = math.inf
        check(where, nonfinite or math.isfinite(value), name, f"must be a finite number (got {value})")
        return value
    if hint is str:
        check(where, isinstance(value, str), name, f"must be a string (got {_show(value)})")
        return value
    if origin is dict:
        check(where, isinstance(value, dict), name, f"must be a table (got {_show(value)})")
        return value
    if origin is tuple:
        check(where, isinstance(value, (list, tuple)), name, f"must be a list (got {_show(value)})")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(where, name, item, v, nonfinite) for v in value)
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str) -> C:
    """Build config `cls` from a plain dict, rejecting unknown fields and wrong types."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(where, "(all)", f"must be a table of fields (got {_show(data)})")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(where, _show(unknown[0]).strip("'\""), f"unknown field; known fields: {', '.join(fields)}")
    kwargs = {k: _coerce(where, k, hints[k], v, bool(fields[k].metadata.get(NONFINITE))) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of `obj`'s canonical JSON form."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
