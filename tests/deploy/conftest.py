"""Shared by the deploy tests: the repository root, YAML loading, and free ports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from reliability.components import free_port as free_port_now

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def free_port():
    """free_port() -> a TCP port nobody listens on right now (on the loopback interface)."""
    return free_port_now


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def k8s_resources() -> list[tuple[str, dict]]:
    """Every object of every manifest under deploy/k8s, as (file name, object)."""
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.fixture(scope="session")
def settings_fields() -> set[str]:
    from playlistai.config import Settings

    return set(Settings.model_fields)


@pytest.fixture
def subprocess_env() -> dict:
    """The environment for a child process: the venv first on PATH, no inherited MLflow run."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env
