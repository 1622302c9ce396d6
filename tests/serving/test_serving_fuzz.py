"""Property-based fuzzing of POST /continue: thousands of generated bodies, never a 5xx.

Bodies are drawn three ways: nearly valid requests with each field replaced by anything JSON can
hold (huge and negative numbers, NaN/Infinity, unicode, nesting), arbitrary JSON documents, and raw
bytes; sent with and without a JSON content type. Every answer is < 500; every 4xx carries a
`detail` message; every 200 keeps the slate's invariants.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAKE_EXAMPLES = 2000
REAL_EXAMPLES = 400

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-3, max_value=600)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)

known_ids = st.sampled_from(["t1", "t2", "t3", "t000001", "t000002", "t000010", "unknown", ""])
track_ids = known_ids | st.text(max_size=20) | st.text(min_size=250, max_size=260)
plausible = {
    "tracks": st.lists(track_ids, max_size=30) | st.tuples(known_ids, st.integers(495, 505)).map(lambda t: [t[0]] * t[1]) | any_json,
    "k": st.integers(min_value=-5, max_value=600) | any_json,
    "context": st.fixed_dictionaries({}, optional={"hour": st.integers(-2, 30) | any_json,
                                                   "dow": st.integers(-2, 9) | any_json}) | any_json,
    "use_ann": st.booleans() | any_json,
    "exclude_seen": st.booleans() | any_json,
    "max_per_artist": st.none() | st.integers(-2, 50) | any_json,
}
nearly_valid = st.fixed_dictionaries({"tracks": plausible["tracks"]},
                                     optional={k: v for k, v in plausible.items() if k != "tracks"})
bodies = (
    nearly_valid.map(lambda d: json.dumps(d).encode())
    | any_json.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", None])


def check_answer(response, body: bytes) -> None:
    assert response.status_code < 500, (response.status_code, response.text, body[:300])
    payload = response.json()
    if response.status_code >= 400:
        assert isinstance(payload["detail"], str) and payload["detail"], payload
        return
    assert response.status_code == 200
    request = json.loads(body)
    ids = [item["track_id"] for item in payload["items"]]
    assert len(ids) == len(set(ids))
    assert len(ids) <= request.get("k", 20)
    if request.get("exclude_seen", True):
        assert not set(ids) & set(request["tracks"])
    if payload["fallback"]:
        assert payload["unknown_tracks"]


def fuzz(client: TestClient, max_examples: int):
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, content_type=content_types)
    def run(body, content_type):
        headers = {"content-type": content_type} if content_type else {}
        check_answer(client.post("/continue", content=body, headers=headers), body)

    run()


def test_fuzz_continue_on_a_fast_model(make_client):
    fuzz(make_client(CAND_TOPK=500), FAKE_EXAMPLES)


@pytest.mark.integration
def test_fuzz_continue_on_the_registered_model(make_registry_client):
    fuzz(make_registry_client(CAND_TOPK=500), REAL_EXAMPLES)
