"""Models load only from the configured source. Nothing a client sends (track ids that look like
paths or model URIs, extra fields, query parameters, headers) reaches the model loader: such ids are
unknown tracks, extra body fields are refused (422), query parameters and headers are ignored."""

from __future__ import annotations

import pytest

from serving.schemas import ContinueRequest

PATH_LIKE_IDS = [
    "../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "models:/other@x", "models:/playlistai/2",
    "runs:/0123456789abcdef/model", "s3://bucket/model", "http://127.0.0.1:1/model", "..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "mlflow-artifacts:/0/abc/artifacts/model",
]
EXTRA_FIELDS = {"model_uri": "file:///etc/passwd", "model": "models:/other@x", "MODEL_URI": "runs:/x/model",
                "registered_model_name": "other", "model_alias": "x", "version": "2", "path": "../../etc/passwd"}


def post(client, body, **kwargs):
    response = client.post("/continue", json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_request_schema_has_no_field_that_names_a_model():
    assert set(ContinueRequest.model_fields) == {"tracks", "k", "context", "use_ann", "exclude_seen", "max_per_artist"}
    assert ContinueRequest.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("track_id", PATH_LIKE_IDS)
def test_path_or_uri_track_ids_are_unknown_tracks(client, fake_registry, track_id):
    loads = list(fake_registry.loads)
    body = post(client, {"tracks": [track_id], "k": 5})
    assert body["unknown_tracks"] == [track_id]
    assert body["fallback"] is True and body["model_version"] == "1"
    body = post(client, {"tracks": ["t1", track_id, "t2"], "k": 5})
    assert body["unknown_tracks"] == [track_id] and body["fallback"] is False
    assert fake_registry.loads == loads == ["models:/playlistai/1"]


def refused(client, body) -> set[str]:
    response = client.post("/continue", json=body)
    assert response.status_code == 422, response.text
    return {e["field"] for e in response.json()["errors"]}


def test_extra_fields_naming_a_model_are_refused_query_and_headers_ignored(client, fake_registry):
    plain = post(client, {"tracks": ["t1", "t2"], "k": 5, "context": {"hour": 1, "dow": 1}})
    assert refused(client, {"tracks": ["t1", "t2"], "k": 5, "context": {"hour": 1, "dow": 1, **EXTRA_FIELDS},
                            **EXTRA_FIELDS}) == set(EXTRA_FIELDS) | {f"context.{k}" for k in EXTRA_FIELDS}
    tricked = post(client, {"tracks": ["t1", "t2"], "k": 5, "context": {"hour": 1, "dow": 1}},
                   params={"model_uri": "file:///etc/passwd", "version": "2"},
                   headers={"X-Model-Uri": "models:/other@x", "X-Model-Version": "2"})
    assert tricked["items"] == plain["items"] and tricked["model_version"] == "1"
    assert fake_registry.loads == ["models:/playlistai/1"]


def test_many_such_requests_never_trigger_a_load(client, fake_registry):
    for i, track_id in enumerate(PATH_LIKE_IDS * 5):
        post(client, {"tracks": [track_id, f"t{i}"], "k": 3})
        assert refused(client, {"tracks": [track_id, f"t{i}"], "k": 3, **EXTRA_FIELDS}) == set(EXTRA_FIELDS)
    assert client.get("/healthz").json()["model_version"] == "1"
    assert fake_registry.loads == ["models:/playlistai/1"]


def test_the_served_source_comes_from_settings_only(make_client, fake_registry):
    client = make_client(MODEL_URI="models:/playlistai/2")
    assert refused(client, {"tracks": ["t1"], "model_uri": "models:/playlistai/1"}) == {"model_uri"}
    assert client.get("/healthz").json()["model_uri"] == "models:/playlistai/2"
    assert fake_registry.loads == ["models:/playlistai/2"]
