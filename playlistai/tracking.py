"""MLflow conventions shared by every stage (docs/ARCHITECTURE.md, "MLflow conventions").

- The tracking URI comes from Settings (`sqlite:///mlflow.db` by default, a server when set).
- With a database store (SQLite, or PostgreSQL without a server), the experiment's artifacts go
  to `./mlartifacts` (MLFLOW_ARTIFACT_ROOT), never `./mlruns`. `make` starts stages with
  `playlistai.launch`, which creates the experiment of Settings (so `.env` counts for the launcher
  too) and launches the stage as `mlflow run` does.
- `stage_run` opens the run of one stage: under `mlflow run` it logs into the run the project
  launcher created (MLFLOW_RUN_ID), in whatever experiment the launcher put it (`Default` when
  `mlflow run` is given no experiment), otherwise it starts one in MLFLOW_EXPERIMENT_NAME. An
  experiment the launcher created itself has MLflow's default artifact location, `./mlruns/<id>`;
  on a database store the stage moves it (and its own run, which holds no artifact yet) to
  `MLFLOW_ARTIFACT_ROOT/<id>` before logging anything. The stage logs every param, tags the stage,
  the git commit and the product version, and marks the run FAILED when the stage raises, with
  the error (`ExceptionType: message`) in the run's `error` tag. `run_location` says where a
  run is, for the stage's last line.
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
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import playlistai
from playlistai.config import Settings, get_settings

# mlflow (and pandas) are imported by the functions that use them, so that
# `python -m playlistai.tracking --shell` (the settings as `export` lines, for a shell that runs
# `mlflow run` or a benchmark) starts in a fraction of a second; every stage imports mlflow anyway.
if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)
ERROR_TAG = "error"
PROCESS_TAG = "stage_process"
ENDED_BY_TAG = "ended_by"
MAX_TAG_CHARS = 5000
# MLflow 3's UI opens an experiment on what its kind says: without the tag it guesses, and an
# experiment without traces opened on the GenAI overview (traces, tokens, "No data"). The tag and its
# value for classic model training are the UI's own (mlflow/server/js: `mlflow.experimentKind`,
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT; the Python package sets it only in mlflow/demo).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
EXPERIMENT_DESCRIPTION = (
    "PlayListAI: one run per pipeline stage (tag `stage`). Headline metrics: `test_ndcg_at_10` and "
    "`test_recall_at_20` (evaluation runs `test:<scorer>`, and `<model>_test_*` on the `main` run), "
    "`best_val_ndcg_at_10` (training runs). Registered models: Models -> playlistai."
)


def _is_local_store(uri: str) -> bool:
    """A store this process writes artifacts for itself (not a server that serves artifacts)."""
    return not uri.startswith(("http://", "https://", "databricks"))


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _is_database_store(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES


def tracking_uri(settings: Settings | None = None) -> str:
    """The tracking store: MLFLOW_TRACKING_URI of the environment (what `mlflow run` hands its
    command), else of Settings (`.env`, then the default)."""
    settings = settings or get_settings()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.MLFLOW_TRACKING_URI
    if uri.startswith("file:") or (uri.rstrip("/").endswith("mlruns") and "://" not in uri):
        raise ValueError(f"MLFLOW_TRACKING_URI={uri!r}: the plain file store is not supported; use sqlite:/// or a server")
    _check_sqlite_dir(uri)
    return uri


def _check_sqlite_dir(uri: str) -> None:
    """MLflow creates the missing directories of a SQLite path, and then an empty store in them: a
    mistyped `sqlite:////missing_dir/mlflow.db` would start a new history there. Refuse it instead;
    a missing database file in an existing directory is a new store, as for the default."""
    if not uri.startswith("sqlite:///"):
        return
    db_path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not db_path or db_path == ":memory:" or db_path.startswith("file:"):
        return
    parent = Path(db_path).parent
    if not parent.is_dir():
        raise ValueError(f"MLFLOW_TRACKING_URI={uri!r}: the directory {parent} does not exist (a typo?); "
                         f"create it first to start a new store there")


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    import mlflow

    settings = settings or get_settings()
    uri = tracking_uri(settings)
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
    mark_experiment_kind(mlflow.MlflowClient(), experiment_id, experiment.tags if experiment else {})
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def mark_experiment_kind(client: mlflow.MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> None:
    """Tag the experiment as model training (MLflow 3's UI then opens it on its runs) and describe
    where the headline metrics are, unless someone already set either."""
    import mlflow

    try:
        if EXPERIMENT_KIND_TAG not in tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if DESCRIPTION_TAG not in tags:
            client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, EXPERIMENT_DESCRIPTION)
    except mlflow.exceptions.MlflowException as exc:  # a read-only store or permissions: the UI only
        log.warning("could not tag experiment %s: %s", experiment_id, exc)


def _local_path(location: str) -> Path | None:
    """The local directory of an artifact location (a path or a file: URI), None elsewhere."""
    if location.startswith("file:"):
        return Path(url2pathname(urlparse(location).path))
    if "://" in location or not location.startswith("/"):
        return None
    return Path(location)


def _is_mlflow_default_location(location: str, experiment_id: str) -> bool:
    """MLflow's artifact location for an experiment created without one: `<cwd>/mlruns/<id>`."""
    path = _local_path(location)
    return path is not None and path.name == str(experiment_id) and path.parent.name == "mlruns"


def _holds_files(location: str) -> bool:
    path = _local_path(location)
    return path is not None and path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def _move_out_of_mlruns(client: mlflow.MlflowClient, run, experiment, settings: Settings) -> str | None:
    """Point an experiment `mlflow run` created (artifacts in `./mlruns/<id>`) and the launcher's
    run in it at `MLFLOW_ARTIFACT_ROOT/<id>`. Only the database row changes: MLflow has no call for
    it. The run moves only while it holds no artifact (it was just created). Returns the new
    experiment location, or None when nothing was to move."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.utils.uri import append_to_uri_path

    experiment_id = experiment.experiment_id
    location = (Path(settings.MLFLOW_ARTIFACT_ROOT).resolve() / str(experiment_id)).as_uri()
    run_uri = append_to_uri_path(location, run.info.run_id, "artifacts")
    move_run = (run.info.artifact_uri.startswith(experiment.artifact_location)
                and not _holds_files(run.info.artifact_uri) and len(run_uri) <= 200)
    store = client._tracking_client.store
    with store.ManagedSessionMaker() as session:
        session.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(experiment_id)).update(
            {SqlExperiment.artifact_location: location}, synchronize_session=False)
        if move_run:
            session.query(SqlRun).filter(SqlRun.run_uuid == run.info.run_id).update(
                {SqlRun.artifact_uri: run_uri}, synchronize_session=False)
    if not move_run:
        log.warning("run %s keeps its artifacts at %s (it already holds some)", run.info.run_id, run.info.artifact_uri)
    return location


def use_launcher_run(run_id: str, settings: Settings | None = None) -> str:
    """Under `mlflow run`: make the experiment of the launcher's run the active one; return its id.

    The launcher chose that experiment (`--experiment-name`, MLFLOW_EXPERIMENT_NAME or
    MLFLOW_EXPERIMENT_ID of the environment, else `Default`), so it is where the run stays.
    """
    import mlflow

    settings = settings or get_settings()
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"MLFLOW_RUN_ID={run_id}: no such run in the tracking store {uri}") from None
    experiment = client.get_experiment(run.info.experiment_id)
    if (_is_database_store(uri) and experiment.artifact_location
            and _is_mlflow_default_location(experiment.artifact_location, experiment.experiment_id)):
        try:
            _move_out_of_mlruns(client, run, experiment, settings)
        except Exception as exc:  # the stage's work matters more than where its files go
            log.warning("artifacts of experiment %r stay at %s: %s", experiment.name, experiment.artifact_location, exc)
    if experiment.name != settings.MLFLOW_EXPERIMENT_NAME and "mlflow.parentRunId" not in run.data.tags:
        log.warning("note: `mlflow run` put this run in experiment %r; MLFLOW_EXPERIMENT_NAME is %r "
                    "(pass --experiment-name %s, or export MLFLOW_EXPERIMENT_NAME, to log there)",
                    experiment.name, settings.MLFLOW_EXPERIMENT_NAME, shlex.quote(settings.MLFLOW_EXPERIMENT_NAME))
    mark_experiment_kind(client, experiment.experiment_id, experiment.tags)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def run_location(run_id: str) -> str:
    """`run <id> in experiment '<name>'`: where a stage's results are, for its last line."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    return f"run {run_id} in experiment '{client.get_experiment(run.info.experiment_id).name}'"


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
    import mlflow

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
    import mlflow

    # taken out of the environment (as mlflow.start_run does when it reads it itself): left there,
    # a later start_run(nested=True) in this stage would resume this run instead of a child
    run_id = os.environ.pop("MLFLOW_RUN_ID", None) if not nested else None
    if run_id:
        use_launcher_run(run_id, settings)
    elif not (nested and mlflow.active_run()):  # a child stays in its parent's experiment
        configure_mlflow(settings)
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
    from playlistai.files import pid_alive

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
    import mlflow

    try:
        mlflow.set_tag(ERROR_TAG, error_text(exc))
    except Exception as tag_exc:  # the stage's error matters more than this one
        log.warning("could not record the error of the run: %s", tag_exc)
    try:
        mlflow.end_run(status="FAILED")
    except Exception as end_exc:
        log.warning("could not mark the run FAILED: %s", end_exc)


def main(argv: list[str] | None = None) -> int:
    """`python -m playlistai.tracking`: create the experiment (with its artifact root), print its id.

    `--shell` prints `export` lines instead, for `mlflow run` to use the tracking URI and the
    experiment of Settings (environment or `.env`): `eval "$(python -m playlistai.tracking --shell)"`.
    It only reads the settings (no mlflow import, no store access: a fraction of a second); an
    experiment `mlflow run` then creates is moved to MLFLOW_ARTIFACT_ROOT by the stage
    (`use_launcher_run`), as under a bare `mlflow run`.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m playlistai.tracking", description=main.__doc__.split("\n")[0])
    parser.add_argument("--shell", action="store_true", help="print export lines of MLFLOW_TRACKING_URI and "
                        "MLFLOW_EXPERIMENT_NAME instead of creating the experiment")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        uri = tracking_uri(settings)
        if args.shell:
            print(f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}")
            print(f"export MLFLOW_EXPERIMENT_NAME={shlex.quote(settings.MLFLOW_EXPERIMENT_NAME)}")
            return 0
        import mlflow

        try:
            experiment_id = configure_mlflow(settings)
        except mlflow.exceptions.MlflowException as exc:
            raise ValueError(str(exc)) from None
    except ValueError as exc:
        print(f"error: tracking: {exc}", file=sys.stderr)
        return 2
    print(experiment_id)
    return 0

if __name__ == "__main__":
    sys.exit(main())
