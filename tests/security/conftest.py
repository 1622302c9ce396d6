"""Fixtures of the security tests.

The apps over the fake registry come from tests/serving/conftest.py (conftest fixtures are seen only
below their own folder, so the function-scoped ones are imported here). The session-scoped registry
of tests/serving is not: imported here it would be a second fixture registering the same model
names in the session's one MLflow store. A real tiny package is built here instead.
"""

from __future__ import annotations

import pytest

from tests.serving.conftest import client, fake_registry, make_client  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def security_package(tiny_data_dir, tmp_path_factory):
    """A real model package of the tiny dataset: untrained SASRec, d_model 32, with its FAISS index."""
    import torch

    from playlistai.data.sequences import load_vocab
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.checkpoint import save_checkpoint
    from playlistai.registry.packaging import build_package

    torch.manual_seed(0)
    vocab = load_vocab(tiny_data_dir)
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=32, n_layers=1, max_seq_len=20))
    root = tmp_path_factory.mktemp("security_package")
    checkpoint = save_checkpoint(root / "checkpoint", model, vocab)
    build_package(checkpoint, tiny_data_dir, root / "package")
    return root / "package"


@pytest.fixture(scope="session")
def security_recommender(security_package):
    from playlistai.inference import Recommender

    return Recommender.from_directory(security_package)
