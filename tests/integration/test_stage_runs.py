"""What every stage's MLflow run records when things go wrong: the error of a failed stage, and the
end of a run whose process was killed (SIGKILL leaves it RUNNING)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest

from playlistai.tracking import ENDED_BY_TAG, ERROR_TAG, PROCESS_TAG, configure_mlflow, stage_run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_failed_stage_records_its_error():
    with pytest.raises(ValueError), stage_run("probe", {"x": 1}) as run:
        raise ValueError("events.csv, line 3: boom")
    finished = mlflow.MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags[ERROR_TAG] == "ValueError: events.csv, line 3: boom"


def test_a_stage_ends_the_runs_of_processes_that_are_gone():
    client = mlflow.MlflowClient()
    experiment_id = configure_mlflow()
    host = socket.gethostname()

    def running(process: str) -> str:
        return client.create_run(experiment_id, tags={PROCESS_TAG: process, "stage": "probe"}).info.run_id

    killed = running(f"{host}:{dead_pid()}")
    alive = running(f"{host}:{os.getpid()}")
    elsewhere = running(f"another-host.example:{dead_pid()}")
    with stage_run("probe", {}) as run:
        pass
    assert client.get_run(killed).info.status == "KILLED"
    assert run.info.run_id in client.get_run(killed).data.tags[ENDED_BY_TAG]
    assert client.get_run(alive).info.status == "RUNNING"          # its process still runs
    assert client.get_run(elsewhere).info.status == "RUNNING"      # cannot be checked from here
    assert client.get_run(run.info.run_id).data.tags[PROCESS_TAG].startswith(f"{host}:")
    for run_id in (alive, elsewhere):
        client.set_terminated(run_id)


def test_the_experiment_opens_on_its_runs_in_mlflow_3s_ui(monkeypatch):
    """MLflow 3's UI opens an experiment without a kind on its GenAI overview; every stage marks its
    experiment as model training (the UI's own tag and value) and says where the headline metrics are."""
    from playlistai.config import get_settings
    from playlistai.tracking import (
        DESCRIPTION_TAG,
        EXPERIMENT_KIND,
        EXPERIMENT_KIND_TAG,
        use_launcher_run,
    )

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kind-probe")
    get_settings.cache_clear()
    try:
        experiment_id = configure_mlflow()
        tags = mlflow.MlflowClient().get_experiment(experiment_id).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
        assert "test_ndcg_at_10" in tags[DESCRIPTION_TAG]

        # an experiment `mlflow run` created (no tags), and one whose owner chose another kind and text
        client = mlflow.MlflowClient()
        bare = client.create_experiment("kind-bare")
        run = client.create_run(bare)
        use_launcher_run(run.info.run_id)
        assert client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
        chosen = client.create_experiment("kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development",
                                                               DESCRIPTION_TAG: "mine"})
        run = client.create_run(chosen)
        use_launcher_run(run.info.run_id)
        tags = client.get_experiment(chosen).tags
        assert (tags[EXPERIMENT_KIND_TAG], tags[DESCRIPTION_TAG]) == ("genai_development", "mine")
    finally:
        get_settings.cache_clear()
