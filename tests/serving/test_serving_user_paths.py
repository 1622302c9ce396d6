"""What a new user meets first: `GET /`, a misspelt field, `max_per_artist=0` (the pyfunc's "no cap")."""

from __future__ import annotations

from collections import Counter

from fastapi.testclient import TestClient

BODY = {"tracks": ["t1", "t2"], "k": 30, "context": {"hour": 21, "dow": 5}}


def artists_of(client: TestClient, body: dict) -> Counter:
    response = client.post("/continue", json=body)
    assert response.status_code == 200, response.text
    recommender = client.app.state.service.models.current.recommender
    artist = dict(zip(recommender.vocab.track_ids, recommender.vocab.artist_ids, strict=True))
    return Counter(artist[item["track_id"]] for item in response.json()["items"])


def test_root_points_to_the_docs(client):
    response = client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["docs"] == "/docs" and body["openapi"] == "/openapi.json"
    assert "POST /continue" in body["endpoints"]
    assert client.get(body["docs"]).status_code == 200


def test_an_unknown_field_is_refused_with_422_naming_it(client):
    response = client.post("/continue", json={"tracks": ["t1"], "kk": 3})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "kk: unknown field (the fields are listed at /docs)"
    assert body["errors"] == [{"field": "kk", "message": "unknown field (the fields are listed at /docs)"}]
    response = client.post("/continue", json={**BODY, "context": {"hour": 1, "dow": 2, "minute": 5}})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "context.minute"
    assert client.post("/continue", json=BODY).status_code == 200


def test_max_per_artist_zero_and_null_mean_no_cap(client):
    uncapped = artists_of(client, BODY)
    assert max(uncapped.values()) > 1, "the fake catalog repeats artists within 30 tracks"
    assert artists_of(client, {**BODY, "max_per_artist": 0}) == uncapped
    assert artists_of(client, {**BODY, "max_per_artist": None}) == uncapped
    capped = artists_of(client, {**BODY, "max_per_artist": 1})
    assert max(capped.values()) == 1 and sum(capped.values()) == 30
    response = client.post("/continue", json={**BODY, "max_per_artist": -1})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "max_per_artist"
