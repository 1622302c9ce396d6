"""The same tiny pipeline against `mlflow server` on PostgreSQL with served artifacts.

Then the register stage runs again on the same training run: a second version and a second gate
decision, with production left where the gate says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid

import mlflow
import pytest

from reliability.components import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]


@pytest.fixture
def tracking_server(tmp_path, make_stage_env):
    """A throw-away database and an `mlflow server` on it; yields the server's URI."""
    db = f"playlistai_registry_{uuid.uuid4().hex[:8]}"
    proc = subprocess.run([*PSQL, f"CREATE DATABASE {db}"], capture_output=True, text=True)
    assert proc.returncode == 0, f"local PostgreSQL is required (.ci/run starts it): {proc.stderr}"
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"postgresql://postgres@127.0.0.1:5432/{db}",
         "--serve-artifacts", "--artifacts-destination", str(tmp_path / "served-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=make_stage_env(),
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-4000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        subprocess.run([*PSQL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def test_registry_pipeline_on_tracking_server_with_postgresql(
    tracking_server, tmp_path, make_stage_env, run_entry, tiny_main_params
):
    """`mlflow run . -e main` with MLFLOW_TRACKING_URI at the server, then `-e register` again."""
    env = make_stage_env(tracking_uri=tracking_server)
    data_dir = tmp_path / "data"
    # one model and no baselines: the stages are the same, the server is what is under test here
    run_entry("main", {**tiny_main_params, "models": "gru4rec", "epochs": 1, "baselines": "false",
                       "data_dir": data_dir}, env)

    client = mlflow.MlflowClient(tracking_uri=tracking_server)
    exp = client.get_experiment_by_name("playlistai")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    main_run = client.search_runs([exp.experiment_id], "tags.stage = 'main'")[0]
    assert main_run.info.status == "FINISHED"
    first = client.get_model_version_by_alias("playlistai", "production")
    assert str(first.version) == main_run.data.tags["registered_version"] == "1"
    # one model: nothing to choose between, so no validation comparison
    assert main_run.data.tags["chosen_on"] == "only_model" and not main_run.data.tags["val_eval_run_id"]

    # the register stage again on the same training run: a second version, a second decision
    train_run = main_run.data.tags["best_train_run_id"]
    run_entry("register", {"run_id": train_run, "data_dir": data_dir, "n_resamples": 200}, env)
    second = client.get_model_version("playlistai", "2")
    assert second.tags["gate_decision"] == "rejected", "identical weights are not significantly better"
    assert second.tags["gate_compared_with"] == "1"
    assert str(client.get_model_version_by_alias("playlistai", "production").version) == "1"
    assert str(client.get_model_version_by_alias("playlistai", "challenger").version) == "2"

    # the served model loads from the server in a fresh process
    script = textwrap.dedent("""
        import json, mlflow, pandas as pd
        out = mlflow.pyfunc.load_model("models:/playlistai@production").predict(
            pd.DataFrame({"tracks": [["unknown-track"]], "k": [5], "hour": [7], "dow": [1]}))
        print(json.dumps({"n": len(out["track_ids"][0]), "fallback": bool(out["fallback"][0])}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"n": 5, "fallback": True}
