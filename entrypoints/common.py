"""What every entry point shares: boolean params as MLproject passes them, and clean failures.

MLproject params arrive as strings ("true", "42.0"); `as_bool` and `as_int` read them. `cli_errors`
turns the errors a user can cause (bad params, bad files, bad configuration) into one readable line
on stderr and exit status 2, instead of a traceback; the stage's MLflow run is marked FAILED.
`require_splits` stops a stage that reads the splits, when `data_dir` lacks them, with the exact
commands that make them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from playlistai.config import SettingsError
from playlistai.data.layout import SPLITS, DataLayout

USER_ERRORS = (ValueError, FileNotFoundError, SettingsError, KeyError)

# MLflow draws a progress bar per artifact download (a checkpoint's few small files: instant), three
# noisy lines per model a stage loads; the user can still turn them back on
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
SYNTHETIC = "synthetic"
# folders of a data_dir: a user's file named like one of them gets a folder of another name
_LAYOUT_NAMES = {"raw", "processed", "splits", "world", "bench"}


def default_data_dir(source: str, settings_data_dir: str) -> str:
    """Where a stage writes when no data_dir is given: DATA_DIR (`data`) for the synthetic data, a
    folder of its own for a user's file (`/path/plays.csv.gz` -> `data/plays`), so that a user's
    data never overwrites the demo's."""
    if not source or source == SYNTHETIC:
        return settings_data_dir
    name = Path(source).name
    for suffix in (".gz", ".csv", ".tsv", ".tab", ".parquet", ".pq", ".txt"):
        name = name.removesuffix(suffix)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "user"
    if slug in _LAYOUT_NAMES:
        slug += "-data"
    return str(Path(settings_data_dir) / slug)


def stage_command(stage: str, data_dir: str, base_dir: str = "data", **params) -> str:
    """`make <stage>` where a make target exists and the params allow it, else the `mlflow run` line."""
    custom = data_dir.rstrip("/") != base_dir.rstrip("/")
    if stage in DATA_STAGES + ("train",) and not params:
        return f"make {stage}" + (f" DATA_DIR={data_dir}" if custom else "")
    return mlflow_command(stage, data_dir, base_dir, **params)


def mlflow_command(stage: str, data_dir: str, base_dir: str = "data", **params) -> str:
    """The `mlflow run` line of a stage, with data_dir only where it is not the default."""
    custom = data_dir.rstrip("/") != base_dir.rstrip("/")
    args = "".join(f" -P {k}={v}" for k, v in params.items())
    return f"mlflow run . -e {stage} --env-manager local" + (f" -P data_dir={data_dir}" if custom else "") + args


def next_stage_commands(stage: str, data_dir: str, base_dir: str = "data") -> tuple[str, str]:
    """The make target and the `mlflow run` line of the next data stage, with DATA_DIR / data_dir
    whenever it is not `data`: make does not read `.env`, and a `DATA_DIR=...` given to make reaches
    the stage as its setting, so the data_dir of Settings says nothing about what `make` will use."""
    return stage_command(stage, data_dir, base_dir), mlflow_command(stage, data_dir)


def ui_command(settings) -> str:
    """How to look at the runs: `mlflow ui` on a local store, the server's address otherwise."""
    from playlistai.tracking import tracking_uri

    uri = tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    if uri.startswith("sqlite:///"):   # `mlflow run` hands its stages an absolute path: show it as typed
        path = Path(uri.removeprefix("sqlite:///"))
        if path.is_absolute() and path.parent == Path.cwd():
            uri = f"sqlite:///{path.name}"
    return f"mlflow ui --backend-store-uri {uri}"


def after_training(run_id: str, data_dir: str, base_dir: str = "data") -> tuple[str, str]:
    """What to do with a finished training run: register it (with its gate), or evaluate it."""
    custom = f" DATA_DIR={data_dir}" if data_dir.rstrip("/") != base_dir.rstrip("/") else ""
    return f"make register RUN_ID={run_id}{custom}", f"make eval MODEL_URI=runs:/{run_id}/checkpoint{custom}"


def echo_next(*commands: str) -> None:
    """The last line of a stage: the command(s) to run next (none inside `main`, which sets
    IN_PIPELINE_ENV for the stages it runs: their next step is the pipeline's)."""
    from playlistai.pipeline import IN_PIPELINE_ENV

    if commands and not os.environ.get(IN_PIPELINE_ENV):
        typer.echo("next: " + "  or  ".join(f"`{c}`" for c in commands))


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
