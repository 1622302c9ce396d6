"""MLflow conventions shared by every stage (DESIGN.md §4).

- The tracking URI comes from Settings (`sqlite:///mlflow.db` by default, a server when set).
- With a database store (SQLite, or PostgreSQL without a server), the experiment's artifacts go
  to `./mlartifacts` (MLFLOW_ARTIFACT_ROOT), never `./mlruns`; `mlflow run` would create the
  experiment with `./mlruns`, so `make` creates it first (`python -m playlistai.tracking`).
- `stage_run` opens the run of one stage: under `mlflow run` it resumes the run the project
  launcher created (MLFLOW_RUN_ID), otherwise it starts one; it logs every param, tags the stage,
  the git commit and the product version, and marks the run FAILED when the stage raises, with
  the error (`ExceptionType: message`) in the run's `error` tag.
- A process killed outright (SIGKILL, out of memory) cannot end its run, which would stay RUNNING
  for ever. Every stage run is tagged with the process that runs it (`stage_process` =
  `<host>:<pid>`), and each stage that starts ends the RUNNING runs of this host whose process is
  gone as KILLED, with an `ended_by` tag (`close_abandoned_runs`); `train` with `resume_from` does
  so for the run it resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

import playlistai
from playlistai.config import Settings, get_settings
from playlistai.data.layout import pid_alive

log = logging.getLogger(__name__)
ERROR_TAG = "error"
PROCESS_TAG = "stage_process"
ENDED_BY_TAG = "ended_by"
MAX_TAG_CHARS = 5000


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
                PROCESS_TAG: process_id(),
                **(tags or {}),
            }
        )
        log_params_once(run, params)
        if not nested:
            try:
                close_abandoned_runs(mlflow.MlflowClient(), run.info.experiment_id,
                                     f"{stage} run {run.info.run_id} found it abandoned")
            except Exception as exc:  # housekeeping must never fail the stage
                log.warning("could not look for abandoned runs: %s", exc)
        try:
            yield run
        except BaseException as exc:
            mark_failed(exc)
            raise


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def close_if_abandoned(client: mlflow.MlflowClient, run_id: str, note: str, quiet: bool = False) -> bool:
    """End run `run_id` as KILLED if it is RUNNING while the process that ran it is gone.

    Only a process on this host can be checked; a run of another host, of a live process, or
    without a `stage_process` tag is left alone. `note` (who noticed) goes into the `ended_by` tag.
    Returns True when the run was ended.
    """
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid)):
        if not quiet:
            log.warning("run %s is RUNNING and its process (%s) cannot be shown to be gone: left as it is",
                        run_id, run.data.tags.get(PROCESS_TAG, "unknown"))
        return False
    client.set_tag(run_id, ENDED_BY_TAG, f"{note}: its process {pid} on {host} was gone"[:MAX_TAG_CHARS])
    client.set_terminated(run_id, status="KILLED")
    return True


def close_abandoned_runs(client: mlflow.MlflowClient, experiment_id: str, note: str) -> list[str]:
    """End as KILLED every RUNNING run of the experiment whose process ran on this host and is gone."""
    host = socket.gethostname()
    candidates = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.{PROCESS_TAG} LIKE '{host}:%'",
        max_results=200,
    )
    return [r.info.run_id for r in candidates if close_if_abandoned(client, r.info.run_id, note, quiet=True)]


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= MAX_TAG_CHARS else text[: MAX_TAG_CHARS - 3] + "..."


def mark_failed(exc: BaseException) -> None:
    """End the active run as FAILED with the error as its `error` tag. When the store cannot be
    reached either, the stage's own error is what the caller must see, so this never raises."""
    try:
        mlflow.set_tag(ERROR_TAG, error_text(exc))
    except Exception as tag_exc:  # the stage's error matters more than this one
        log.warning("could not record the error of the run: %s", tag_exc)
    try:
        mlflow.end_run(status="FAILED")
    except Exception as end_exc:
        log.warning("could not mark the run FAILED: %s", end_exc)


if __name__ == "__main__":
    # `python -m playlistai.tracking`: create the experiment (with its artifact root) and print its id
    print(configure_mlflow())
