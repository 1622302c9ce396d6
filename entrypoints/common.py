"""What every entry point shares: boolean params as MLproject passes them, and clean failures.

MLproject params arrive as strings ("true", "42.0"); `as_bool` and `as_int` read them. `cli_errors`
turns the errors a user can cause (bad params, bad files, bad configuration) into one readable line
on stderr and exit status 2, instead of a traceback; the stage's MLflow run is marked FAILED.
`require_splits` stops a stage that reads the splits, when `data_dir` lacks them, with the exact
commands that make them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from playlistai.config import SettingsError
from playlistai.data.layout import SPLITS, DataLayout

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


DATA_STAGES = ("data", "preprocess", "splits")


def require_splits(data_dir: str, default_data_dir: str = "data") -> None:
    """Raise (one line) when `data_dir` has no splits, naming the commands to run first: from the
    first data stage whose output is missing, with `data_dir` when it is not the default."""
    layout = DataLayout.of(data_dir)
    needed = [layout.split(s) for s in SPLITS] + [layout.vocab]
    missing = next((path for path in needed if not path.exists()), None)
    if missing is None:
        return
    first = "data" if not layout.events.exists() else "preprocess" if not layout.sessions.exists() else "splits"
    todo = DATA_STAGES[DATA_STAGES.index(first):]
    custom = data_dir.rstrip("/") != default_data_dir.rstrip("/")
    make = "make " + " ".join(todo) + (f" DATA_DIR={data_dir}" if custom else "")
    runs = " && ".join(f"mlflow run . -e {name} --env-manager local" + (f" -P data_dir={data_dir}" if custom else "")
                       for name in todo)
    raise FileNotFoundError(f"no splits in {data_dir}/ ({missing} is missing); "
                            f"run first `{make}` (or `{runs}`)")


@contextmanager
def cli_errors(stage: str) -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.echo(f"error: {stage}: {msg}", err=True)
        sys.exit(2)
