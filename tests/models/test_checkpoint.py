"""save_checkpoint / load_checkpoint: round trip and readable failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from playlistai.data.vocab import Vocabulary
from playlistai.models import ModelConfig, build_model
from playlistai.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _vocab(n=9) -> Vocabulary:
    return Vocabulary([f"t{i}" for i in range(n)], [f"a{i % 3}" for i in range(n)], [None] * n, np.arange(n, 0, -1))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru4rec", vocab_size=10, d_model=8, n_layers=1)).eval()
    save_checkpoint(tmp_path / "ckpt", model, _vocab(), extra={"best_epoch": 3})
    return tmp_path / "ckpt", model


def test_round_trip_gives_the_same_scores(saved):
    directory, model = saved
    loaded, vocab, config = load_checkpoint(directory)
    assert not loaded.training
    assert vocab.track_ids == _vocab().track_ids
    assert config["best_epoch"] == 3 and config["model_config"]["family"] == "gru4rec"
    hist = torch.tensor([[0, 1, 2, 3]])
    h, d = torch.tensor([5]), torch.tensor([2])
    torch.testing.assert_close(loaded.score_batch(hist, h, d), model.score_batch(hist, h, d))


@pytest.mark.parametrize("name", ["model.pt", "config.json", "vocab.json"])
def test_missing_file_is_named(saved, name):
    directory, _ = saved
    (directory / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing {name}"):
        load_checkpoint(directory)


@pytest.mark.parametrize("name, content", [("model.pt", b"not a torch file"), ("config.json", b"{"),
                                           ("vocab.json", b"[1, 2")])
def test_corrupt_file_is_named(saved, name, content):
    directory, _ = saved
    (directory / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(directory)


def test_vocabulary_must_match_the_model(saved, tmp_path):
    directory, model = saved
    with pytest.raises(ValueError, match="vocabulary has 6 rows"):
        save_checkpoint(tmp_path / "other", model, _vocab(5))
    config = json.loads((directory / "config.json").read_text())
    config["model_config"]["vocab_size"] = 11
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vocab_size=11"):
        load_checkpoint(directory)


def _with_neighbours(model):
    from playlistai.models.neighbours import SessionNeighbours

    sessions = [np.array([1, 2, 3]), np.array([2, 4]), np.array([3, 5, 6, 1]), np.array([7, 8, 9])]
    model.neighbours = SessionNeighbours.fit(sessions, model.config.vocab_size, k=2)
    model.neighbour_weight.fill_(1.5)
    return model


def test_a_model_with_neighbours_round_trips_with_the_same_scores(tmp_path):
    torch.manual_seed(0)
    model = _with_neighbours(build_model(ModelConfig(family="sasrec", vocab_size=10, d_model=8, n_layers=1,
                                                     max_seq_len=4)).eval())
    hist, h, d = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 7]]), torch.tensor([5, 1]), torch.tensor([2, 0])
    mixed = model.score_batch(hist, h, d)
    plain = model.score_batch(hist, h, d, with_score_terms=False)
    assert not torch.equal(mixed, plain)                       # the votes move some scores
    save_checkpoint(tmp_path / "ckpt", model, _vocab())
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.mixes_neighbours and float(loaded.neighbour_weight) == 1.5
    torch.testing.assert_close(loaded.score_batch(hist, h, d), mixed)
    # saved again without neighbours, the stale file goes: the checkpoint scores as it says
    loaded.neighbours = None
    save_checkpoint(tmp_path / "ckpt", loaded, _vocab())
    assert not (tmp_path / "ckpt" / "neighbours.npz").exists()


def test_a_corrupt_neighbours_file_is_named(saved):
    directory, model = saved
    (directory / "neighbours.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"neighbours\.npz"):
        load_checkpoint(directory)
