"""The drift-feature schema: one declaration that the API's rows, the package reference and the drift
job share, and packages written under the earlier feature names still load."""

from __future__ import annotations

import json

import numpy as np

from playlistai.data.vocab import Vocabulary
from playlistai.inference.features import (
    BIN_EDGES,
    CATEGORICAL,
    CONTINUOUS,
    DRIFT_FEATURE_NAMES,
    DRIFT_FEATURES,
    FEATURES,
    load_reference,
    request_features,
)


def test_schema_kinds_bins_and_names():
    assert DRIFT_FEATURE_NAMES == ("history_len", "unknown_share", "mean_pop_pct", "top_score", "hour", "dow")
    assert set(CONTINUOUS) | set(CATEGORICAL) == set(DRIFT_FEATURE_NAMES)
    assert not set(CONTINUOUS) & set(CATEGORICAL)
    assert CATEGORICAL == {"hour": 24, "dow": 7}
    assert "top_score" not in FEATURES and set(FEATURES) == set(BIN_EDGES)
    for feature in DRIFT_FEATURES:
        if feature.in_reference:
            assert list(feature.bins) == sorted(feature.bins) and len(feature.bins) >= 2, feature.name
        if feature.kind == "categorical":
            assert list(feature.bins) == list(range(feature.categories + 1)), feature.name


def test_drift_modules_read_the_schema():
    import monitoring.drift as drift
    import monitoring.drift_job as drift_job
    import serving.traffic as traffic

    assert drift.CONTINUOUS is CONTINUOUS and drift.CATEGORICAL is CATEGORICAL
    assert drift_job.DRIFT_STATE_FIELD == traffic.DRIFT_STATE_FIELD == "json"


def test_request_features_without_and_with_a_vocabulary():
    assert request_features(["a", "b"], 21, 5) == {"history_len": 2, "hour": 21, "dow": 5}
    assert request_features([], 0, 0, top_score=float("nan")) == {"history_len": 0, "hour": 0, "dow": 0}
    assert request_features(["a"], 1, 2, top_score=3) == {"history_len": 1, "hour": 1, "dow": 2, "top_score": 3.0}

    vocab = Vocabulary(track_ids=["t1", "t2", "t3"], artist_ids=[None] * 3, genres=[None] * 3, counts=[5, 3, 1])
    pct = vocab.popularity_percentile()
    row = request_features(["t1", "zzz"], 8, 0, 0.5, vocab, pct)
    assert set(row) <= set(DRIFT_FEATURE_NAMES)
    assert row["unknown_share"] == 0.5 and 0 < row["mean_pop_pct"] <= 1 and row["top_score"] == 0.5
    assert "mean_pop_pct" not in request_features(["zzz"], 8, 0, None, vocab, pct)     # no known track


def test_a_reference_written_under_the_earlier_names_loads_under_the_schema_names(tmp_path):
    n = 50
    rng = np.random.default_rng(0)
    earlier = {"history_length": rng.integers(1, 20, n).astype(float), "hour": rng.integers(0, 24, n).astype(float),
               "dow": rng.integers(0, 7, n).astype(float), "unknown_share": rng.random(n),
               "mean_popularity_percentile": rng.random(n)}
    stats_path, sample_path = tmp_path / "drift_reference.json", tmp_path / "drift_reference.npz"
    stats_path.write_text(json.dumps({"n_cases": n}))
    with open(sample_path, "wb") as f:
        np.savez_compressed(f, **earlier)
    stats, sample = load_reference(stats_path, sample_path)
    assert stats["n_cases"] == n
    assert list(sample.columns) == list(FEATURES)
    np.testing.assert_array_equal(sample["history_len"], earlier["history_length"])
    np.testing.assert_array_equal(sample["mean_pop_pct"], earlier["mean_popularity_percentile"])
