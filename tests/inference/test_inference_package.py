"""Loading a model package: every file is verified, and a bad one is named in the error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from playlistai.inference import ModelPackageError, Recommender
from playlistai.inference.popularity import ContextPopularity


@pytest.fixture
def package_copy(tiny_package, tmp_path):
    dst = tmp_path / "package"
    shutil.copytree(tiny_package, dst)
    return dst


@pytest.mark.parametrize(
    "name, words",
    [("ann.faiss", "FAISS index"), ("model.pt", "model weights"), ("vocab.json", "vocabulary"),
     ("popularity.npz", "popularity"), ("drift_reference.json", "drift")],
)
def test_inference_missing_file_is_named(package_copy, name, words):
    (package_copy / name).unlink()
    with pytest.raises(ModelPackageError, match=f"missing {name}.*{words}"):
        Recommender.from_directory(package_copy)


@pytest.mark.parametrize("name", ["model.pt", "ann.faiss", "config.json"])
def test_inference_corrupt_file_is_named(package_copy, name):
    with open(package_copy / name, "r+b") as f:
        f.seek(10)
        f.write(b"\x00garbage\x00")
    with pytest.raises(ModelPackageError, match=f"{name}.*corrupt"):
        Recommender.from_directory(package_copy)


def test_inference_not_a_package(tmp_path):
    with pytest.raises(ModelPackageError, match="manifest.json"):
        Recommender.from_directory(tmp_path)
    with pytest.raises(ModelPackageError, match="does not exist"):
        Recommender.from_directory(tmp_path / "nowhere")


def test_inference_popularity_table_is_a_distribution_per_hour(tiny_package):
    table = ContextPopularity.load(tiny_package / "popularity.npz").probabilities()
    assert table.shape[0] == 24
    assert np.allclose(table.sum(axis=1), 1.0)
    assert (table[:, 0] == 0).all()


def test_the_index_is_tuned_on_the_most_recent_validation_sessions(tiny_checkpoint, tiny_data_dir, monkeypatch):
    from playlistai.data.sequences import encode_sessions, load_split, next_track_cases
    from playlistai.models.checkpoint import load_checkpoint
    from playlistai.registry import packaging

    model, vocab, _ = load_checkpoint(tiny_checkpoint)
    sessions = encode_sessions(load_split(tiny_data_dir, "val"), vocab)
    every_case = next_track_cases(sessions, model.config.max_seq_len)
    monkeypatch.setattr(packaging, "TUNING_SESSIONS", 7)
    queries = packaging.tuning_queries(model, vocab, tiny_data_dir, max_queries=len(every_case))
    last_sessions = every_case.session_index >= len(sessions.items) - 7
    assert 0 < len(queries) == int(last_sessions.sum()) < len(every_case)


def test_the_training_split_streamed_gives_the_popularity_and_drift_reference_of_the_whole(
        tiny_checkpoint, tiny_data_dir, tmp_path, monkeypatch):
    """Packaging reads the training split in frames of whole sessions; what it writes is what the
    whole split in one frame gives."""
    from playlistai.data.sequences import load_split, load_vocab
    from playlistai.inference.features import reference_statistics, training_case_features
    from playlistai.registry import packaging

    monkeypatch.setattr(packaging, "TRAIN_BATCH_ROWS", 500)          # tiny's split in about twenty frames
    packaging.build_package(tiny_checkpoint, tiny_data_dir, tmp_path)
    train, vocab = load_split(tiny_data_dir, "train"), load_vocab(tiny_data_dir)
    whole = ContextPopularity.from_events(train, vocab)
    streamed = ContextPopularity.load(tmp_path / "popularity.npz")
    assert np.array_equal(streamed.hour_counts, whole.hour_counts) and streamed.hour_counts.sum() > 0
    stats, sample = reference_statistics(training_case_features(train, vocab))
    assert json.loads((tmp_path / "drift_reference.json").read_text()) == json.loads(json.dumps(stats))
    with np.load(tmp_path / "drift_reference.npz") as saved:
        assert set(saved.files) == set(sample)
        assert all(np.array_equal(saved[name], sample[name], equal_nan=True) for name in sample)
