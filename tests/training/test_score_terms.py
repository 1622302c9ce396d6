"""The score terms (repeat bonus, neighbours' votes, the last track's transitions): ranks from the kept evidence match a full
re-scoring, validation fits them, scoring and old checkpoints honour them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from playlistai.data.sequences import NextTrackCases
from playlistai.evaluation import metrics as M
from playlistai.evaluation.evaluator import evaluate_next_track, pessimistic_ranks
from playlistai.models import ModelConfig, build_model
from playlistai.models.base import add_repeat_bonus
from playlistai.models.neighbours import SessionNeighbours
from playlistai.training.loop import TrainConfig, validate
from playlistai.training.score_terms import TRANSITION_SHARES, WEIGHT_MULTIPLES, collect_evidence, fit_terms

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
                                   torch.as_tensor(cases.dows), with_score_terms=False)
        add_repeat_bonus(scores, torch.as_tensor(cases.histories), bonus)
        scores[:, 0] = float("-inf")
        ranks = pessimistic_ranks(scores, torch.as_tensor(cases.targets)).numpy()
    ranks[ranks > max_k] = M.UNREACHABLE
    return ranks


@pytest.mark.parametrize("max_k", [5, 20, V])   # V: the kept top is the whole catalog
def test_ranks_from_evidence_equal_a_full_rescoring(max_k):
    model, cases = _model(), _cases(200, repeat_share=0.5)
    evidence = collect_evidence(model, cases, max_k=max_k, batch_size=64)
    spread = evidence.gap_sum / len(evidence)
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


def _neighbours(cases: NextTrackCases, informative: bool, seed: int = 2) -> SessionNeighbours:
    """Training sessions over the same tracks: with `informative`, one per case holds the case's
    last track together with its target (what the neighbours' votes can find)."""
    rng = np.random.default_rng(seed)
    sessions = [rng.integers(1, V, size=rng.integers(2, 6)) for _ in range(300)]
    if informative:
        for hist, target in zip(cases.histories, cases.targets, strict=True):
            sessions.append(np.asarray([hist[-1], target, rng.integers(1, V)]))
    return SessionNeighbours.fit(sessions, V, k=10, recent_items=3, with_transitions=True)


def _brute_force_mixed_ranks(model, cases, neighbours, bonus, weight, max_k, exclude_seen):
    hist = torch.as_tensor(cases.histories)
    with torch.no_grad():
        scores = model.score_batch(hist, torch.as_tensor(cases.hours), torch.as_tensor(cases.dows),
                                   with_score_terms=False)
        add_repeat_bonus(scores, hist, bonus)
        scores += weight * neighbours.scaled_votes(hist)
        scores[:, 0] = float("-inf")
        if exclude_seen:
            scores.scatter_(1, hist, float("-inf"))
        ranks = pessimistic_ranks(scores, torch.as_tensor(cases.targets)).numpy()
    ranks[ranks > max_k] = M.UNREACHABLE
    return ranks


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("max_k", [5, 20, V])
def test_ranks_with_neighbours_equal_a_full_rescoring(max_k, exclude_seen):
    model, cases = _model(), _cases(200, repeat_share=0.4)
    neighbours = _neighbours(cases, informative=True)
    evidence = collect_evidence(model, cases, max_k=max_k, batch_size=64, neighbours=neighbours,
                                exclude_seen=exclude_seen)
    assert evidence.support_scores.shape[1] > L      # the votes reach beyond the history
    spread = evidence.gap_sum / len(evidence)
    for share in [0.0, 0.5, 4.0]:
        neighbours.transition_share = share          # what scoring adds: votes + share x transitions
        for bonus in [0.0, spread, 1e6]:
            for weight in [0.0, 0.3 * spread, spread, 4 * spread, 1e6]:
                want = _brute_force_mixed_ranks(model, cases, neighbours, 0.0 if exclude_seen else bonus, weight,
                                                max_k, exclude_seen)
                got = evidence.ranks(0.0 if exclude_seen else bonus, weight, share)
                np.testing.assert_array_equal(got, want)


def test_the_fit_weighs_informative_neighbours_and_ignores_noise():
    model, cases = _model(), _cases(400, repeat_share=0.2)
    keys = ["recall_at_20", "ndcg_at_10", "mrr_at_20"]
    fits, alone = {}, {}
    for informative in (True, False):
        evidence = collect_evidence(model, cases, max_k=20, neighbours=_neighbours(cases, informative))
        fits[informative] = fit_terms(evidence, keys, (10, 20), "ndcg_at_10", weight_multiples=WEIGHT_MULTIPLES)
        alone[informative] = fit_terms(evidence, keys, (10, 20), "ndcg_at_10")   # the bonus without votes
        assert fits[informative].metrics["ndcg_at_10"] >= alone[informative].metrics["ndcg_at_10"]
    assert fits[True].weight > 0
    assert fits[True].metrics["ndcg_at_10"] > alone[True].metrics["ndcg_at_10"] + 0.01
    assert fits[True].metrics["ndcg_at_10"] > fits[False].metrics["ndcg_at_10"] + 0.01


def test_the_fit_gives_transitions_a_share_where_they_know_the_next_track_and_the_votes_do_not():
    model, cases = _model(), _cases(400, repeat_share=0.0)
    rng = np.random.default_rng(3)
    sessions = [rng.integers(1, V, size=rng.integers(2, 6)) for _ in range(300)]
    for hist, target in zip(cases.histories, cases.targets, strict=True):
        # the target came right after the last track once; five other tracks came right before it,
        # so every one of these sessions holds the last track and the votes cannot tell them apart
        sessions.append(np.asarray([hist[-1], target]))
        sessions.extend(np.asarray([rng.integers(1, V), hist[-1]]) for _ in range(5))
    neighbours = SessionNeighbours.fit(sessions, V, k=10, recent_items=3, with_transitions=True)
    evidence = collect_evidence(model, cases, max_k=20, neighbours=neighbours)
    keys = ["recall_at_20", "ndcg_at_10", "mrr_at_20"]
    votes_only = fit_terms(evidence, keys, (10, 20), "ndcg_at_10", weight_multiples=WEIGHT_MULTIPLES)
    with_share = fit_terms(evidence, keys, (10, 20), "ndcg_at_10", weight_multiples=WEIGHT_MULTIPLES,
                           shares=TRANSITION_SHARES)
    assert votes_only.share == 0.0 and with_share.share > 0 and with_share.weight > 0
    assert with_share.metrics["mrr_at_20"] > votes_only.metrics["mrr_at_20"] + 0.05
    # the fitted metrics are what ranks under the fitted terms give
    again = evidence.metric_sums(keys, (10, 20), with_share.bonus, with_share.weight, with_share.share)
    assert [v / len(evidence) for v in again] == pytest.approx([with_share.metrics[k] for k in keys])


def test_a_fixed_bonus_is_kept_through_every_step_of_the_fit():
    model, cases = _model(), _cases(200, repeat_share=0.5)
    evidence = collect_evidence(model, cases, max_k=20, neighbours=_neighbours(cases, informative=True))
    fitted = fit_terms(evidence, ["ndcg_at_10"], (10,), "ndcg_at_10", weight_multiples=WEIGHT_MULTIPLES,
                       shares=TRANSITION_SHARES, fixed_bonus=0.123)
    assert fitted.bonus == 0.123
