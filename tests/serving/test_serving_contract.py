"""The HTTP contract of the service (docs/ARCHITECTURE.md, "HTTP API"), against a tiny registered model:
every field, status code and error message."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "s3cret-token"
CAND_TOPK = 200


@pytest.fixture(scope="module")
def api(registry_settings):
    """One app over `serving-tiny@production` for the whole module, with an admin token."""
    from serving.main import create_app

    settings = registry_settings(ADMIN_TOKEN=ADMIN_TOKEN, CAND_TOPK=CAND_TOPK)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def vocab(api):
    return api.app.state.service.models.current.recommender.vocab


def post(api, body, **kwargs):
    return api.post("/continue", json=body, **kwargs)


def assert_error(response, status: int, field: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert field in body["detail"], body
        assert any(e["field"] == field for e in body["errors"]), body
    return body


# -- the answer ------------------------------------------------------------------------------------

def test_continue_answers_with_every_field(api, vocab):
    tracks = vocab.track_ids[:5]
    response = post(api, {"tracks": tracks, "k": 20, "context": {"hour": 21, "dow": 5}, "use_ann": False})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "model_version", "unknown_tracks", "fallback", "cached"}
    assert len(body["items"]) == 20
    for item in body["items"]:
        assert set(item) == {"track_id", "score"}
        assert isinstance(item["track_id"], str) and isinstance(item["score"], float)
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model_version"] == "1"
    assert body["unknown_tracks"] == [] and body["fallback"] is False


def test_slate_has_no_duplicates_and_excludes_the_input(api, vocab):
    tracks = vocab.track_ids[:40]
    for use_ann in (False, True):
        body = post(api, {"tracks": tracks, "k": 100, "context": {"hour": 8, "dow": 0}, "use_ann": use_ann}).json()
        ids = [item["track_id"] for item in body["items"]]
        assert len(ids) == len(set(ids)) == 100
        assert not set(ids) & set(tracks)


def test_exclude_seen_false_may_return_input_tracks(api, vocab):
    tracks = vocab.track_ids[:300]          # most of the tiny catalog: some must come back
    body = post(api, {"tracks": tracks, "k": 100, "exclude_seen": False, "context": {"hour": 1, "dow": 1}}).json()
    ids = [item["track_id"] for item in body["items"]]
    assert len(ids) == len(set(ids))
    assert set(ids) & set(tracks)


def test_max_per_artist_caps_each_artist(api, vocab):
    artist_of = dict(zip(vocab.track_ids, vocab.artist_ids, strict=True))
    body = post(api, {"tracks": vocab.track_ids[:3], "k": 30, "max_per_artist": 1,
                      "context": {"hour": 12, "dow": 2}}).json()
    artists = [artist_of[item["track_id"]] for item in body["items"]]
    assert len(artists) == len(set(artists))


def test_unknown_tracks_are_dropped_and_reported(api, vocab):
    body = post(api, {"tracks": ["no-such-track", vocab.track_ids[0], "another-one"], "k": 5,
                      "context": {"hour": 3, "dow": 3}}).json()
    assert body["unknown_tracks"] == ["no-such-track", "another-one"]
    assert body["fallback"] is False and len(body["items"]) == 5


def test_no_known_track_gets_the_popularity_fallback(api):
    body = post(api, {"tracks": ["nobody-knows-this"], "k": 10, "context": {"hour": 21, "dow": 5}}).json()
    assert body["fallback"] is True
    assert body["unknown_tracks"] == ["nobody-knows-this"]
    assert len(body["items"]) == 10


def test_second_identical_request_is_cached(api, vocab):
    request = {"tracks": vocab.track_ids[7:12], "k": 7, "context": {"hour": 6, "dow": 6}}
    first, second = post(api, request).json(), post(api, request).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["items"] == second["items"] and first["model_version"] == second["model_version"]
    assert post(api, {**request, "k": 8}).json()["cached"] is False            # k is in the key
    assert post(api, {**request, "use_ann": True}).json()["cached"] is False     # and the flags


def test_context_is_optional_and_defaults_to_now(api, vocab):
    for body in ({"tracks": vocab.track_ids[:2]}, {"tracks": vocab.track_ids[:2], "context": {"hour": 5}},
                 {"tracks": vocab.track_ids[:2], "context": {}}):
        response = post(api, body)
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 20          # k defaults to 20


def test_the_most_tracks_and_the_largest_k_are_accepted(api, vocab):
    response = post(api, {"tracks": (vocab.track_ids * 2)[:500], "k": CAND_TOPK})
    assert response.status_code == 200, response.text


# -- bad input: 4xx with a message that names the field --------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({}, "tracks"),
    ({"tracks": []}, "tracks"),
    ({"tracks": ["t"] * 501}, "tracks"),
    ({"tracks": "t000001"}, "tracks"),
    ({"tracks": [1, 2]}, "tracks.0"),
    ({"tracks": [None]}, "tracks.0"),
    ({"tracks": ["x" * 257]}, "tracks.0"),
    ({"tracks": ["a"], "k": 0}, "k"),
    ({"tracks": ["a"], "k": -3}, "k"),
    ({"tracks": ["a"], "k": CAND_TOPK + 1}, "k"),
    ({"tracks": ["a"], "k": 10**30}, "k"),
    ({"tracks": ["a"], "k": "many"}, "k"),
    ({"tracks": ["a"], "k": 2.5}, "k"),
    ({"tracks": ["a"], "context": {"hour": 24, "dow": 1}}, "context.hour"),
    ({"tracks": ["a"], "context": {"hour": -1, "dow": 1}}, "context.hour"),
    ({"tracks": ["a"], "context": {"hour": 1, "dow": 7}}, "context.dow"),
    ({"tracks": ["a"], "context": "evening"}, "context"),
    ({"tracks": ["a"], "use_ann": "perhaps"}, "use_ann"),
    ({"tracks": ["a"], "exclude_seen": [1]}, "exclude_seen"),
    ({"tracks": ["a"], "max_per_artist": -1}, "max_per_artist"),
    ({"tracks": ["a"], "kk": 3}, "kk"),
    ({"tracks": ["a"], "context": {"hour": 1, "minute": 3}}, "context.minute"),
])
def test_invalid_fields_get_422_naming_the_field(api, body, field):
    assert_error(post(api, body), 422, field)


def test_several_bad_fields_are_all_named(api):
    body = assert_error(post(api, {"tracks": [], "k": 0, "context": {"hour": 99}}), 422)
    assert {e["field"] for e in body["errors"]} == {"tracks", "k", "context.hour"}


@pytest.mark.parametrize("content", [b"{not json", b'{"tracks": ["a"]', b"", b"[" * 100_000])
def test_malformed_json_gets_400_or_422(api, content):
    response = api.post("/continue", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [[], "tracks", 42, None, [{"tracks": ["a"]}]])
def test_a_body_that_is_not_an_object_gets_422(api, body):
    assert_error(post(api, body), 422, "body")


def test_a_form_body_gets_422_that_asks_for_json(api):
    body = assert_error(api.post("/continue", data={"tracks": "a"}), 422, "body")
    assert "application/json" in body["detail"]


def test_a_body_over_1_mb_gets_413(api):
    big = b'{"tracks": ["' + b"x" * 1_100_000 + b'"]}'
    response = api.post("/continue", content=big, headers={"content-type": "application/json"})
    body = assert_error(response, 413)
    assert "1048576" in body["detail"]


def test_a_streamed_body_over_1_mb_gets_413(api):
    def chunks():
        yield b'{"tracks": ["'
        for _ in range(20):
            yield b"y" * 100_000
        yield b'"]}'

    response = api.post("/continue", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413)


def test_unknown_routes_and_methods_get_json_errors(api):
    assert_error(api.get("/nope"), 404)
    assert_error(api.get("/continue"), 405)


# -- health, readiness, metrics ----------------------------------------------------------------------

def test_healthz_reports_model_and_cache(api):
    body = api.get("/healthz").json()
    assert body == {
        "status": "ok", "version": body["version"], "model_loaded": True, "cache_connected": False,
        "model_version": "1", "model_alias": "production", "model_uri": "models:/serving-tiny@production",
        "reason": None, "worker": body["worker"],
    }
    assert isinstance(body["worker"], str) and body["worker"] and api.get("/healthz").json()["worker"] == body["worker"]
    assert api.get("/readyz").status_code == 200


def test_metrics_count_requests_and_latency(api, vocab):
    post(api, {"tracks": vocab.track_ids[:3], "k": 3})
    text = api.get("/metrics").text
    assert 'requests_total{method="POST",route="/continue",status="200"}' in text
    assert 'request_duration_ms_bucket{le="5.0",route="/continue",status="200"}' in text
    assert 'requests_total{method="POST",route="/continue",status="422"}' in text
    assert 'model_info{alias="production",version="1"} 1.0' in text
    for name in ("model_forward_ms_bucket", "cache_hits_total", "cache_misses_total", "errors_total",
                 "model_loaded 1.0", "cache_connected 0.0", "unknown_tracks_total", "fallback_total"):
        assert name in text, name


def test_openapi_schema_describes_continue(api):
    schema = api.get("/openapi.json").json()
    operation = schema["paths"]["/continue"]["post"]
    assert {"200", "400", "413", "422", "503"} <= set(operation["responses"])


# -- admin ---------------------------------------------------------------------------------------------

def test_admin_reload_requires_the_bearer_token(api):
    assert_error(api.post("/admin/reload"), 401)
    assert api.post("/admin/reload").headers["www-authenticate"] == "Bearer"
    assert_error(api.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 403)
    assert_error(api.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}), 401)
    assert_error(api.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}), 403)
    response = api.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    assert response.json() == {"outcome": "unchanged", "model_version": "1", "previous_version": "1", "error": None}


def test_admin_reload_is_disabled_without_a_token(make_client):
    client = make_client(ADMIN_TOKEN=None)
    body = assert_error(client.post("/admin/reload", headers={"Authorization": "Bearer anything"}), 404)
    assert "ADMIN_TOKEN" in body["detail"]


# -- no model --------------------------------------------------------------------------------------

def test_without_a_model_the_service_stays_up_and_says_why(make_settings, tmp_path):
    from serving.main import create_app

    settings = make_settings(MODEL_URI=str(tmp_path / "no-such-model"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["model_loaded"] is False and body["status"] == "unavailable"
        assert body["model_version"] is None
        assert "no-such-model" in body["reason"]
        body = assert_error(client.post("/continue", json={"tracks": ["a"], "k": 3}), 503)
        assert "no model" in body["detail"] and "no-such-model" in body["detail"]
        assert_error(client.get("/readyz"), 503)
        assert "model_loaded 0.0" in client.get("/metrics").text


def test_a_malformed_model_reference_keeps_the_service_up_and_is_named(make_settings):
    from serving.main import create_app

    settings = make_settings(MODEL_URI="models:/playlistai@")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = client.get("/healthz").json()
        assert body["model_loaded"] is False and body["status"] == "unavailable"
        assert body["model_uri"] == "models:/playlistai@"
        assert "names no alias" in body["reason"]
        assert_error(client.get("/readyz"), 503)


def test_a_local_package_folder_can_be_served(make_settings, tiny_registry):
    from serving.main import create_app

    settings = make_settings(MODEL_URI=str(tiny_registry["packages"]["2"]))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/healthz").json()
        assert health["model_loaded"] is True and health["model_version"] is None
        body = client.post("/continue", json={"tracks": ["nobody"], "k": 4}).json()
        assert body["model_version"] is None and len(body["items"]) == 4
