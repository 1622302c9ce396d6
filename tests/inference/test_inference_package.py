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
