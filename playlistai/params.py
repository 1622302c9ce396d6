"""A stage's params, declared once: the typed fields of a dataclass, each with its default, its help
text and, where the product's Settings supply the default, the name of that setting.

The entry points build their CLI options from these fields and read the strings they receive back
into them (entrypoints/params.py); MLproject declares the same names and defaults, with "" for a
Settings-backed param so that the environment takes effect under `mlflow run` too
(tests/test_mlproject_params.py holds the three together).
"""

from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any

from playlistai.config import Settings, get_settings

HELP = "help"
SETTING = "setting"          # the Settings attribute that supplies the value when none is given
MINIMUM = "minimum"          # the least integer accepted
IN_MLPROJECT = "mlproject"   # False: an option of the CLI alone, not declared in MLproject


def param(default: Any, help: str = "", *, setting: str | None = None, minimum: int | None = None,
          mlproject: bool = True) -> Any:
    """A params field. With `setting`, `default` is that setting's own default (what the class
    gives without Settings, as in tests); the stage takes the setting's value instead."""
    metadata: dict[str, Any] = {HELP: help}
    if setting is not None:
        metadata[SETTING] = setting
    if minimum is not None:
        metadata[MINIMUM] = minimum
    if not mlproject:
        metadata[IN_MLPROJECT] = False
    return field(default=default, metadata=metadata)


def setting_of(f: Field) -> str | None:
    return f.metadata.get(SETTING)


def in_mlproject(f: Field) -> bool:
    return f.metadata.get(IN_MLPROJECT, True)


class StageParams:
    """Base of a stage's params dataclass."""

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **given):
        """The params with the `given` values (None: not given) and, for every Settings-backed field
        not given, the value of its setting."""
        settings = settings or get_settings()
        values = {f.name: getattr(settings, setting_of(f)) for f in fields(cls) if setting_of(f)}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)
