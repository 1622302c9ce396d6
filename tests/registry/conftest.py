"""Fixtures of the registry tests: the tiny `main` pipeline, run as a user runs it.

Kept small on purpose (tiny data, d_model 32, two epochs, in-process trainer, 200 bootstrap
resamples): these tests check the plumbing (runs, versions, aliases, loading), not model quality.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

TINY_MAIN_PARAMS = {
    "size": "tiny", "seed": 7, "models": "sasrec,gru4rec", "epochs": 2, "d_model": 32,
    "trainer": "local", "num_workers": 1, "n_resamples": 200,
}


def stage_env(tracking_uri: str | None = None, artifact_root: str | None = None) -> dict:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if artifact_root:
        env["MLFLOW_ARTIFACT_ROOT"] = artifact_root
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    return env


def mlflow_run(entry: str, params: dict, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`mlflow run . -e <entry> --env-manager local` from the repo root, as the README says."""
    subprocess.run([sys.executable, "-m", "playlistai.tracking"], cwd=REPO, env=env, check=True, capture_output=True)
    cmd = [str(VENV_BIN / "mlflow"), "run", ".", "-e", entry, "--env-manager", "local",
           "--experiment-name", "playlistai"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"mlflow run -e {entry} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, _isolated_mlflow):
    """`mlflow run . -e main` on tiny data against the test session's SQLite store.

    Returns (data_dir, the main run). The registry then holds version 1 in production.
    """
    data_dir = tmp_path_factory.mktemp("pipeline_data")
    env = stage_env()
    mlflow_run("main", {**TINY_MAIN_PARAMS, "data_dir": data_dir}, env)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("playlistai")
    mains = client.search_runs([exp.experiment_id], "tags.stage = 'main'", order_by=["start_time DESC"])
    return data_dir, mains[0]


@pytest.fixture(scope="session")
def make_stage_env():
    """`make_stage_env(tracking_uri=None, artifact_root=None)`: the environment a stage subprocess gets."""
    return stage_env


@pytest.fixture(scope="session")
def run_entry():
    """`run_entry(entry, params, env)`: `mlflow run . -e entry` that must succeed."""
    return mlflow_run


@pytest.fixture(scope="session")
def tiny_main_params() -> dict:
    return dict(TINY_MAIN_PARAMS)
