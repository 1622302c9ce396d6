"""`mlflow run . -e <stage> --env-manager local` exactly as typed: no `--experiment-name`, nothing
MLflow-related in the environment, a fresh store (the default `sqlite:///mlflow.db` of a fresh
copy of the project).

The launcher opens the run in experiment `Default`, which it creates with MLflow's artifact
location `./mlruns/0`: the stage must log into that run all the same, keep every artifact under
`./mlartifacts`, and say in its last line which run and experiment hold its results.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from playlistai.config import Settings

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# what a fresh clone does not have (the venv is used from here)
NOT_COPIED = {".venv", ".git", "data", "mlartifacts", "mlflow.db", "mlruns", "outputs", ".pytest_cache", ".ray", "tmp",
              ".env"}

pytestmark = pytest.mark.integration


@pytest.fixture
def clone(tmp_path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory).resolve() == REPO
        return {n for n in names if (top and n in NOT_COPIED) or n == "__pycache__" or n.endswith(".egg-info")}

    dst = tmp_path / "playlistai"
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def bare_env(**extra: str) -> dict:
    """The environment of a new user: no MLFLOW_* variable and no product setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k not in Settings.model_fields}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def bare_run(cwd: Path, entry: str, params: dict, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = ["mlflow", "run", ".", "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def stage_lines(proc: subprocess.CompletedProcess, stage: str) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith(f"{stage}: ")]


def under(uri: str, root: Path) -> bool:
    path = Path(uri.removeprefix("file://"))
    return path.resolve().is_relative_to(root.resolve())


def check_artifacts_kept_out_of_mlruns(clone: Path, client: mlflow.MlflowClient, runs) -> None:
    assert not (clone / "mlruns").exists(), "nothing may be written to ./mlruns"
    for run in runs:
        assert under(run.info.artifact_uri, clone / "mlartifacts"), run.info.artifact_uri
        exp = client.get_experiment(run.info.experiment_id)
        assert under(exp.artifact_location, clone / "mlartifacts"), exp.artifact_location


def the_finished_run(clone: Path, proc, experiment: str):
    """(client, run): the bare command succeeded cleanly and left one run in `experiment`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Traceback" not in out and "MlflowException" not in out
    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    return client, run


def test_bare_data_run_on_a_fresh_store(clone):
    proc = bare_run(clone, "data", {"size": "tiny", "seed": 3}, bare_env())
    client, run = the_finished_run(clone, proc, "Default")
    default = client.get_experiment_by_name("Default")
    assert run.data.tags["stage"] == "data" and run.data.params["size"] == "tiny"
    assert run.data.metrics["tracks"] > 0
    # the stage's last line says where its results are, with counts as integers
    (line,) = stage_lines(proc, "data")
    assert line.endswith(f"run {run.info.run_id} in experiment 'Default'"), line
    assert "e+0" not in line
    assert "note: `mlflow run` put this run in experiment 'Default'" in proc.stderr
    check_artifacts_kept_out_of_mlruns(clone, client, [run])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/popularity.png" in arts
    assert (clone / "mlartifacts" / "0" / run.info.run_id / "artifacts" / "plots" / "popularity.png").exists()

    # a second bare run goes straight to the moved location
    proc = bare_run(clone, "preprocess", {}, bare_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    runs = client.search_runs([default.experiment_id])
    assert {r.data.tags["stage"] for r in runs} == {"data", "preprocess"}
    check_artifacts_kept_out_of_mlruns(clone, client, runs)


def test_bare_train_run_logs_into_the_experiment_of_the_environment(clone, tiny_data_dir):
    """MLFLOW_EXPERIMENT_NAME in the environment: the launcher creates that experiment (with
    artifacts in ./mlruns/<id>) and the stage logs there, its artifacts moved to ./mlartifacts."""
    env = bare_env(MLFLOW_EXPERIMENT_NAME="bare-train")
    params = {"data_dir": tiny_data_dir, "trainer": "local", "epochs": 1, "d_model": 32, "batch_size": 64,
              "val_max_cases": 200, "storage_path": clone / "outputs" / "train"}
    proc = bare_run(clone, "train", params, env)
    client, run = the_finished_run(clone, proc, "bare-train")
    assert "note: `mlflow run` put this run" not in proc.stdout + proc.stderr
    assert run.data.tags["stage"] == "train"
    assert client.search_runs([client.get_experiment_by_name("Default").experiment_id]) == []
    (line,) = stage_lines(proc, "train")
    assert f"run {run.info.run_id} in experiment 'bare-train'" in line
    check_artifacts_kept_out_of_mlruns(clone, client, [run])
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}


@pytest.mark.slow
def test_bare_main_run_keeps_every_child_in_the_launchers_experiment(clone):
    params = {"size": "tiny", "seed": 7, "models": "sasrec", "epochs": 1, "d_model": 32, "trainer": "local",
              "num_workers": 1, "baselines": "false", "n_resamples": 20}
    proc = bare_run(clone, "main", params, bare_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Traceback" not in out

    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"main", "data", "preprocess", "splits", "train", "evaluate", "register"}
    main_run = by_stage.pop("main")
    assert all(r.data.tags["mlflow.parentRunId"] == main_run.info.run_id for r in by_stage.values())
    assert all(r.info.status == "FINISHED" for r in runs)
    assert out.count("note: `mlflow run` put this run") == 1        # the parent's, not one per child
    assert stage_lines(proc, "main")[-1] == f"main: run {main_run.info.run_id} in experiment 'Default', a child run per stage"
    check_artifacts_kept_out_of_mlruns(clone, client, runs)
    version = client.get_model_version_by_alias("playlistai", "production")
    assert version.run_id == by_stage["register"].info.run_id


def test_make_hands_the_dotenv_settings_to_mlflow_run(clone):
    """`.env` is read by Settings, not by `mlflow run`: the make targets pass its tracking URI and
    experiment on, so the launcher and the stage agree on both."""
    (clone / ".env").write_text("MLFLOW_TRACKING_URI=sqlite:///dotenv.db\nMLFLOW_EXPERIMENT_NAME=from-dotenv\n"
                                "MLFLOW_ARTIFACT_ROOT=dotenv-artifacts\n")
    shell = subprocess.run([sys.executable, "-m", "playlistai.tracking", "--shell"], cwd=clone, env=bare_env(),
                           capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["export MLFLOW_TRACKING_URI=sqlite:///dotenv.db",
                                         "export MLFLOW_EXPERIMENT_NAME=from-dotenv"]

    venv = VENV_BIN.parent
    proc = subprocess.run(["make", "data", "SIZE=tiny", "SEED=3", f"VENV={venv}", "-o", f"{venv}/.installed"],
                          cwd=clone, env=bare_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "note: `mlflow run` put this run" not in out
    assert not (clone / "mlflow.db").exists(), "the launcher used the default store instead of .env's"
    client = mlflow.MlflowClient(f"sqlite:///{clone}/dotenv.db")
    exp = client.get_experiment_by_name("from-dotenv")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "data"
    # make starts stages with playlistai.launch: the run is the one `mlflow run` would make
    assert "playlistai.launch . -e data" in proc.stdout
    assert run.data.tags["mlflow.source.type"] == "PROJECT"
    assert run.data.tags["mlflow.project.entryPoint"] == "data"
    assert run.data.params["size"] == "tiny" and run.data.params["seed"] == "3"
    assert under(run.info.artifact_uri, clone / "dotenv-artifacts")
    assert not (clone / "mlruns").exists()
    assert stage_lines(proc, "data")[-1].endswith(f"run {run.info.run_id} in experiment 'from-dotenv'")


def test_the_launcher_fails_as_mlflow_run_does(clone):
    """A malformed -P stops the launch with one line (status 2); a stage that fails keeps its own
    message and makes the launch fail (status 1), as `mlflow run` does; never a traceback."""
    def launch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "playlistai.launch", ".", *args], cwd=clone, env=bare_env(),
                              capture_output=True, text=True, timeout=300)

    proc = launch("-e", "data", "-P", "size")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: launch data: -P 'size': expected name=value"]

    proc = launch("-e", "data", "-P", "size=huge")
    assert proc.returncode == 1
    assert "error: data: unknown size 'huge'" in proc.stderr
    assert proc.stderr.rstrip().endswith("failed ===")
    assert "Traceback" not in proc.stdout + proc.stderr
    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("playlistai").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["mlflow.project.entryPoint"] == "data"


def test_the_launcher_runs_its_stage_with_its_own_interpreter(clone):
    """`.venv/bin/python -m playlistai.launch` from a shell where the environment is not activated:
    the stage's `python` is the launcher's, not whichever `python` comes first on PATH."""
    env = {**bare_env(), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "playlistai.launch", ".", "-e", "data", "-P", "size=tiny"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert stage_lines(proc, "data") and "Traceback" not in proc.stderr


def test_an_interrupted_launch_stops_its_stage_and_says_so(clone):
    """Ctrl-C (SIGINT to the launcher): the stage is stopped, its run marked FAILED, one line, status 130."""
    # as from a terminal: a shell that runs this suite in the background (CI) hands its children
    # SIGINT ignored, and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "playlistai.launch", ".", "-e", "data", "-P", "size=large"],
                            cwd=clone, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "drawing plays" in line or "Running command" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 130, out[-3000:]
    assert "launch data: interrupted" in out and "Traceback" not in out
    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("playlistai").experiment_id])
    assert run.info.status == "FAILED"


def test_tracking_cli_refuses_a_bad_setting_in_one_line(clone):
    (clone / ".env").write_text("MLFLOW_TRACKING_URI=file:///tmp/mlruns\n")
    proc = subprocess.run([sys.executable, "-m", "playlistai.tracking", "--shell"], cwd=clone, env=bare_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: tracking: MLFLOW_TRACKING_URI='file:///tmp/mlruns': the plain file store")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bare_train_on_a_fresh_clone_says_what_to_run_first(clone):
    proc = bare_run(clone, "train", {}, bare_env())
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: train: no splits in data/ (data/splits/train.parquet is missing); run first "
        "`make data preprocess splits` (or `mlflow run . -e data --env-manager local && "
        "mlflow run . -e preprocess --env-manager local && mlflow run . -e splits --env-manager local`)"
    ]
    assert not (clone / "data").exists() and not (clone / "mlruns").exists()
