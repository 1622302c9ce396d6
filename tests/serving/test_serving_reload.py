"""Hot reload: the alias moves while requests run; failed loads keep the old model; /admin/reload."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

ADMIN = {"Authorization": "Bearer t0ken"}


def wait_for(condition, timeout_s: float, step_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step_s)
    return condition()


def continue_body(client, tracks=("t1", "t2"), **extra):
    response = client.post("/continue", json={"tracks": list(tracks), "k": 5, "context": {"hour": 9, "dow": 2},
                                              **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_admin_reload_swaps_to_the_version_the_alias_names(make_client, fake_registry):
    client = make_client(ADMIN_TOKEN="t0ken")
    before = continue_body(client)
    assert before["model_version"] == "1" and continue_body(client)["cached"] is True

    fake_registry.alias_version = "2"
    result = client.post("/admin/reload", headers=ADMIN).json()
    assert result == {"outcome": "loaded", "model_version": "2", "previous_version": "1", "error": None}
    after = continue_body(client)
    # the cache key holds the model version: the new model never serves the old model's slate
    assert after["model_version"] == "2" and after["cached"] is False
    assert after["items"] != before["items"]
    assert client.get("/healthz").json()["model_version"] == "2"
    assert fake_registry.loads == ["models:/playlistai/1", "models:/playlistai/2"]   # exact versions


def test_a_failed_load_keeps_the_old_model_and_is_reported(make_client, fake_registry):
    client = make_client(ADMIN_TOKEN="t0ken")
    fake_registry.alias_version = "2"
    fake_registry.fail_versions.add("2")
    result = client.post("/admin/reload", headers=ADMIN).json()
    assert result["outcome"] == "failed" and result["model_version"] == "1"
    assert "version 2" in result["error"] and "model.pt" in result["error"]

    assert continue_body(client)["model_version"] == "1"          # still serving
    health = client.get("/healthz").json()
    assert health["model_loaded"] is True and health["model_version"] == "1"
    assert health["status"] == "degraded" and "version 2" in health["reason"]
    metrics = client.get("/metrics").text
    assert 'model_reloads_total{outcome="failed"}' in metrics
    assert 'errors_total{kind="model_load",route="model_reload"}' in metrics

    fake_registry.fail_versions.clear()                              # fixed: the next check loads it
    assert client.post("/admin/reload", headers=ADMIN).json()["outcome"] == "loaded"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["reason"] is None and health["model_version"] == "2"


def test_a_model_that_cannot_answer_is_never_swapped_in(make_client, fake_registry, fake_recommender_class):
    class Broken(fake_recommender_class):
        def recommend(self, *args, **kwargs):
            raise IndexError("vocabulary does not match the weights")

    fake_registry.models["2"] = Broken(model_version="2")
    client = make_client(ADMIN_TOKEN="t0ken")
    fake_registry.alias_version = "2"
    result = client.post("/admin/reload", headers=ADMIN).json()
    assert result["outcome"] == "failed" and "does not match" in result["error"]
    assert continue_body(client)["model_version"] == "1"


def test_an_unreachable_tracking_store_during_a_poll_keeps_serving(make_client, fake_registry):
    client = make_client(ADMIN_TOKEN="t0ken")
    fake_registry.resolve_error = ConnectionError("tracking server unreachable")
    result = client.post("/admin/reload", headers=ADMIN).json()
    assert result["outcome"] == "failed" and "unreachable" in result["error"]
    assert continue_body(client)["model_version"] == "1"


def test_the_poller_follows_the_alias_within_one_interval(make_client, fake_registry):
    client = make_client(MODEL_POLL_S=0.1)
    assert continue_body(client)["model_version"] == "1"
    fake_registry.alias_version = "2"
    moved = time.monotonic()
    assert wait_for(lambda: continue_body(client)["model_version"] == "2", timeout_s=3.0)
    assert time.monotonic() - moved < 2.0          # one 0.1 s poll, with room for a loaded machine


def test_a_service_started_without_a_model_picks_one_up(make_client, fake_registry):
    fake_registry.resolve_error = ConnectionError("tracking server unreachable")
    client = make_client(MODEL_POLL_S=0.2)
    assert client.post("/continue", json={"tracks": ["t1"]}).status_code == 503
    assert "unreachable" in client.get("/healthz").json()["reason"]
    fake_registry.resolve_error = None
    assert wait_for(lambda: client.get("/healthz").json()["model_loaded"], timeout_s=5.0)
    assert continue_body(client)["model_version"] == "1"


@pytest.mark.integration
def test_moving_the_registry_alias_under_load_fails_no_request(registry_settings, tiny_registry):
    """Real registry, real models: requests keep running while `production` moves from 1 to 2."""
    from serving.main import create_app

    poll_s = 0.5
    client_registry = tiny_registry["client"]
    name = tiny_registry["name"]
    with TestClient(create_app(registry_settings(MODEL_POLL_S=poll_s)), raise_server_exceptions=False) as client:
        vocab = client.app.state.service.models.current.recommender.vocab
        failures, versions, stop = [], [], threading.Event()

        def drive():
            i = 0
            while not stop.is_set():
                i += 1
                tracks = vocab.track_ids[i % 50: i % 50 + 5]
                response = client.post("/continue", json={"tracks": tracks, "k": 10, "use_ann": i % 2 == 0,
                                                          "context": {"hour": i % 24, "dow": i % 7}})
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    versions.append(response.json()["model_version"])

        driver = threading.Thread(target=drive)
        driver.start()
        try:
            wait_for(lambda: len(versions) > 20, timeout_s=10)
            client_registry.set_registered_model_alias(name, "production", "2")
            moved = time.monotonic()
            switched = wait_for(lambda: versions and versions[-1] == "2", timeout_s=poll_s + 10)
            switch_s = time.monotonic() - moved
            wait_for(lambda: versions.count("2") > 20, timeout_s=10)
        finally:
            stop.set()
            driver.join()
            client_registry.set_registered_model_alias(name, "production", "1")

    assert failures == []
    assert switched, "the new version never served"
    # one poll interval, plus the load of the new version (off the request path)
    assert switch_s < poll_s + 5.0, switch_s
    # versions only move forward: no request answered by the old model after the new one served
    first_new = versions.index("2")
    assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {"2"}


def test_a_slow_first_load_does_not_hold_the_start_back(make_client, fake_registry):
    load = fake_registry.load

    def slow_load(uri):
        time.sleep(0.6)
        return load(uri)

    fake_registry.load = slow_load
    client = make_client(MODEL_STARTUP_WAIT_S=0.1)
    health = client.get("/healthz").json()
    assert health["model_loaded"] is False and "no model loaded yet" in health["reason"]
    assert client.post("/continue", json={"tracks": ["t1"]}).status_code == 503
    assert wait_for(lambda: client.get("/healthz").json()["model_loaded"], timeout_s=5.0)
    assert continue_body(client)["model_version"] == "1"


def metric_value(client, sample: str) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refused_by_mlflow(url="http://127.0.0.1:5999/api/2.0/mlflow/registered-models/alias"):
    """What MLflow raises for a server that is down: its exception, with the network error as context."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise requests.exceptions.ConnectionError(
                "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded (Caused by "
                "NewConnectionError('<HTTPConnection>: Failed to establish a new connection: "
                "[Errno 111] Connection refused'))")
        except requests.exceptions.ConnectionError as exc:
            raise MlflowException(f"API request to {url} failed with exception {exc}")   # noqa: B904 (as MLflow does)
    except MlflowException as wrapped:
        return wrapped


def test_an_unreachable_tracking_store_is_named_in_the_reason(make_client, fake_registry):
    from serving.model_store import display_uri, unreachable_reason

    assert unreachable_reason(refused_by_mlflow()) == "connection refused"
    assert unreachable_reason(ValueError("alias not found")) is None
    assert display_uri("http://user:secret@tracking:5000/x") == "http://tracking:5000/x"

    fake_registry.resolve_error = refused_by_mlflow()
    client = make_client(MLFLOW_TRACKING_URI="http://127.0.0.1:5999")
    readiness = client.get("/readyz")
    assert readiness.status_code == 503
    assert readiness.json()["detail"] == ("not ready: cannot reach the tracking store at http://127.0.0.1:5999 "
                                          "(connection refused) to resolve models:/playlistai@production")
    assert client.get("/healthz").json()["status"] == "unavailable"


def test_without_a_model_the_poller_retries_with_back_off(make_client, fake_registry, monkeypatch, caplog):
    import serving.model_store

    monkeypatch.setattr(serving.model_store, "MISSING_MODEL_FIRST_RETRY_S", 0.05)
    fake_registry.resolve_error = ConnectionError("tracking server unreachable")
    with caplog.at_level("WARNING", logger="serving.model_store"):
        client = make_client(MODEL_POLL_S=0.2)
        assert wait_for(lambda: sum("next try in" in r.getMessage() for r in caplog.records) >= 4, timeout_s=5.0)
    delays = [float(r.getMessage().split("next try in ")[1].split(" s")[0])
              for r in caplog.records if "next try in" in r.getMessage()]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2]         # doubling from 0.05 s, up to the poll interval
    assert "unreachable" in caplog.records[-1].getMessage()
    fake_registry.resolve_error = None
    assert wait_for(lambda: client.get("/readyz").status_code == 200, timeout_s=5.0)


def test_the_poller_does_not_download_a_broken_version_again(make_client, fake_registry):
    client = make_client(ADMIN_TOKEN="t0ken", MODEL_POLL_S=0.05)
    errors_before = metric_value(client, 'errors_total{kind="model_load",route="model_reload"}')
    fake_registry.fail_versions.add("2")
    fake_registry.alias_version = "2"
    assert wait_for(lambda: client.get("/healthz").json()["status"] == "degraded", timeout_s=3.0)
    time.sleep(0.5)                                    # ten more polls
    assert fake_registry.loads.count("models:/playlistai/2") == 1
    assert metric_value(client, 'errors_total{kind="model_load",route="model_reload"}') == errors_before + 1
    health = client.get("/healthz").json()
    assert health["model_version"] == "1" and "model.pt" in health["reason"]

    fake_registry.fail_versions.clear()                # repaired in place: /admin/reload tries it at once
    assert client.post("/admin/reload", headers=ADMIN).json()["outcome"] == "loaded"
    assert fake_registry.loads.count("models:/playlistai/2") == 2


def test_a_load_cut_short_by_the_tracking_store_is_retried_at_the_next_poll(make_client, fake_registry):
    load, attempts = fake_registry.load, []

    def load_while_the_store_is_down(uri):
        if uri.endswith("/2"):
            attempts.append(uri)
            if len(attempts) == 1:
                raise refused_by_mlflow()
        return load(uri)

    fake_registry.load = load_while_the_store_is_down
    client = make_client(MODEL_POLL_S=0.05)
    fake_registry.alias_version = "2"
    assert wait_for(lambda: client.get("/healthz").json()["model_version"] == "2", timeout_s=3.0)
    assert attempts == ["models:/playlistai/2", "models:/playlistai/2"]


def test_each_load_is_timed_in_model_load_seconds(make_client, fake_registry):
    client = make_client(ADMIN_TOKEN="t0ken")
    loads_before = metric_value(client, "model_load_seconds_count")
    fake_registry.alias_version = "2"
    assert client.post("/admin/reload", headers=ADMIN).json()["outcome"] == "loaded"
    assert metric_value(client, "model_load_seconds_count") == loads_before + 1
    assert metric_value(client, "model_load_seconds_sum") > 0


def test_calls_to_the_tracking_store_are_bounded_unless_mlflow_is_configured(make_settings, monkeypatch):
    from serving.model_store import configure_tracking_client

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    settings = make_settings(TRACKING_TIMEOUT_S=4, TRACKING_MAX_RETRIES=0)
    assert configure_tracking_client(settings) == (4.0, 3)        # the operator's MLflow setting wins
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "4"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.mark.integration
def test_the_loader_applies_the_inference_threads_of_the_settings(tiny_registry, make_settings):
    import os

    import torch

    from serving.model_store import default_loader, inference_threads

    assert inference_threads(make_settings(TORCH_THREADS=3)) == 3
    assert inference_threads(make_settings(TORCH_THREADS=0, WEB_CONCURRENCY=64)) == max(1, (os.cpu_count() or 1) // 64)
    name, package = tiny_registry["name"], tiny_registry["packages"]["1"]
    before = torch.get_num_threads()
    try:
        for threads, uri in ((1, f"models:/{name}/1"), (2, str(package)), (1, str(package))):
            default_loader(tiny_registry["tracking_uri"], num_threads=threads)(uri)
            assert torch.get_num_threads() == threads, uri
    finally:
        torch.set_num_threads(before)


@pytest.mark.integration
def test_the_app_serves_with_the_item_table_dtype_of_the_settings(make_registry_client):
    """ITEM_TABLE_DTYPE reaches the loaded Recommender: a bfloat16 table, float32 scores in the answer."""
    import torch

    client = make_registry_client(ITEM_TABLE_DTYPE="bfloat16")
    recommender = client.app.state.service.models.current.recommender
    assert recommender._items.weights.dtype == torch.bfloat16
    response = client.post("/continue", json={"tracks": recommender.vocab.track_ids[:3], "k": 5,
                                              "context": {"hour": 9, "dow": 1}})
    assert response.status_code == 200, response.text
    scores = [item["score"] for item in response.json()["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
