"""What every entry point shares: boolean params as MLproject passes them, and clean failures.

MLproject params arrive as strings ("true", "42.0"); `as_bool` and `as_int` read them. `cli_errors`
turns the errors a user can cause (bad params, bad files, bad configuration) into one readable line
on stderr and exit status 2, instead of a traceback; the stage's MLflow run is marked FAILED.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from playlistai.config import SettingsError

USER_ERRORS = (ValueError, FileNotFoundError, SettingsError, KeyError)


def as_bool(value: str | bool, name: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def as_int(value: str | float | int, name: str, minimum: int | None = None) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and f < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {int(f)}")
    return int(f)


@contextmanager
def cli_errors(stage: str) -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.echo(f"error: {stage}: {msg}", err=True)
        sys.exit(2)
