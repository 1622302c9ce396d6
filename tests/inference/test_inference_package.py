"""Loading a model package: every file is verified, and a bad one is named in the error."""

from __future__ import annotations

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
