"""The repeat bonus: ranks from the kept evidence match a full re-scoring, validation fits it,
scoring and old checkpoints honour it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from playlistai.data.sequences import NextTrackCases
from playlistai.evaluation import metrics as M
from playlistai.evaluation.evaluator import evaluate_next_track, pessimistic_ranks
from playlistai.models import ModelConfig, build_model
from playlistai.models.base import add_repeat_bonus
from playlistai.training.loop import TrainConfig, validate
from playlistai.training.repeat_bonus import collect_evidence

V, L = 300, 8


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(family="sasrec", vocab_size=V, d_model=16, n_layers=1, n_heads=2,
                                    dropout=0.0, max_seq_len=L))
    return model.eval()


def _cases(n: int, repeat_share: float, seed: int = 1) -> NextTrackCases:
    """Random left-padded histories; `repeat_share` of the targets are drawn from their history."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, 40, size=(n, L))             # a small pool: histories hold repeats too
    lengths = rng.integers(1, L + 1, size=n)
    for i, length in enumerate(lengths):
        hist[i, : L - length] = 0
    targets = rng.integers(1, V, size=n)
    repeat = rng.random(n) < repeat_share
    for i in np.flatnonzero(repeat):
        targets[i] = rng.choice(hist[i][hist[i] != 0])
    zeros = np.zeros(n, dtype=np.int64)
    return NextTrackCases(hist.astype(np.int64), rng.integers(0, 24, n), rng.integers(0, 7, n), targets,
                          np.arange(n), zeros, lengths)


def _brute_force_ranks(model, cases, bonus, max_k):
    with torch.no_grad():
        scores = model.score_batch(torch.as_tensor(cases.histories), torch.as_tensor(cases.hours),
                                   torch.as_tensor(cases.dows), with_repeat_bonus=False)
        add_repeat_bonus(scores, torch.as_tensor(cases.histories), bonus)
        scores[:, 0] = float("-inf")
        ranks = pessimistic_ranks(scores, torch.as_tensor(cases.targets)).numpy()
    ranks[ranks > max_k] = M.UNREACHABLE
    return ranks


@pytest.mark.parametrize("max_k", [5, 20, V])   # V: the kept top is the whole catalog
def test_ranks_from_evidence_equal_a_full_rescoring(max_k):
    model, cases = _model(), _cases(200, repeat_share=0.5)
    evidence = collect_evidence(model, cases, max_k=max_k, batch_size=64)
    spread = float(np.mean(evidence.top_scores[:, 0] - evidence.top_scores[:, min(max_k, V - 1) - 1]))
    for bonus in [0.0, 0.1 * spread, spread, 5 * spread, 1e6]:
        want = _brute_force_ranks(model, cases, bonus, max_k)
        np.testing.assert_array_equal(evidence.ranks(bonus), want)
    hits = (evidence.ranks(0.0) <= max_k).sum()
    assert 0 < hits < len(cases) or max_k == V   # the case set exercises hits and misses


def test_validation_fits_a_bonus_that_helps_on_repeat_heavy_cases():
    model, cases = _model(), _cases(400, repeat_share=0.6)
    config = TrainConfig(val_exclude_seen=False, fit_repeat_bonus=True, val_max_cases=0)
    fitted = validate(model, cases, config)
    assert fitted["val_repeat_bonus"] > 0
    assert float(model.repeat_bonus) == pytest.approx(fitted["val_repeat_bonus"])
    # the fitted metrics are the model's own: a plain evaluation with the bonus set agrees
    plain = evaluate_next_track(model, cases, ks=(10, 20), exclude_seen=False)
    for key in ("recall_at_20", "ndcg_at_10", "mrr_at_20"):
        assert fitted[f"val_{key}"] == pytest.approx(plain[key])
    model.repeat_bonus.zero_()
    unfitted = evaluate_next_track(model, cases, ks=(10, 20), exclude_seen=False)
    assert fitted["val_ndcg_at_10"] > unfitted["ndcg_at_10"] + 0.05


def test_no_fitting_when_validation_excludes_history_or_fitting_is_off():
    for config in (TrainConfig(val_exclude_seen=True, val_max_cases=0),
                   TrainConfig(val_exclude_seen=False, fit_repeat_bonus=False, val_max_cases=0)):
        model = _model()
        metrics = validate(model, _cases(100, repeat_share=0.6), config)
        assert "val_repeat_bonus" not in metrics
        assert float(model.repeat_bonus) == 0.0


def test_scores_carry_the_bonus_once_per_history_track_and_old_checkpoints_load_without_one():
    model = _model()
    hist = torch.tensor([[0, 0, 5, 7, 5], [1, 2, 3, 4, 9]])
    hours, dows = torch.tensor([3, 4]), torch.tensor([1, 2])
    raw = model.score_batch(hist, hours, dows)
    model.repeat_bonus.fill_(2.5)
    lifted = model.score_batch(hist, hours, dows)
    diff = (lifted - raw)[:, 1:]
    expected = torch.zeros_like(diff)
    for row, items in enumerate(hist.tolist()):
        for item in set(items) - {0}:
            expected[row, item - 1] = 2.5          # track 5, twice in row 0, is lifted once
    torch.testing.assert_close(diff, expected)
    state = model.state_dict()
    del state["repeat_bonus"]                      # a checkpoint from before the bonus existed
    old = _model(seed=1)
    old.load_state_dict(state)
    assert float(old.repeat_bonus) == 0.0
    torch.testing.assert_close(old.score_batch(hist, hours, dows), raw)
