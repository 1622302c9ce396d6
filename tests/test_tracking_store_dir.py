"""A mistyped SQLite tracking URI is refused, not turned into a new directory and an empty store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from playlistai.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def uri_env(monkeypatch):
    def set_uri(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    return set_uri


def test_a_sqlite_path_in_a_missing_directory_is_refused_naming_it(tmp_path, uri_env):
    missing = tmp_path / "missing_dir"
    uri_env(f"sqlite:///{missing}/mlflow.db")
    with pytest.raises(ValueError, match=rf"the directory {missing} does not exist \(a typo\?\)"):
        tracking_uri()
    assert not missing.exists()


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/mlflow.db", "sqlite:///{tmp}/new.db?timeout=20", "sqlite:///mlflow.db",
                                 "sqlite://", "sqlite:///:memory:", "postgresql://u:p@localhost/mlflow",
                                 "http://localhost:5000"])
def test_existing_directories_and_other_stores_are_accepted(tmp_path, uri_env, uri):
    uri = uri.format(tmp=tmp_path)
    uri_env(uri)
    assert tracking_uri() == uri


def test_the_data_stage_and_the_make_helper_refuse_it_without_creating_anything(tmp_path):
    missing = tmp_path / "missing_dir"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{missing}/mlflow.db", "PYTHONPATH": str(REPO)}
    for command in ([sys.executable, "-m", "entrypoints.data", "--size", "tiny", "--data-dir", str(tmp_path / "d")],
                    [sys.executable, "-m", "playlistai.tracking", "--shell"]):
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-800:]
        assert f"the directory {missing} does not exist" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not missing.exists() and not (tmp_path / "d").exists()
