"""The drift job on the reference packaged with a real (tiny) model: replayed training-like requests
are not drift, a shifted hour mix is, too few requests is "not enough data"; MLflow gets the lot."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from monitoring.drift_job import DriftJobConfig, load_reference, run_drift_job
from monitoring.replay import make_requests
from playlistai.data.sequences import load_split
from playlistai.tracking import stage_run


def request_feature_rows(package, data_dir, n: int, shift: str, seed: int) -> pd.DataFrame:
    """What the API would write to the stream for these replayed requests (serving/traffic.py)."""
    from playlistai.inference import Recommender
    from serving.traffic import feature_row

    recommender = Recommender.from_directory(package)
    requests = make_requests(load_split(data_dir, "train"), n, shift, seed)
    return pd.DataFrame([feature_row(recommender, r.tracks, r.hour, r.dow, None) for r in requests])


@pytest.fixture(scope="module")
def traffic(monitoring_model):
    package, data_dir = monitoring_model["package"], monitoring_model["data_dir"]
    return {shift: request_feature_rows(package, data_dir, 600, shift, seed=3) for shift in ("none", "hour")}


def run_job(tmp_path, current: pd.DataFrame, model_uri: str, **overrides) -> tuple[dict, str]:
    path = tmp_path / "current.parquet"
    current.to_parquet(path)
    config = DriftJobConfig(model_uri=model_uri, current=str(path), state_file=str(tmp_path / "state.json"),
                            **overrides)
    with stage_run("drift", {"current": str(path)}) as run:
        state = run_drift_job(config)
    return state, run.info.run_id


def test_the_reference_comes_from_the_registered_production_model(monitoring_model):
    reference, meta = load_reference(monitoring_model["uri"])
    assert meta["model_version"] == monitoring_model["version"]
    assert {"history_len", "hour", "dow", "unknown_share", "mean_pop_pct"} <= set(reference.columns)
    assert len(reference) >= 200


def test_training_like_traffic_is_not_drift_and_a_night_audience_is(monitoring_model, traffic, tmp_path):
    state, _ = run_job(tmp_path, traffic["none"], str(monitoring_model["package"]))
    assert state["status"] == "ok" and not state["drift_detected"], state
    assert max(state["psi"].values()) < 0.25

    state, run_id = run_job(tmp_path, traffic["hour"], monitoring_model["uri"])
    assert state["status"] == "drift" and state["drifted_features"] == ["hour"], state
    assert max(state["psi"], key=state["psi"].get) == "hour" and state["psi"]["hour"] > 0.25
    assert json.loads((tmp_path / "state.json").read_text())["psi"]["hour"] == state["psi"]["hour"]

    run = mlflow.get_run(run_id)
    assert run.data.metrics["drift_detected"] == 1.0 and run.data.metrics["drift_psi_hour"] > 0.25
    assert run.data.tags["drift_status"] == "drift"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift")}
    assert {"drift/reference_vs_current.png", "drift/result.json", "drift/detectors"} <= artifacts
    saved = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift/detectors")}
    assert saved == {"drift/detectors/ks", "drift/detectors/chi2"}


def test_too_few_requests_is_not_enough_data_not_an_alarm(monitoring_model, traffic, tmp_path):
    state, run_id = run_job(tmp_path, traffic["hour"].head(50), str(monitoring_model["package"]))
    assert state["status"] == "not_enough_data" and not state["drift_detected"]
    assert "not enough data" in state["message"] and state["psi"] == {}
    assert mlflow.get_run(run_id).data.metrics["drift_detected"] == 0.0
