"""The service's smaller edge cases: costly JSON bodies refused before parsing, strict integers
and booleans, no redirect to the Host header, no absolute paths in answers, the in-process cache
bounded by bytes, Redis false alarms, a database tracking store down at start, the frozen heap."""

from __future__ import annotations

import gc
import logging
import time

import pytest
import redis
from fastapi.testclient import TestClient

from reliability.components import free_port
from serving.cache import InProcessTTLCache, ResponseCache, entry_bytes
from serving.schemas import MAX_JSON_TOKENS


def post(client, body: bytes):
    return client.post("/continue", content=body, headers={"content-type": "application/json"})


# -- JSON bodies that would cost seconds to parse -----------------------------------------------------

def test_a_megabyte_of_empty_arrays_is_refused_before_it_is_parsed(client, fake_registry):
    body = b'{"tracks":["t1"],"pad":[' + b",".join([b"[]"] * 349_000) + b"]}"
    assert len(body) > 1_000_000
    started = time.perf_counter()
    response = post(client, body)
    took = time.perf_counter() - started
    assert response.status_code == 413 and "too complex" in response.json()["detail"]
    assert took < 1.0, f"{took:.2f} s"                # seconds before; ~10 ms now, with a TestClient's overhead


def test_a_body_at_the_structure_limit_is_parsed_and_judged_on_its_fields(client):
    at_limit = b'{"tracks":["t1"],"pad":[' + b",".join([b"[]"] * (MAX_JSON_TOKENS // 2 - 16)) + b"]}"
    response = post(client, at_limit)
    assert response.status_code == 422 and response.json()["detail"].startswith("pad: unknown field")


def test_the_structure_limit_never_refuses_a_valid_request(client):
    """The most brackets, commas and colons a valid request can hold: 500 ids of 256 of them each."""
    body = ('{"tracks":[' + ",".join(['"' + "[{,:" * 64 + '"'] * 500) + '],"k":5,"context":{"hour":1,"dow":2},'
            '"use_ann":false,"exclude_seen":true,"max_per_artist":null}').encode()
    assert sum(body.count(b) for b in (b"[", b"{", b",", b":")) > 128_000
    response = post(client, body)
    assert response.status_code == 200, response.text


# -- strict fields ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"tracks": ["t1"], "k": True}, "k"),
    ({"tracks": ["t1"], "k": "5"}, "k"),
    ({"tracks": ["t1"], "k": 5.0}, "k"),
    ({"tracks": ["t1"], "context": {"hour": True}}, "context.hour"),
    ({"tracks": ["t1"], "context": {"dow": "3"}}, "context.dow"),
    ({"tracks": ["t1"], "use_ann": 1}, "use_ann"),
    ({"tracks": ["t1"], "exclude_seen": "false"}, "exclude_seen"),
    ({"tracks": ["t1"], "max_per_artist": False}, "max_per_artist"),
])
def test_booleans_strings_and_floats_are_not_taken_for_integers_or_booleans(client, body, field):
    response = client.post("/continue", json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}:"), response.text


def test_integers_and_booleans_of_the_right_type_pass(client):
    response = client.post("/continue", json={"tracks": ["t1"], "k": 4, "context": {"hour": 0, "dow": 6},
                                              "use_ann": False, "exclude_seen": True, "max_per_artist": 0})
    assert response.status_code == 200 and len(response.json()["items"]) == 4


# -- no redirect to the Host header ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/continue/", "/healthz/", "/readyz/"])
def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(client, path):
    response = client.request("POST" if path.startswith("/continue") else "GET", path,
                              headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    assert "evil.example" not in response.text


# -- no absolute paths in answers --------------------------------------------------------------------

def test_answers_name_a_missing_model_without_its_absolute_path(make_settings, tmp_path):
    from serving.main import create_app

    missing = tmp_path / "models" / "no-such-model"
    settings = make_settings(MODEL_URI=str(missing))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = [client.get("/healthz").json()["reason"], client.get("/readyz").json()["detail"],
                   client.post("/continue", json={"tracks": ["a"]}).json()["detail"]]
    for text in answers:
        assert "no-such-model" in text and str(tmp_path) not in text, text


def test_public_text_shortens_absolute_paths_only():
    from serving.errors import public_text

    text = ("model package file /srv/store/mlartifacts/models/m-1/artifacts/package/model.pt is corrupt; "
            "store http://mlflow:5000/api/2.0/x; models:/playlistai@production; sqlite:////data/x/mlflow.db")
    shown = public_text(text)
    assert ".../package/model.pt" in shown and "/srv/" not in shown and "/data/x/" not in shown.replace(".../x/", "")
    assert "http://mlflow:5000/api/2.0/x" in shown and "models:/playlistai@production" in shown


# -- the in-process cache by bytes -------------------------------------------------------------------

def test_the_in_process_cache_is_bounded_by_bytes():
    value = b"x" * 16_000                                   # a slate of k=500 weighs about this much
    budget = 10 * entry_bytes("key-0000", value)
    cache = InProcessTTLCache(ttl_s=60, max_items=1_000_000, max_bytes=budget)
    for i in range(100):
        cache.set(f"key-{i:04d}", value)
    assert len(cache) == 10 and cache.bytes <= budget
    assert cache.get("key-0099") == value and cache.get("key-0000") is None      # the oldest went first
    cache.set("key-0099", b"small")                                              # replaced: bytes follow
    assert cache.bytes == 9 * entry_bytes("key-0000", value) + entry_bytes("key-0099", b"small")
    cache.set("huge", b"x" * (budget + 1))                                       # larger than the cache
    assert cache.get("huge") is None and cache.bytes <= budget


def test_the_in_process_cache_bytes_drop_with_expired_entries():
    cache = InProcessTTLCache(ttl_s=0.05, max_items=10, max_bytes=10**6)
    cache.set("a", b"x" * 1000)
    time.sleep(0.1)
    assert cache.get("a") is None and cache.bytes == 0 and len(cache) == 0


# -- Redis: a slow call is not an outage ---------------------------------------------------------------

def test_one_timed_out_call_does_not_mark_redis_down(redis_process, caplog):
    import asyncio

    async def scenario():
        cache = ResponseCache(redis_process.url, ttl_s=60, timeout_ms=50, local_max_items=100)
        await cache.start()
        assert cache.connected
        real_get = cache._redis.get
        failures = iter([redis.TimeoutError("Timeout reading from socket")])

        def flaky_get(key):
            error = next(failures, None)
            if error is not None:
                raise error
            return real_get(key)

        cache._redis.get = flaky_get
        assert cache.get("k") is None and cache.backend == "local"      # skips Redis while it checks
        await asyncio.sleep(0.3)
        state = (cache.connected, cache.suspect, cache.false_alarms, cache.backend)
        await cache.close()
        return state

    with caplog.at_level(logging.WARNING, logger="serving.cache"):
        connected, suspect, false_alarms, backend = asyncio.run(scenario())
    assert connected and not suspect and false_alarms == 1 and backend == "redis"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_redis_that_is_gone_is_marked_down_after_one_ping(redis_process, caplog):
    import asyncio

    async def scenario():
        cache = ResponseCache(redis_process.url, ttl_s=60, timeout_ms=50, local_max_items=100)
        await cache.start()
        redis_process.kill()
        cache.set("k", b"v")                         # fails: local, and a PING decides
        await asyncio.sleep(0.5)
        state = (cache.connected, cache.get("k"))
        await cache.close()
        return state

    with caplog.at_level(logging.WARNING, logger="serving.cache"):
        connected, value = asyncio.run(scenario())
    assert not connected and value == b"v"
    assert "caching in-process" in caplog.text


def test_the_redis_timeout_default_is_not_a_few_milliseconds():
    from playlistai.config import Settings

    assert Settings.model_fields["REDIS_TIMEOUT_MS"].default >= 25


# -- a database tracking store down at start ------------------------------------------------------

def test_a_postgresql_store_down_at_start_is_named_and_does_not_hold_the_port(make_settings):
    """MLflow retries a database store for ~100 s; the API tries 1 + TRACKING_MAX_RETRIES times, opens
    at once, and /healthz names the store and why it cannot be reached."""
    from serving.main import create_app

    port = free_port()
    settings = make_settings(MLFLOW_TRACKING_URI=f"postgresql://playlistai:secret@127.0.0.1:{port}/mlflow",
                             REGISTERED_MODEL_NAME="playlistai", MODEL_POLL_S=3600, TRACKING_MAX_RETRIES=1)
    started = time.monotonic()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        took = time.monotonic() - started
        health = client.get("/healthz").json()
    assert took < 8, f"the start took {took:.1f} s"
    reason = health["reason"]
    assert health["status"] == "unavailable"
    assert f"tracking store at postgresql://127.0.0.1:{port}/mlflow" in reason, reason
    assert "connection refused" in reason and "secret" not in reason, reason


def test_the_reason_names_the_store_while_the_first_load_is_still_running(make_client, fake_registry):
    import threading

    release = threading.Event()
    resolve = fake_registry.resolve

    def slow_resolve(name, alias):
        release.wait(10)
        return resolve(name, alias)

    fake_registry.resolve = slow_resolve
    client = make_client(MODEL_STARTUP_WAIT_S=0.1, MLFLOW_TRACKING_URI="http://mlflow.internal:5000")
    try:
        reason = client.get("/healthz").json()["reason"]
        assert "no model loaded yet" in reason and "tracking store at http://mlflow.internal:5000" in reason, reason
    finally:
        release.set()


# -- the heap is frozen after the model loads ----------------------------------------------------------

def test_the_heap_is_frozen_after_a_model_load_when_the_server_asks(make_client):
    from serving.lifecycle import LIFECYCLE

    LIFECYCLE.freeze_gc, LIFECYCLE.heap_frozen = True, 0
    try:
        client = make_client()
        assert client.get("/healthz").json()["model_loaded"]
        assert LIFECYCLE.heap_frozen > 0 and gc.get_freeze_count() >= LIFECYCLE.heap_frozen // 2
    finally:
        LIFECYCLE.freeze_gc, LIFECYCLE.heap_frozen = False, 0
        gc.unfreeze()


def test_thousands_of_unknown_keys_are_one_error_not_thousands(client):
    keys = MAX_JSON_TOKENS // 2 - 16                     # as many as the structure limit lets through
    body = b'{"tracks":["t1"],' + b",".join(b'"k%d":0' % i for i in range(keys)) + b"}"
    started = time.perf_counter()
    response = post(client, body)
    took = time.perf_counter() - started
    assert response.status_code == 422 and len(response.content) < 2000, len(response.content)
    assert response.json()["detail"].startswith(f"body: Value error, {keys + 1} fields")
    assert took < 1.0, f"{took:.2f} s"
    context = client.post("/continue", json={"tracks": ["t1"], "context": {f"x{i}": 1 for i in range(100)}})
    assert context.status_code == 422 and context.json()["detail"].startswith("context: Value error, 100 fields")
    few = client.post("/continue", json={"tracks": ["t1"], "context": {f"x{i}": 1 for i in range(10)}})
    assert few.status_code == 422 and {e["field"] for e in few.json()["errors"]} == {f"context.x{i}" for i in range(10)}


def test_many_bad_fields_list_at_most_twenty(client):
    response = client.post("/continue", json={"tracks": list(range(500))})
    body = response.json()
    assert response.status_code == 422 and len(body["errors"]) == 20 and "and 495 more" in body["detail"]


# -- the shutdown budget of the Kubernetes Deployment --------------------------------------------------

def test_the_kubernetes_grace_period_covers_the_prestop_sleep_the_drain_and_the_grace():
    import math
    from pathlib import Path

    import yaml

    from playlistai.config import Settings

    repo = Path(__file__).resolve().parents[2]
    deployment = next(d for d in yaml.safe_load_all((repo / "deploy/k8s/api.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = Settings.model_fields["SHUTDOWN_DRAIN_S"].default
    grace = Settings.model_fields["SHUTDOWN_GRACE_S"].default
    gunicorn_graceful = math.ceil(drain + grace + 5)            # serving/gunicorn_conf.py
    assert spec["terminationGracePeriodSeconds"] > float(command[1]) + gunicorn_graceful
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
