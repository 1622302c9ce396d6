"""Baselines on hand-made training sessions: each ranks what its definition says it should."""

import numpy as np
import pytest
import torch

from playlistai.data.sequences import EncodedSessions
from playlistai.models.baselines import (
    BASELINES,
    ItemTransitions,
    MostPop,
    MostPopByHour,
    SessionKNN,
    fit_baselines,
)

V = 8   # tracks 1..7


def sessions(item_lists, hours=None) -> EncodedSessions:
    items = [np.asarray(s, dtype=np.int64) for s in item_lists]
    hours = hours or [[12] * len(s) for s in item_lists]
    return EncodedSessions(
        session_ids=np.arange(len(items)),
        items=items,
        hours=[np.asarray(h) for h in hours],
        dows=[np.zeros(len(s), np.int64) for s in items],
        is_target=[np.ones(len(s), bool) for s in items],
        positions=[np.arange(len(s)) for s in items],
    )


TRAIN = sessions([[1, 2, 3], [1, 2, 4], [5, 6], [1, 2, 3, 7], [6, 5, 6]])


def top(scorer, history, hour=12, k=3):
    h = torch.tensor([history], dtype=torch.long)
    scores = scorer.score_batch(h, torch.tensor([hour]), torch.tensor([0]))
    assert scores.shape == (1, V) and torch.isneginf(scores[0, 0])
    return torch.topk(scores[0], k).indices.tolist()


def test_mostpop_orders_by_training_plays_ties_by_index():
    model = MostPop().fit(TRAIN, V)
    # plays: 1:3, 2:3, 3:2, 6:3, 5:2, 4:1, 7:1
    assert top(model, [0, 0, 4], k=4) == [1, 2, 6, 3]


def test_mostpop_by_hour_follows_the_hour():
    train = sessions([[1, 1, 1], [2, 2], [2, 2]], hours=[[8, 8, 8], [22, 22], [22, 22]])
    model = MostPopByHour(prior_weight=1.0).fit(train, V)
    assert top(model, [0, 3], hour=8, k=1) == [1]
    assert top(model, [0, 3], hour=22, k=1) == [2]
    assert top(model, [0, 3], hour=3, k=2) == [2, 1]      # no plays at 3 am: the global prior


def test_item_transitions_follow_the_last_track():
    model = ItemTransitions().fit(TRAIN, V)
    assert top(model, [0, 5, 1], k=1) == [2]               # 1 -> 2 three times
    assert top(model, [0, 1, 2], k=2) == [3, 4]            # 2 -> 3 twice, 2 -> 4 once
    assert top(model, [0, 0, 6], k=1) == [5]               # 6 -> 5 twice (5 -> 6 does not count)
    # no transition seen from 7: popularity decides (1, 2, 6 have 3 plays: lower index first)
    assert top(model, [0, 0, 7], k=3) == [1, 2, 6]


def test_session_knn_votes_with_similar_sessions():
    model = SessionKNN(k=2).fit(TRAIN, V)
    ranked = top(model, [0, 1, 2], k=3)
    assert set(ranked[:2]) == {1, 2} and ranked[2] == 3  # neighbours [1,2,3] / [1,2,3,7] / [1,2,4]
    assert top(model, [0, 0, 5], k=2) == [6, 5]


def test_batches_score_like_single_rows_and_empty_histories_do_not_fail():
    histories = torch.tensor([[0, 1, 2], [0, 0, 6], [0, 0, 0]])
    hours = torch.tensor([12, 3, 22])
    dows = torch.zeros(3, dtype=torch.long)
    for name, model in fit_baselines(TRAIN, V).items():
        batch = model.score_batch(histories, hours, dows)
        for i in range(3):
            single = model.score_batch(histories[i : i + 1], hours[i : i + 1], dows[i : i + 1])
            assert torch.allclose(batch[i], single[0]), name
        assert torch.isfinite(batch[:, 1:]).all(), name


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baselines(TRAIN, V, ["mostpop", "bogus"])
    assert set(BASELINES) == {"mostpop", "mostpop_hour", "transitions", "sknn"}
