"""Limits that protect the service's memory: the body size, the history length, the track id
length and k <= CAND_TOPK at the API; and in the recommender, memory that does not grow with what
a request asks for beyond the model's own window, nor with the number of rows a pyfunc predict
scores (at most BATCH_ROWS x catalog scores at a time)."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from playlistai.inference.recommender import BATCH_ROWS
from serving.metrics import ERRORS_TOTAL, REQUESTS_TOTAL
from serving.schemas import MAX_TRACK_ID_CHARS, MAX_TRACKS

LIMIT = 4096
TOPK = 50


@pytest.fixture
def limited(make_client, fake_registry):
    """An app with a 4 KiB body limit and CAND_TOPK=50 whose model records every call's k and history."""
    client = make_client(MAX_REQUEST_BYTES=LIMIT, CAND_TOPK=TOPK)
    model = fake_registry.models["1"]
    calls = []
    recommend = model.recommend

    def recording(tracks, k, *args, **kwargs):
        calls.append((len(tracks), k))
        return recommend(tracks, k, *args, **kwargs)

    model.recommend = recording
    return client, calls


def post(client, body: bytes, **headers):
    return client.post("/continue", content=body, headers={"content-type": "application/json", **headers})


def assert_error(response, status: int, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    if field:
        assert detail.startswith(f"{field}:"), detail
    return detail


# -- the API ----------------------------------------------------------------------------------------

def padded(total: int) -> bytes:
    """A valid request of exactly `total` bytes: JSON whitespace pads it (unknown fields are refused)."""
    head = b'{"tracks":["t1"]'
    return head + b" " * (total - len(head) - 1) + b"}"


def test_a_body_over_the_limit_is_refused_before_it_is_read(limited):
    client, calls = limited
    counted = ERRORS_TOTAL.labels(route="/continue", kind="http_413")._value.get()
    requests = REQUESTS_TOTAL.labels("/continue", "POST", "413")._value.get()
    assert post(client, padded(LIMIT)).status_code == 200
    detail = assert_error(post(client, padded(LIMIT + 1)), 413)
    assert str(LIMIT) in detail and len(calls) == 1
    # counted under its route, like the errors the handlers answer
    assert ERRORS_TOTAL.labels(route="/continue", kind="http_413")._value.get() == counted + 1
    assert REQUESTS_TOTAL.labels("/continue", "POST", "413")._value.get() == requests + 1


def test_a_streamed_body_is_cut_at_the_limit(limited):
    client, calls = limited

    def chunks():
        yield b'{"tracks":["t1"],"pad":"'
        for _ in range(1000):                     # 1 MB offered, refused after the first 4 KiB
            yield b"y" * 1000
        yield b'"}'

    assert_error(post(client, chunks()), 413)
    assert calls == []


def test_the_history_is_at_most_max_tracks(limited):
    client, calls = limited
    ok = client.post("/continue", json={"tracks": ["t1"] * MAX_TRACKS, "k": 5})
    assert ok.status_code == 200, ok.text
    assert_error(client.post("/continue", json={"tracks": ["t1"] * (MAX_TRACKS + 1), "k": 5}), 422, "tracks")
    assert max(n for n, _ in calls) == MAX_TRACKS


def test_a_track_id_is_at_most_max_track_id_chars(limited):
    client, calls = limited
    ok = client.post("/continue", json={"tracks": ["x" * MAX_TRACK_ID_CHARS], "k": 5})
    assert ok.status_code == 200, ok.text
    assert_error(client.post("/continue", json={"tracks": ["x" * (MAX_TRACK_ID_CHARS + 1)]}), 422, "tracks.0")
    assert len(calls) == 1


@pytest.mark.parametrize("k", [TOPK + 1, 100_000, 100_001, 10**12, 2**63, -1, 0])
def test_k_above_cand_topk_never_reaches_the_model(limited, k):
    client, calls = limited
    assert_error(client.post("/continue", json={"tracks": ["t1"], "k": k}), 422, "k")
    assert client.post("/continue", json={"tracks": ["t1"], "k": TOPK}).status_code == 200
    assert calls == [(1, TOPK)]


# -- the recommender: memory per request and per predict ------------------------------------------

class TensorAllocations(TorchFunctionMode):
    """Every tensor a torch call creates (not a view of its inputs): the largest, in bytes, and the
    most catalog-wide rows any of them holds (a tensor with a dimension of the catalog's size)."""

    def __init__(self, catalog: int) -> None:
        super().__init__()
        self.catalog = catalog
        self.largest_bytes = 0
        self.catalog_rows = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.largest_bytes = max(self.largest_bytes, tensor.untyped_storage().nbytes())
                if self.catalog in tensor.shape:
                    self.catalog_rows = max(self.catalog_rows, tensor.numel() // self.catalog)
        return out


def allocations(recommender, call) -> tuple[int, int, int]:
    """(largest tensor bytes, most catalog rows in one tensor, tracemalloc peak bytes) of `call()`."""
    probe = TensorAllocations(recommender.vocab.size)
    tracemalloc.start()
    try:
        with probe:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return probe.largest_bytes, probe.catalog_rows, peak


@pytest.mark.parametrize("use_ann", [False, True])
def test_one_request_costs_no_more_than_the_model_window(security_recommender, use_ann):
    """The longest history and the largest k allocate what a history of the model's window and k=1
    do: the history is cut to max_seq_len, the scores are one catalog-sized row."""
    rec = security_recommender
    ids = rec.vocab.track_ids
    window = ids[: rec.max_seq_len]
    longest = (ids * (MAX_TRACKS // len(ids) + 1))[:MAX_TRACKS]
    largest_k = 500                       # CAND_TOPK's default; ANN asks FAISS for that many either way

    def ask(tracks, k):
        return lambda: rec.recommend(tracks, k, 21, 4, use_ann=use_ann, ann_candidates=largest_k)

    ask(window, 1)()                                          # lazily built state is not counted
    base_bytes, base_rows, base_peak = allocations(rec, ask(window, 1))
    big_bytes, big_rows, big_peak = allocations(rec, ask(longest, largest_k))
    assert big_rows <= 1, "one request scored more than one catalog row"
    assert big_bytes <= 1.5 * base_bytes, (big_bytes, base_bytes)
    assert big_peak <= 2 * base_peak + 64 * rec.vocab.size * 4, (big_peak, base_peak)


def test_pyfunc_predict_scores_many_rows_in_bounded_chunks(security_package, security_recommender):
    from playlistai.registry.pyfunc import PlaylistAIModel

    model = PlaylistAIModel()
    model.load_context(SimpleNamespace(artifacts={"package": str(security_package)}))
    ids = security_recommender.vocab.track_ids

    def frame(rows: int) -> pd.DataFrame:
        return pd.DataFrame({"tracks": [ids[i % 100: i % 100 + 10] for i in range(rows)], "k": [20] * rows,
                             "hour": [i % 24 for i in range(rows)], "dow": [i % 7 for i in range(rows)]})

    assert 1 <= BATCH_ROWS <= 256, "a chunk of scores must stay small"
    one_chunk, many = frame(BATCH_ROWS), frame(1280)
    chunk_bytes, chunk_rows, _ = allocations(security_recommender, lambda: model.predict(None, one_chunk))
    many_bytes, many_rows, _ = allocations(security_recommender, lambda: model.predict(None, many))
    assert many_rows <= BATCH_ROWS, f"{many_rows} catalog rows scored at once for {len(many)} requests"
    assert many_bytes <= chunk_bytes, (many_bytes, chunk_bytes)
    out = model.predict(None, many)
    assert len(out) == len(many) and all(len(ids_) == 20 for ids_ in out["track_ids"])


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"tracks": ["t1"], "k": ' + b"9" * 5000 + b"}", "a number in it has too many digits"),
    (b'{"tracks": ["caf\xe9"]}', "it is not UTF-8 text"),
    (b'{"tracks": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "it is nested too deeply"),
])
def test_a_body_that_cannot_be_parsed_is_a_400_that_says_why(client, body, reason):
    assert assert_error(post(client, body), 400) == f"malformed JSON body: {reason}"
