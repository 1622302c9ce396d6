"""The scale-out path (README, "Scaling out"), each step run here through the same code path.

- Training on an existing Ray cluster: `ray start --head` (as the KubeRay head does), then the
  `train` entry point joins it through RAY_ADDRESS, as the RayJob's driver does on the head pod;
  the cluster's own job and actor tables prove the training ran there. The cluster uses token
  authentication (Ray's default) with a token of its own, and stays on the loopback interface.
- MLflow on PostgreSQL with served artifacts: the compose file's own `mlflow server` arguments,
  pointed at the local PostgreSQL and a scratch artifact directory, and a pipeline stage run
  against it over HTTP; the run is in PostgreSQL and its artifacts went through the server.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def _stop(proc: subprocess.Popen, timeout: float = 30, leader_first: bool = False) -> str:
    """SIGTERM what this test started (its own process group), then SIGKILL what lingers.

    leader_first: signal only the leader first and let it stop its children (`ray start --block`
    drains the node through the GCS, which must still be running then).
    """
    if proc.poll() is None:
        if leader_first:
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    try:  # anything of the group left behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return out or ""


def _mlflow_run(entry: str, params: dict, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    subprocess.run([sys.executable, "-m", "playlistai.tracking"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    cmd = [str(VENV_BIN / "mlflow"), "run", ".", "-e", entry, "--env-manager", "local",
           "--experiment-name", "playlistai"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# --- Ray ------------------------------------------------------------------------------------------

@pytest.fixture
def ray_head(free_port, subprocess_env):
    """A Ray head started with `ray start --head`; yields (RAY_ADDRESS, env that can join it)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {
        **subprocess_env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # a single-node head on 127.0.0.1 (on Linux Ray otherwise advertises the machine's address)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # no node draining at teardown
    }
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, f"ray start failed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ray start took over 90 s:\n{log.read_text()}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(proc, leader_first=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cluster_tables(address: str, env: dict) -> dict:
    """The head's GCS job and actor tables, read by a separate driver."""
    script = (
        "import json, ray, ray._private.state as st\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "jobs = [{'id': j['JobID'], 'entrypoint': j.get('Entrypoint', ''), 'dead': j['IsDead']} for j in st.jobs()]\n"
        "actors = [{'job': a['JobID'], 'cls': a['ActorClassName']} for a in st.actors().values()]\n"
        "print('TABLES' + json.dumps({'jobs': jobs, 'actors': actors}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TABLES"))
    return json.loads(line[len("TABLES"):])


def test_train_entry_point_joins_a_ray_cluster_through_ray_address(ray_head, tiny_data_dir, tmp_path):
    address, env = ray_head
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert "train" in project["entry_points"], "MLproject has no `train` entry point"
    declared = set(project["entry_points"]["train"]["parameters"])
    params = {"model": "sasrec", "d_model": 16, "n_heads": 2, "n_layers": 1, "epochs": 1, "num_workers": 1,
              "trainer": "ray", "batch_size": 64, "val_max_cases": 200, "patience": 0, "progress": "false",
              "data_dir": tiny_data_dir, "storage_path": tmp_path / "ray-storage"}
    params = {k: v for k, v in params.items() if k in declared}
    assert {"trainer", "num_workers", "data_dir"} <= set(params)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**env, "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"), "MPLCONFIGDIR": str(tmp_path / "mpl")}

    proc = _mlflow_run("train", params, env)
    assert proc.returncode == 0, f"train failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    # the driver joined the existing cluster instead of starting a local Ray
    assert f"Connecting to existing Ray cluster at address: {address}" in proc.stderr + proc.stdout

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("playlistai")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "train"]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer"] == "ray"
    assert client.list_artifacts(run.info.run_id, "checkpoint"), "the trained model was logged"

    tables = _cluster_tables(address, env)
    train_jobs = [j for j in tables["jobs"] if "entrypoints.train" in j["entrypoint"]]
    assert len(train_jobs) == 1 and train_jobs[0]["dead"], tables["jobs"]
    job_id = train_jobs[0]["id"]
    classes = {a["cls"] for a in tables["actors"] if a["job"] == job_id}
    assert "RayTrainWorker" in classes, f"no Ray Train workers of the train job on the cluster: {classes}"


# --- MLflow server on PostgreSQL ------------------------------------------------------------------

@pytest.fixture
def postgres_db():
    db = f"playlistai_deploy_{uuid.uuid4().hex[:8]}"
    base = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    proc = subprocess.run([*base, f"CREATE DATABASE {db}"], capture_output=True, text=True)
    assert proc.returncode == 0, f"local PostgreSQL is required (.ci/run starts it): {proc.stderr}"
    yield db
    subprocess.run([*base, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def _psql(db: str, sql: str) -> str:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tA", "-c", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_pipeline_tracks_into_the_compose_mlflow_server_on_postgresql(postgres_db, tmp_path, free_port,
                                                                      subprocess_env):
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    cmd = compose["services"]["mlflow"]["command"]
    cmd = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    assert cmd[:2] == ["mlflow", "server"]
    port = free_port()
    artifacts = tmp_path / "served-artifacts"
    # the same arguments, with the compose host names swapped for this machine's services
    replace = {
        "--backend-store-uri": f"postgresql+psycopg://postgres@127.0.0.1:5432/{postgres_db}",
        "--artifacts-destination": str(artifacts),
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
    }
    args = list(cmd[2:])
    for i, a in enumerate(args[:-1]):
        if a in replace:
            args[i + 1] = replace[a]
        if a == "--allowed-hosts":
            args[i + 1] += f",127.0.0.1:{port}"
    assert urlparse_scheme(args[args.index("--backend-store-uri") + 1]) == urlparse_scheme(
        cmd[cmd.index("--backend-store-uri") + 1]), "same database driver as in compose"
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", *args], cwd=tmp_path, env=subprocess_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"mlflow server exited:\n{server.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 90 s"
            time.sleep(0.5)

        uri = f"http://127.0.0.1:{port}"
        # a stage's MLflow code path (playlistai.tracking.stage_run), as every entry point uses it
        stage = (
            "import mlflow, pathlib, sys\n"
            "from playlistai.tracking import stage_run\n"
            "with stage_run('deploycheck', {'size': 'tiny'}) as run:\n"
            "    mlflow.log_metric('events', 42)\n"
            "    p = pathlib.Path(sys.argv[1]); p.write_text('served')\n"
            "    mlflow.log_artifact(str(p), artifact_path='plots')\n"
            "    print('RUN', run.info.run_id)\n"
        )
        env = {**subprocess_env, "MLFLOW_TRACKING_URI": uri, "MPLCONFIGDIR": str(tmp_path / "mpl")}
        env.pop("MLFLOW_ARTIFACT_ROOT", None)
        proc = subprocess.run([sys.executable, "-c", stage, str(tmp_path / "note.txt")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-5000:]
        run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("RUN "))

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("playlistai")
        assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["events"] == 42
        assert run.data.params["size"] == "tiny" and run.data.tags["stage"] == "deploycheck"
        # the run is in PostgreSQL, its artifact in the server's artifact store
        assert _psql(postgres_db, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == "FINISHED"
        stored = [p for p in artifacts.rglob("note.txt")]
        assert len(stored) == 1 and run_id in str(stored[0]) and stored[0].read_text() == "served"
        local = client.download_artifacts(run_id, "plots/note.txt", str(tmp_path / "download"))
        assert Path(local).read_text() == "served"

        # the compose network name passes the server's Host check; an unknown host does not
        def status_for(host: str) -> int:
            req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status_for("mlflow:5000") == 200
        assert status_for("attacker.example") in (400, 403)
    finally:
        _stop(server)


def urlparse_scheme(uri: str) -> str:
    return uri.split("://", 1)[0]
