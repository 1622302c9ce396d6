"""POST /admin/reload is the only call that changes what the service does: it needs the bearer
token, compares it in constant time, is absent (404) where no token is configured, and counts every
refused call."""

from __future__ import annotations

import hmac

import pytest

from serving.metrics import ERRORS_TOTAL

TOKEN = "a-test-admin-token-1"
RELOAD = "/admin/reload"


@pytest.fixture
def admin_client(make_client):
    return make_client(ADMIN_TOKEN=TOKEN)


def assert_refused(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert TOKEN not in response.text            # the expected token is never echoed
    return body


def refused(kind: str) -> float:
    return ERRORS_TOTAL.labels(route=RELOAD, kind=kind)._value.get()


def test_a_missing_token_is_401_with_a_bearer_challenge(admin_client):
    response = admin_client.post(RELOAD)
    assert_refused(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [
    f"Basic {TOKEN}", f"Token {TOKEN}", TOKEN, "Bearer", "Bearer ", "Bearer    ", f"{TOKEN} Bearer", "",
])
def test_a_wrong_scheme_or_an_empty_token_is_401(admin_client, header):
    assert_refused(admin_client.post(RELOAD, headers={"Authorization": header}), 401)


@pytest.mark.parametrize("token", [
    "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN), TOKEN[::-1], "x" * 10_000,
    TOKEN + "\u00e9", f"{TOKEN} {TOKEN}",
])
def test_a_wrong_token_is_403(admin_client, token):
    header = f"Bearer {token}".encode()            # bytes: a non-ASCII token travels as raw UTF-8
    assert_refused(admin_client.post(RELOAD, headers={"Authorization": header}), 403)


def test_the_right_token_reloads(admin_client):
    for scheme in ("Bearer", "bearer"):
        response = admin_client.post(RELOAD, headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "unchanged"


@pytest.mark.parametrize("configured", [None, ""])
def test_without_admin_token_the_endpoint_is_disabled(make_client, configured):
    client = make_client(ADMIN_TOKEN=configured)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        body = assert_refused(client.post(RELOAD, headers=headers), 404)
        assert "ADMIN_TOKEN" in body["detail"]


def test_the_token_is_compared_in_constant_time(admin_client, monkeypatch):
    import serving.api.routes.admin as admin

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    assert_refused(admin_client.post(RELOAD, headers={"Authorization": "Bearer nope"}), 403)
    assert admin_client.post(RELOAD, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert calls == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_refused_calls_are_counted(admin_client):
    before = refused("http_401"), refused("http_403")
    admin_client.post(RELOAD)
    admin_client.post(RELOAD, headers={"Authorization": "Bearer nope"})
    admin_client.post(RELOAD, headers={"Authorization": "Bearer nope"})
    assert (refused("http_401") - before[0], refused("http_403") - before[1]) == (1, 2)


def test_the_admin_route_ignores_a_model_named_in_the_request(admin_client, fake_registry):
    """Reloading follows the configured source only: a URI in the body, the query or a header is ignored."""
    fake_registry.alias_version = "2"
    response = admin_client.post(
        RELOAD + "?model_uri=file:///etc/passwd",
        json={"model_uri": "file:///etc/passwd", "uri": "models:/other@x", "version": "../../1"},
        headers={"Authorization": f"Bearer {TOKEN}", "X-Model-Uri": "runs:/abc/model"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "2"
    assert fake_registry.loads == ["models:/playlistai/1", "models:/playlistai/2"]
