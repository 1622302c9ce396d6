"""Fixtures of the inference tests: a model package built from the tiny dataset.

The model is untrained (random embeddings): every property tested here (filters, fallback,
ANN/exact agreement, loading) holds for any weights, and random embeddings are the harder case
for an ANN index because they have no cluster structure.
"""

from __future__ import annotations

import pytest
import torch

from playlistai.data.sequences import load_vocab


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data_dir, tmp_path_factory):
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    vocab = load_vocab(tiny_data_dir)
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=32, n_layers=1, max_seq_len=20))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model, vocab)


@pytest.fixture(scope="session")
def tiny_package(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    from playlistai.registry.packaging import build_package

    out = tmp_path_factory.mktemp("package")
    build_package(tiny_checkpoint, tiny_data_dir, out)
    return out
