"""Shared fixtures. Each test session gets its own MLflow store under a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_mlflow(tmp_path_factory):
    """Never write to the repo's mlflow.db from tests."""
    root = tmp_path_factory.mktemp("mlflow")
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT", "MLFLOW_RUN_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_ARTIFACT_ROOT"] = str(root / "mlartifacts")
    os.environ.pop("MLFLOW_RUN_ID", None)
    from playlistai.config import get_settings

    get_settings.cache_clear()
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """The `tiny` synthetic dataset run through data -> preprocess -> splits (shared, read-only)."""
    from playlistai.data.stages import run_data, run_preprocess, run_splits
    from playlistai.tracking import stage_run

    data_dir = tmp_path_factory.mktemp("tiny_data")
    with stage_run("data", {"size": "tiny"}):
        run_data(data_dir, size="tiny", seed=7)
    with stage_run("preprocess", {}):
        run_preprocess(data_dir)
    with stage_run("splits", {}):
        run_splits(data_dir)
    return data_dir
