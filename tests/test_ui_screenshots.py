"""docs/ui_screenshots.py: a store without the runs it shows is refused before any browser starts, with
one line saying what is missing; with Chromium at hand, a small store is photographed and checked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "ui_screenshots.py"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _load():
    spec = importlib.util.spec_from_file_location("ui_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ui = _load()


def _store(tmp_path: Path) -> tuple[str, mlflow.MlflowClient]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, mlflow.MlflowClient(tracking_uri=uri)


def _train_run(client: mlflow.MlflowClient, experiment_id: str, model: str, parent: str | None = None,
               status: str = "FINISHED", ndcg: float = 0.1) -> str:
    tags = {"stage": "train", "model_family": model, "mlflow.runName": f"train-{model}"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, tags=tags, run_name=f"train-{model}")
    client.log_param(run.info.run_id, "model", model)
    for key, value in (("best_val_ndcg_at_10", ndcg), ("best_val_recall_at_20", 2 * ndcg), ("train_loss", 5.0)):
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_a_store_without_training_runs_exits_2_with_one_line_before_any_browser(tmp_path):
    uri, client = _store(tmp_path)
    client.create_experiment("playlistai")
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    # a browser that does not exist: the store is refused before one is needed
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--chromium", str(tmp_path / "none")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-800:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ui-screenshots: no finished `train` run of sasrec in experiment 'playlistai'")
    assert "run `make demo`" in lines[0]
    assert not out.exists()


def test_a_missing_store_is_named_and_not_created(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    assert ui.main(["--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
    assert f"no tracking store at {db}" in capsys.readouterr().err
    assert not db.exists()


def test_a_store_without_the_experiment_or_the_alias_is_refused(tmp_path, capsys):
    uri, client = _store(tmp_path)
    client.search_experiments()  # an empty store
    assert ui.main(["--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    assert "no experiment 'playlistai'" in capsys.readouterr().err

    experiment_id = client.create_experiment("playlistai")
    for model in ("sasrec", "gru4rec"):
        _train_run(client, experiment_id, model)
    assert ui.main(["--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no registered model 'playlistai' with the alias 'production'" in err and "make demo" in err


def test_the_latest_finished_training_of_each_model_and_its_main_run_are_shown(tmp_path):
    uri, client = _store(tmp_path)
    experiment_id = client.create_experiment("playlistai")
    _train_run(client, experiment_id, "sasrec")
    main = client.create_run(experiment_id, run_name="main", tags={"stage": "main"}).info.run_id
    sasrec = _train_run(client, experiment_id, "sasrec", parent=main)
    gru4rec = _train_run(client, experiment_id, "gru4rec", parent=main)
    _train_run(client, experiment_id, "sasrec", status="FAILED")  # later, but failed
    client.create_registered_model("playlistai")
    version = client.create_model_version("playlistai", f"runs:/{gru4rec}/model", run_id=gru4rec)
    client.set_registered_model_alias("playlistai", "production", version.version)

    targets = ui.find_targets(uri, "playlistai", "playlistai", "production")
    assert targets.train_runs == {"sasrec": (sasrec, "train-sasrec"), "gru4rec": (gru4rec, "train-gru4rec")}
    assert targets.parent_runs == [main] and targets.alias_version == str(version.version)
    assert targets.experiment_id == experiment_id


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


@pytest.mark.integration
@pytest.mark.slow
def test_the_screenshots_of_a_small_store_show_its_runs_and_alias(tmp_path):
    # fails rather than skips without a browser: `.ci/run` and `make ui-screenshots` install it
    assert Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), \
        "needs Chromium and its driver: apt-get install chromium chromium-driver"
    uri, client = _store(tmp_path)
    experiment_id = client.create_experiment("playlistai", artifact_location=(tmp_path / "artifacts").as_uri())
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    main = client.create_run(experiment_id, run_name="main", tags={"stage": "main"}).info.run_id
    _train_run(client, experiment_id, "sasrec", parent=main, ndcg=0.14)
    gru4rec = _train_run(client, experiment_id, "gru4rec", parent=main, ndcg=0.11)
    client.set_terminated(main)
    client.create_registered_model("playlistai")
    version = client.create_model_version("playlistai", f"runs:/{gru4rec}/model", run_id=gru4rec,
                                          tags={"gate": "promoted (first version)", "gate_decision": "promoted",
                                                "gate_reason": "no production yet"})
    client.set_registered_model_alias("playlistai", "production", version.version)

    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--timeout", "180"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = {p.name: _png_size(p) for p in out.glob("*.png")}
    assert set(sizes) == {"mlflow-runs.png", "mlflow-compare.png", "mlflow-registry.png"}, proc.stdout
    assert sizes["mlflow-runs.png"] == (1600, 1000) and sizes["mlflow-compare.png"] == (1600, 2000)
    assert sizes["mlflow-registry.png"][0] == 1600 and sizes["mlflow-registry.png"][1] >= 1000
    shutil.rmtree(out)
