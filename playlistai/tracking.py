"""MLflow conventions shared by every stage (DESIGN.md §4).

- The tracking URI comes from Settings (`sqlite:///mlflow.db` by default, a server when set).
- With a database store (SQLite, or PostgreSQL without a server), the experiment's artifacts go
  to `./mlartifacts` (MLFLOW_ARTIFACT_ROOT), never `./mlruns`; `mlflow run` would create the
  experiment with `./mlruns`, so `make` creates it first (`python -m playlistai.tracking`).
- `stage_run` opens the run of one stage: under `mlflow run` it resumes the run the project
  launcher created (MLFLOW_RUN_ID), otherwise it starts one; it logs every param, tags the stage,
  the git commit and the product version, and marks the run FAILED when the stage raises.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

import playlistai
from playlistai.config import Settings, get_settings


def _is_local_store(uri: str) -> bool:
    """A store this process writes artifacts for itself (not a server that serves artifacts)."""
    return not uri.startswith(("http://", "https://", "databricks"))


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    settings = settings or get_settings()
    uri = os.environ.get("MLFLOW_TRACKING_URI", settings.MLFLOW_TRACKING_URI)
    if uri.startswith("file:") or uri.rstrip("/").endswith("mlruns") and "://" not in uri:
        raise ValueError(f"MLFLOW_TRACKING_URI={uri!r}: the plain file store is not supported; use sqlite:/// or a server")
    mlflow.set_tracking_uri(uri)
    name = settings.MLFLOW_EXPERIMENT_NAME
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if _is_local_store(uri):
            artifact_location = Path(settings.MLFLOW_ARTIFACT_ROOT).resolve().as_uri()
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and create
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_hash(path: str | os.PathLike, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_hash(paths) -> str:
    """One hash over several files (order-independent by file name)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(file_hash(p).encode())
    return h.hexdigest()


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    bools = {"true": True, "1": True, "false": False, "0": False}
    if a.lower() in bools and b.lower() in bools:
        return bools[a.lower()] == bools[b.lower()]
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def log_params_once(run: mlflow.ActiveRun, params: Mapping[str, Any]) -> None:
    """Log params; under `mlflow run` the launcher already logged the raw strings ("45", "false").

    MLflow refuses to change a logged param, so a value already there stays; where the stage
    resolved it to something else (an empty default filled from Settings), the resolved value is
    logged as `resolved_<key>`.
    """
    logged = run.data.params if run.data else {}
    fresh = {}
    for k, v in params.items():
        value = "" if v is None else str(v)
        if k not in logged:
            fresh[k] = value
        elif not _same_value(logged[k], value):
            fresh[f"resolved_{k}"] = value
    if fresh:
        mlflow.log_params(fresh)


@contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    run_name: str | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    configure_mlflow(settings)
    # taken out of the environment (as mlflow.start_run does when it reads it itself): left there,
    # a later start_run(nested=True) in this stage would resume this run instead of a child
    run_id = os.environ.pop("MLFLOW_RUN_ID", None) if not nested else None
    with mlflow.start_run(run_id=run_id, run_name=run_name or stage, nested=nested) as run:
        mlflow.set_tags(
            {
                "stage": stage,
                "git_commit": git_commit(),
                "playlistai_version": playlistai.__version__,
                **(tags or {}),
            }
        )
        log_params_once(run, params)
        try:
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise


if __name__ == "__main__":
    # `python -m playlistai.tracking`: create the experiment (with its artifact root) and print its id
    print(configure_mlflow())
