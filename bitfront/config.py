"""The one schema of bitfront's settings.

Every setting is one field of a frozen dataclass that derives from `Config`: its default is
the field's default, its check is in the class's `__post_init__` (through `Config.require`),
its help text is in the field's metadata (`setting(...)`). Study specs (TOML), command-line
flags (`bitfront.flags`) and the Python API all build these same objects; `from_dict` is the
one checked parser (it names the bad key), `to_dict`/`to_json` the one serialisation
(versioned by `SCHEMA`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Self

from bitfront.errors import BitfrontError

SCHEMA = 1


class ConfigError(BitfrontError):
    """A setting with a bad name, type or value; the message names the key (`key`: the
    field of the config that raised it, when one field is at fault)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            choices: tuple | None = None, parse=None, factory=None) -> Any:
    """A config field: its default, a help text, and for the command line an optional flag
    name (without dashes), choices, and a parser for text values (e.g. sizes like 1.2GiB)."""
    meta = {"help": help, "flag": flag, "choices": choices, "parse": parse}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every settings dataclass: checked construction from plain data, serialisation."""

    def require(self, ok: bool, key: str, expected: str) -> None:
        """Raise a `ConfigError` naming `key` unless `ok`."""
        if not ok:
            raise ConfigError(f"{key} must be {expected}, got {getattr(self, key, None)!r}",
                              key=key)

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """Versioned JSON: `{"schema": SCHEMA, "type": class name, "config": to_dict()}`."""
        return json.dumps({"schema": SCHEMA, "type": type(self).__name__,
                           "config": self.to_dict()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        data = json.loads(text)
        if data.get("schema") != SCHEMA or data.get("type") != cls.__name__:
            raise ConfigError(f"not a schema-{SCHEMA} {cls.__name__}: schema "
                              f"{data.get('schema')!r}, type {data.get('type')!r}")
        return cls.from_dict(data["config"])

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> Self:
        """Build from plain data (parsed TOML/JSON): every key known, every value of its
        field's type; errors name the key with its path (`where` is the prefix)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where.rstrip('.') or cls.__name__} must be a table")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        values = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"unknown key {where}{key} (known: {', '.join(sorted(known))})")
            values[key] = _coerce(value, hints[key], known[key].metadata, f"{where}{key}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}" if where else str(exc)) from None

    def replace(self, **changes) -> Self:
        return dataclasses.replace(self, **changes)


def _plain(value):
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(value, hint, meta, key: str):
    """`value` as type `hint`, or a ConfigError naming `key`."""
    if meta and meta.get("parse") and isinstance(value, str):
        try:
            return meta["parse"](value)
        except BitfrontError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], None, key)
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, f"{key}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} should be a list, got {value!r}")
        return tuple(_coerce(v, args[0], meta, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} should be a table, got {value!r}")
        return {str(k): _coerce(v, args[1], None, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key} should be {getattr(hint, '__name__', hint)}, got {value!r}")
