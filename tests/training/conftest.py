"""Fixtures for the training tests: the shared `tiny` splits, loaded once, and small configs."""

from __future__ import annotations

import pytest
import torch

from playlistai.models import ModelConfig
from playlistai.training.loop import TrainConfig
from playlistai.training.worker import load_training_data

SEQ_LEN = 20


@pytest.fixture(scope="session")
def tiny_training_data(tiny_data_dir):
    return load_training_data(tiny_data_dir, SEQ_LEN)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _small_model_config(vocab_size: int, family: str = "sasrec") -> ModelConfig:
    return ModelConfig(family=family, vocab_size=vocab_size, d_model=16, n_layers=1, n_heads=2,
                       dropout=0.1, max_seq_len=SEQ_LEN)


def _small_train_config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=128, lr=3e-3, warmup_steps=5, patience=0, seed=3,
                val_max_cases=300, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def small_model_config():
    """vocab_size, family -> a ModelConfig small enough to train in seconds."""
    return _small_model_config


@pytest.fixture
def small_train_config():
    """**overrides -> a TrainConfig for a few quick epochs on `tiny`."""
    return _small_train_config
