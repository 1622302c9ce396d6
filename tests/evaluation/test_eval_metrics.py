"""Every metric of docs/ARCHITECTURE.md ("Metrics") against hand-computed values, ties, k beyond the
catalog, empty input."""

import math

import numpy as np
import pytest

from playlistai.evaluation import metrics as M

INF = float("inf")


# -- ranks and the tie convention -----------------------------------------------------------------


def test_target_ranks_hand_computed():
    scores = np.array(
        [
            [-INF, 0.9, 0.5, 0.1, 0.3],   # target 2: only 0.9 above -> rank 2
            [-INF, 0.1, 0.2, 0.3, 0.4],   # target 4: best -> rank 1
            [-INF, 0.4, 0.3, 0.2, 0.1],   # target 4: worst of 4 tracks -> rank 4
        ]
    )
    assert M.target_ranks(scores, np.array([2, 4, 4])).tolist() == [2, 1, 4]


def test_ties_are_pessimistic_and_a_constant_scorer_ranks_every_target_last():
    scores = np.array([[0.0, 0.5, 0.5, 0.5, 0.1]])   # target 1 tied with 2 and 3
    assert M.target_ranks(scores, np.array([1])).tolist() == [3]
    constant = np.ones((4, 6))
    ranks = M.target_ranks(constant, np.array([1, 2, 3, 5]))
    assert ranks.tolist() == [5, 5, 5, 5]                 # 5 tracks (PAD is never a candidate)
    assert M.recall_at_k(ranks, 1) == 0.0 and M.ndcg_at_k(ranks, 4) == 0.0


def test_pad_column_and_excluded_targets():
    scores = np.array([[9.0, 1.0, 2.0], [0.0, -INF, 1.0], [0.0, np.nan, 1.0]])
    ranks = M.target_ranks(scores, np.array([1, 1, 1]))
    assert ranks[0] == 2                                   # PAD's 9.0 does not count
    assert ranks[1] == M.UNREACHABLE and ranks[2] == M.UNREACHABLE   # excluded / NaN never hit
    assert M.recall_at_k(ranks, 10**6) == pytest.approx(1 / 3)


# -- next-track metrics ---------------------------------------------------------------------------


def test_recall_ndcg_mrr_hand_computed():
    ranks = np.array([1, 2, 5, 11, 30])
    assert M.recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert M.recall_at_k(ranks, 20) == pytest.approx(4 / 5)
    expected_ndcg10 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(6)) / 5
    assert M.ndcg_at_k(ranks, 10) == pytest.approx(expected_ndcg10)
    assert M.mrr_at_k(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11) / 5)
    assert M.mrr_at_k(ranks, 1) == pytest.approx(1 / 5)


def test_k_larger_than_catalog_counts_every_reachable_target():
    ranks = M.target_ranks(np.array([[0.0, 3.0, 2.0, 1.0]] * 3), np.array([1, 2, 3]))
    assert M.recall_at_k(ranks, 1000) == 1.0
    assert M.ndcg_at_k(ranks, 1000) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_empty_input_gives_nan_means_and_empty_per_case_arrays():
    empty = np.zeros(0, dtype=np.int64)
    for fn in (M.recall_at_k, M.ndcg_at_k, M.mrr_at_k):
        assert math.isnan(fn(empty, 10))
    assert M.hits_at_k(empty, 5).shape == (0,)
    assert M.target_ranks(np.zeros((0, 4)), empty).shape == (0,)
    slates = np.zeros((0, 20), dtype=np.int64)
    assert math.isnan(M.coverage_at_k(slates, 10, 20))
    assert math.isnan(M.repetition_rate_at_k(slates, np.zeros((0, 5), np.int64), 20))
    assert math.isnan(M.artist_diversity_at_k(slates, np.array([-1, 0, 1]), 20))
    assert math.isnan(M.popularity_bias_at_k(slates, np.zeros(3), 20))
    assert math.isnan(M.repeat_target_share(np.zeros((0, 3), np.int64), empty))
    assert M.continuation_recall_per_case(slates, np.array([0]), empty, 20).shape == (0,)


def test_invalid_k_is_refused():
    with pytest.raises(ValueError):
        M.recall_at_k(np.array([1]), 0)


def test_curves_match_pointwise_metrics():
    ranks = np.array([1, 3, 3, 7, 50, M.UNREACHABLE])
    recall, ndcg = M.recall_curve(ranks, 10), M.ndcg_curve(ranks, 10)
    for k in (1, 3, 7, 10):
        assert recall[k - 1] == pytest.approx(M.recall_at_k(ranks, k))
        assert ndcg[k - 1] == pytest.approx(M.ndcg_at_k(ranks, k))


# -- slates ---------------------------------------------------------------------------------------


def test_continuation_recall_hand_computed():
    slates = np.array([[1, 2, 3], [4, 5, 6], [7, 0, 0]])
    # case 0: relevant {2, 9} -> 1 hit / min(2, 3); case 1: 4 relevant, 2 hits / min(4, 3);
    # case 2: relevant {7} -> 1 / 1
    indptr = np.array([0, 2, 6, 7])
    relevant = np.array([2, 9, 4, 6, 8, 10, 7])
    per_case = M.continuation_recall_per_case(slates, indptr, relevant, 3)
    assert per_case.tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert M.continuation_recall_at_k(slates, indptr, relevant, 1) == pytest.approx((0 + 1 + 1) / 3)


def test_coverage_hand_computed_and_k_beyond_slate_width():
    slates = np.array([[1, 2, 3], [3, 4, 0]])            # 0 = empty slot, not a track
    assert M.coverage_at_k(slates, 10, 100) == pytest.approx(4 / 10)
    assert M.coverage_at_k(slates, 10, 1) == pytest.approx(2 / 10)


def test_repetition_rate_counts_input_tracks_and_duplicates_within_the_slate():
    slates = np.array([[5, 6, 5, 7], [1, 2, 3, 0]])
    histories = np.array([[0, 7, 9], [0, 0, 4]])
    # row 0: 5 fresh, 6 fresh, 5 again (repeat), 7 in input (repeat) -> 2 of 4; row 1: 0 of 3 filled
    assert M.repetition_per_case(slates, histories, 4).tolist() == pytest.approx([0.5, 0.0])
    assert M.repetition_rate_at_k(slates, histories, 4) == pytest.approx(2 / 7)
    assert M.repetition_rate_at_k(slates, histories, 1) == pytest.approx(0.0)


def test_artist_diversity_unknown_artists_count_as_distinct():
    artist_of = np.array([-1, 0, 0, 1, -1, -1])           # index -> artist code; PAD = -1
    slates = np.array([[1, 2, 3], [4, 5, 0], [1, 2, 0]])
    per_case = M.artist_diversity_per_case(slates, artist_of, 3)
    assert per_case.tolist() == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert M.artist_diversity_at_k(slates, artist_of, 3) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)


def test_popularity_bias_is_the_mean_percentile_of_filled_slots():
    percentile = np.array([0.0, 1.0, 0.5, 0.25])
    slates = np.array([[1, 2], [3, 0]])
    assert M.popularity_bias_at_k(slates, percentile, 2) == pytest.approx((1.0 + 0.5 + 0.25) / 3)


def test_repeat_target_share():
    histories = np.array([[0, 1, 2], [0, 0, 3], [4, 5, 6]])
    assert M.repeat_target_share(histories, np.array([2, 9, 4])) == pytest.approx(2 / 3)
