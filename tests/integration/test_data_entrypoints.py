"""`mlflow run . -e data|preprocess|splits` end to end, on SQLite and on PostgreSQL stores."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def mlflow_run(entry: str, params: dict, env: dict) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "mlflow"), "run", ".", "-e", entry, "--env-manager", "local",
           "--experiment-name", "playlistai"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def run_pipeline(uri: str, data_dir: Path, artifact_root: Path) -> dict[str, mlflow.entities.Run]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ARTIFACT_ROOT": str(artifact_root),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)  # `mlflow run` refuses an experiment id beside --experiment-name
    subprocess.run([sys.executable, "-m", "playlistai.tracking"], cwd=REPO, env=env, check=True, capture_output=True)
    for entry, params in (("data", {"size": "tiny", "seed": 3}), ("preprocess", {}), ("splits", {})):
        proc = mlflow_run(entry, {"data_dir": data_dir, **params}, env)
        assert proc.returncode == 0, f"{entry} failed:\n{proc.stdout}\n{proc.stderr}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("playlistai")
    assert Path(exp.artifact_location.removeprefix("file://")).resolve() == artifact_root.resolve()
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["stage"]: r for r in runs}


def check_runs(runs: dict, data_dir: Path) -> None:
    assert set(runs) == {"data", "preprocess", "splits"}
    data, pre, spl = runs["data"], runs["preprocess"], runs["splits"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert data.data.params["size"] == "tiny" and data.data.params["seed"] == "3"
    for key in ("users", "tracks", "events", "oracle_recall_at_20", "oracle_ndcg_at_10", "mostpop_recall_at_20"):
        assert key in data.data.metrics, key
    assert data.data.metrics["oracle_recall_at_20"] > data.data.metrics["mostpop_recall_at_20"]
    for key in ("sessions", "session_len_mean", "session_len_median", "dropped_share_short_sessions",
                "dropped_share_duplicates"):
        assert key in pre.data.metrics, key
    assert float(pre.data.params["session_gap_min"]) == 45
    for key in ("vocab_size", "val_unknown_track_share", "test_unknown_track_share", "train_sessions"):
        assert key in spl.data.metrics, key
    assert spl.data.params["strategy"] == "temporal"
    assert len(spl.data.tags["data_hash"]) == 64
    assert spl.inputs.dataset_inputs, "split datasets are logged as inputs"
    for name in ("train", "val", "test"):
        assert (data_dir / "splits" / f"{name}.parquet").exists()


def test_data_stages_on_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = run_pipeline(uri, tmp_path / "data", tmp_path / "mlartifacts")
    check_runs(runs, tmp_path / "data")
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(runs["data"].info.run_id, "plots")}
    assert "plots/popularity.png" in arts


@pytest.fixture
def postgres_uri():
    db = f"playlistai_test_{uuid.uuid4().hex[:8]}"
    base = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    proc = subprocess.run([*base, f"CREATE DATABASE {db}"], capture_output=True, text=True)
    assert proc.returncode == 0, f"local PostgreSQL is required (.ci/run starts it): {proc.stderr}"
    yield f"postgresql://postgres@127.0.0.1:5432/{db}"
    subprocess.run([*base, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def test_data_stages_on_postgresql(tmp_path, postgres_uri):
    runs = run_pipeline(postgres_uri, tmp_path / "data", tmp_path / "mlartifacts")
    check_runs(runs, tmp_path / "data")


def test_bad_input_fails_with_a_message_and_a_failed_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "a"),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    bad = tmp_path / "plays.csv"
    bad.write_text("user_id,track_id,ts\nu,a,2024-01-01\nu,b,garbage\n")
    proc = subprocess.run([sys.executable, "-m", "entrypoints.data", "--source", str(bad), "--data-dir",
                           str(tmp_path / "d")], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "plays.csv, line 3: cannot parse time 'garbage'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d" / "raw" / "events.parquet").exists()
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("playlistai").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "plays.csv, line 3: cannot parse time 'garbage'" in runs[0].data.tags["error"]
    proc = subprocess.run([sys.executable, "-m", "entrypoints.preprocess", "--data-dir", str(tmp_path / "none")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "run the `data` stage first" in proc.stderr


def test_a_truncated_gzip_log_fails_with_one_line(tmp_path):
    import gzip

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "a"), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    rows = "user_id,track_id,ts\n" + "".join(f"u{i % 9},t{i % 41},{1700000000 + 60 * i}\n" for i in range(5000))
    data = gzip.compress(rows.encode())
    cut = tmp_path / "plays.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    proc = subprocess.run([sys.executable, "-m", "entrypoints.data", "--source", str(cut), "--data-dir",
                           str(tmp_path / "d")], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "plays.csv.gz: the gzip data ends early: the file is truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d" / "raw" / "events.parquet").exists()


def test_stage_summaries_print_counts_as_integers_with_thousands_separators(tmp_path):
    import re

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "a")}
    proc = subprocess.run([sys.executable, "-m", "entrypoints.data", "--size", "tiny", "--seed", "42", "--data-dir",
                           str(tmp_path / "d")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line, last = proc.stdout.strip().splitlines()[-2:]      # the summary, then the next command
    assert last.startswith("next: `make preprocess DATA_DIR="), last
    # the tiny dataset of seed 42 has 9062 plays: printed 9,062, never 9062 or 9.062e+03
    assert re.fullmatch(r"data: users=\d+, tracks=\d+, events=9,062 -> .*/d/raw; run [0-9a-f]{32} in experiment "
                        r"'playlistai'", line), line
