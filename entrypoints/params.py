"""A stage's CLI options, built from its params dataclass (playlistai/params.py), and the strings
they receive read back into it.

Every option is a string, `--kebab-case` of its field, as `mlflow run` passes params ("3.0" for a
float param); the field's type says how it is read, and a bad value raises ValueError naming the
param (`cli_errors` makes that one line on stderr and exit status 2). An option of a Settings-backed
field that is omitted or empty takes the Settings value: MLproject declares those with default "".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import Field, fields
from typing import Any, get_type_hints

import typer

from entrypoints.common import as_bool, as_int
from playlistai.config import Settings
from playlistai.params import HELP, MINIMUM, in_mlproject, setting_of

Received = Mapping[str, str | None]


def as_float(value: str | float, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def as_string(value: Any) -> str:
    """A default as a CLI option or MLproject spells it: `true`, `256` (not 256.0), `0.002`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read(value: str, kind: type, f: Field) -> Any:
    """One received string as the field's type."""
    if kind is bool:
        return as_bool(value, f.name)
    if kind is int:
        return as_int(value, f.name, minimum=f.metadata.get(MINIMUM))
    if kind is float:
        return as_float(value, f.name)
    return value


def is_given(f: Field, value: str | None) -> bool:
    """Neither omitted nor, where Settings supply the value, empty."""
    return value is not None and not (value == "" and setting_of(f) is not None)


def options(cls: type) -> Callable[[Callable[[Received], Any]], Callable[..., Any]]:
    """Decorator: the command gets one string option per field of `cls` and is called with them
    as one mapping (None where a Settings-backed option was omitted)."""

    def decorate(fn: Callable[[Received], Any]) -> Callable[..., Any]:
        def command(**received: str | None) -> Any:
            return fn(received)

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = inspect.Signature([
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=str,
                              default=typer.Option(None if setting_of(f) else as_string(f.default),
                                                   help=f.metadata.get(HELP) or None))
            for f in fields(cls)
        ])
        return command

    return decorate


def parse(cls: type, received: Received, settings: Settings) -> Any:
    """The params dataclass of the received strings; Settings fill the Settings-backed fields that
    were omitted or empty."""
    types = get_type_hints(cls)
    given = {f.name: read(received[f.name], types[f.name], f) for f in fields(cls)
             if is_given(f, received.get(f.name))}
    return cls.from_settings(settings, **given)


def as_received(cls: type, received: Received) -> dict[str, str]:
    """The MLproject params as received, the strings `mlflow run` has logged already: a stage that
    logs these never logs a param twice with another spelling. Settings-backed params left to
    Settings are not among them: the stage logs the values it took."""
    return {f.name: received[f.name] for f in fields(cls)
            if in_mlproject(f) and is_given(f, received.get(f.name))}
