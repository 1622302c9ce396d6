"""mix_neighbours: fitted on validation after training, kept only when it gains, and the checkpoint
it rewrites scores as the fit said."""

from __future__ import annotations

import pytest
import torch

from playlistai.data.sequences import encode_sessions, load_split, load_vocab, next_track_cases
from playlistai.evaluation.evaluator import evaluate_next_track
from playlistai.models import ModelConfig, build_model
from playlistai.models.checkpoint import load_checkpoint, save_checkpoint
from playlistai.training.neighbour_mix import mix_neighbours


@pytest.fixture
def untrained(tiny_data_dir, tmp_path):
    torch.manual_seed(0)
    vocab = load_vocab(tiny_data_dir)
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=16, n_layers=1, max_seq_len=20))
    return save_checkpoint(tmp_path / "ckpt", model, vocab, extra={"best_epoch": 1})


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_an_untrained_model_gains_from_its_neighbours_and_the_checkpoint_says_so(untrained, tiny_data_dir,
                                                                                  exclude_seen):
    mix = mix_neighbours(untrained, tiny_data_dir, exclude_seen=exclude_seen)
    # random embeddings know nothing; the training sessions do
    assert mix.kept and mix.weight > 0
    assert mix.after["ndcg_at_10"] > mix.before["ndcg_at_10"] + 0.05
    model, _, config = load_checkpoint(untrained)
    assert model.mixes_neighbours and config["best_epoch"] == 1
    assert float(model.neighbour_weight) == pytest.approx(mix.weight)
    # a plain evaluation of the rewritten checkpoint on the same cases gives the fitted metrics
    vocab = load_vocab(tiny_data_dir)
    cases = next_track_cases(encode_sessions(load_split(tiny_data_dir, "val"), vocab), 20)
    assert mix.cases == len(cases)
    plain = evaluate_next_track(model, cases, ks=(10, 20), exclude_seen=exclude_seen)
    for key in ("recall_at_20", "ndcg_at_10", "mrr_at_20"):
        assert plain[key] == pytest.approx(mix.after[key], abs=1e-9)
    assert mix.metrics()["neighbour_weight"] == mix.weight


def test_a_mix_without_gain_is_not_kept(untrained, tiny_data_dir, monkeypatch):
    import playlistai.training.neighbour_mix as module

    monkeypatch.setattr(module, "WEIGHT_MULTIPLES", (0.0,))     # nothing but "no mix" to choose from
    before = (untrained / "model.pt").read_bytes()
    mix = mix_neighbours(untrained, tiny_data_dir, exclude_seen=False)
    assert not mix.kept and mix.metrics()["neighbour_weight"] == 0.0 and mix.after == mix.before
    assert (untrained / "model.pt").read_bytes() == before and not (untrained / "neighbours.npz").exists()
