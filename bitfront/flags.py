"""Command-line flags from config dataclasses, and configs back from parsed flags.

One adapter for every config: each field becomes a flag (`--group-size`, or the field's
`flag` name, behind an optional prefix such as `calib-`), with the field's help, choices and
default shown; booleans get `--x/--no-x`; tuples are comma lists; nested configs get their
own prefix. Flags default to "not given", so a config built from them takes its defaults from
the dataclass alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from bitfront.config import Config, ConfigError
from bitfront.errors import BitfrontError


def _flag(field: dataclasses.Field, prefix: str) -> str:
    return field.metadata.get("flag") or prefix + field.name.replace("_", "-")


def _dest(cls: type, prefix: str, field: dataclasses.Field) -> str:
    return f"cfg_{cls.__name__}_{prefix}_{field.name}".replace("-", "_")


def _inner(hint):
    """`X` for `X | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _text_parser(hint, field: dataclasses.Field):
    parse = field.metadata.get("parse")
    if parse is not None:
        def parsed(text: str):  # argparse reports only its own errors as usage errors
            try:
                return parse(text)
            except BitfrontError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return parsed
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]

        def as_list(text: str):
            try:
                return tuple(item(v) for v in text.split(",") if v)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"bad list {text!r}: use e.g. 2,3,4") from exc
        return as_list
    return hint


def add_config_flags(parser, cls: type[Config], *, prefix: str = "",
                     skip: tuple[str, ...] = (), title: str | None = None) -> None:
    """Add a flag for each field of `cls` (except `skip`) to `parser`."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        hint = _inner(hints[field.name])
        if isinstance(hint, type) and issubclass(hint, Config):
            add_config_flags(parser, hint, prefix=f"{prefix}{field.name.replace('_', '-')}-",
                             title=title)
            continue
        default = getattr(defaults, field.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = field.metadata.get("help", "")
        if shown not in (None, "", False):
            help_text = f"{help_text} (default: {shown})"
        kwargs = {"dest": _dest(cls, prefix, field), "default": None, "help": help_text}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _text_parser(hint, field)
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            else:
                kwargs["metavar"] = field.name.upper()
        group.add_argument(f"--{_flag(field, prefix)}", **kwargs)


def config_from_flags(cls: type[Config], args: argparse.Namespace, *, prefix: str = "",
                      **fixed):
    """The `cls` the parsed flags describe (unset flags keep the dataclass defaults);
    `fixed` values are set by the command itself."""
    hints = typing.get_type_hints(cls)
    values = dict(fixed)
    for field in dataclasses.fields(cls):
        if field.name in values or not field.init:
            continue
        hint = _inner(hints[field.name])
        if isinstance(hint, type) and issubclass(hint, Config):
            values[field.name] = config_from_flags(
                hint, args, prefix=f"{prefix}{field.name.replace('_', '-')}-")
            continue
        value = getattr(args, _dest(cls, prefix, field), None)
        if value is not None:
            values[field.name] = value
    try:
        return cls(**values)
    except ConfigError as exc:  # the library names the field, the command line its flag
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if exc.key not in fields:
            raise
        raise BitfrontError(f"{exc} (--{_flag(fields[exc.key], prefix)})") from None
