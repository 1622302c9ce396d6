"""The full-ranking evaluator on small case sets whose right answers are known."""

import numpy as np
import pytest
import torch

from playlistai.data.sequences import NextTrackCases, encode_sessions, next_track_cases
from playlistai.data.vocab import Vocabulary
from playlistai.evaluation import metrics as M
from playlistai.evaluation.evaluator import (
    continuation_cases,
    evaluate_next_track,
    evaluate_scorer,
    pessimistic_ranks,
    rank_next_track,
    shuffle_context,
    top_slates,
)

V = 41   # 40 tracks + PAD


def make_cases(n=300, length=6, seed=0) -> NextTrackCases:
    rng = np.random.default_rng(seed)
    histories = rng.integers(1, V, size=(n, length))
    histories[: n // 3, :2] = 0                                  # some left padding
    targets = rng.integers(1, V, size=n)
    return NextTrackCases(
        histories=histories,
        hours=rng.integers(0, 24, n),
        dows=rng.integers(0, 7, n),
        targets=targets,
        session_index=np.arange(n) // 3,
        positions=np.ones(n, dtype=np.int64),
        history_lengths=(histories != 0).sum(1),
    )


class TargetFirst:
    """Knows the answer: the target scores highest. Checks it only ever sees one batch at a time."""

    def __init__(self, cases: NextTrackCases, max_batch: int):
        self.lookup = {tuple(h) + (hr, d): t for h, hr, d, t in
                       zip(cases.histories.tolist(), cases.hours.tolist(), cases.dows.tolist(), cases.targets.tolist(), strict=True)}
        self.max_batch = max_batch

    def score_batch(self, histories, hours, dows):
        assert histories.shape[0] <= self.max_batch
        scores = torch.zeros(len(histories), V)
        for i, (h, hr, d) in enumerate(zip(histories.tolist(), hours.tolist(), dows.tolist(), strict=True)):
            scores[i, self.lookup[tuple(h) + (hr, d)]] = 1.0
        return scores


class Constant:
    def score_batch(self, histories, hours, dows):
        return torch.ones(len(histories), V)


class Random:
    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)

    def score_batch(self, histories, hours, dows):
        return torch.rand(len(histories), V, generator=self.gen)


def test_target_first_scorer_scores_recall_at_1_of_one_on_non_repeat_cases():
    cases = make_cases()
    repeat = (cases.histories == cases.targets[:, None]).any(1)
    fresh = cases.subset(~repeat)
    m = evaluate_next_track(TargetFirst(fresh, 64), fresh, ks=(1, 5), batch_size=64)
    assert m["recall_at_1"] == 1.0 and m["ndcg_at_10"] == 1.0 and m["mrr_at_20"] == 1.0
    # with exclusion, a repeat target is unreachable; allowing repeats recovers it
    m_all = evaluate_next_track(TargetFirst(cases, 64), cases, ks=(1,), batch_size=64)
    assert m_all["recall_at_1"] == pytest.approx(1 - repeat.mean())
    assert m_all["repeat_target_share"] == pytest.approx(repeat.mean())
    m_rep = evaluate_next_track(TargetFirst(cases, 64), cases, ks=(1,), batch_size=64, exclude_seen=False)
    assert m_rep["recall_at_1"] == 1.0


def test_random_scorer_recall_is_close_to_k_over_catalog():
    cases = make_cases(n=3000, seed=1)
    m = evaluate_next_track(Random(), cases, ks=(10,), exclude_seen=False)
    assert m["recall_at_10"] == pytest.approx(10 / (V - 1), abs=0.03)
    assert m["recall_at_20"] == pytest.approx(20 / (V - 1), abs=0.03)


def test_constant_scorer_gets_no_credit():
    cases = make_cases()
    m = evaluate_next_track(Constant(), cases, exclude_seen=False)
    assert m["recall_at_20"] == 0.0 and m["ndcg_at_10"] == 0.0 and m["mrr_at_20"] == 0.0


def test_results_do_not_depend_on_batch_size_and_match_the_numpy_reference():
    cases = make_cases(n=200, seed=3)
    scores = torch.rand(len(cases), V, generator=torch.Generator().manual_seed(3))
    scores[:, 5] = scores[:, 6]                                   # ties in every row

    class Fixed:
        def __init__(self):
            self.row = 0

        def score_batch(self, histories, hours, dows):
            out = scores[self.row : self.row + len(histories)]
            self.row += len(histories)
            return out

    a = rank_next_track(Fixed(), cases, exclude_seen_settings=(False, True), batch_size=7)
    b = rank_next_track(Fixed(), cases, exclude_seen_settings=(False, True), batch_size=1000)
    for setting in (False, True):
        assert np.array_equal(a[setting].ranks, b[setting].ranks)
        assert np.array_equal(a[setting].slates, b[setting].slates)
    reference = M.target_ranks(scores.numpy(), cases.targets)
    assert np.array_equal(a[False].ranks, reference)
    masked = scores.numpy().copy()
    np.put_along_axis(masked, cases.histories, -np.inf, axis=1)
    assert np.array_equal(a[True].ranks, M.target_ranks(masked, cases.targets))
    assert torch.equal(scores, scores.clone())                     # the scorer's tensor is untouched


def test_pessimistic_ranks_torch_matches_numpy():
    scores = torch.tensor([[float("-inf"), 1.0, 1.0, 0.5], [float("-inf"), 0.1, float("-inf"), 0.2]])
    targets = torch.tensor([1, 2])
    assert pessimistic_ranks(scores, targets).tolist() == [2, M.UNREACHABLE]


def test_slates_break_ties_by_lower_index_and_mark_empty_slots():
    inf = float("inf")
    scores = torch.tensor([[-inf, 1.0, 2.0, 2.0, 2.0, 0.0, -inf]])
    assert top_slates(scores, 2).tolist() == [[2, 3]]
    assert top_slates(scores, 4).tolist() == [[2, 3, 4, 1]]
    assert top_slates(scores, 100).tolist() == [[2, 3, 4, 1, 5, 0]]   # k > catalog: 6 tracks, one -inf
    constant = torch.zeros(3, 9)
    constant[:, 0] = -inf
    assert top_slates(constant, 3).tolist() == [[1, 2, 3]] * 3


def test_slate_metrics_and_coverage_from_the_evaluator():
    cases = make_cases(n=50)
    vocab = Vocabulary([f"t{i}" for i in range(1, V)], [f"a{i % 4}" for i in range(1, V)], [None] * (V - 1),
                       np.arange(V - 1, 0, -1))
    m = evaluate_next_track(Constant(), cases, exclude_seen=False, vocab=vocab)
    # a constant scorer serves tracks 1..20 (lowest indices) to everyone
    assert m["coverage_at_100"] == pytest.approx(1.0)                   # 40 tracks < 100: all of them
    assert m["artist_diversity_at_20"] == pytest.approx(4 / 20)
    assert m["popularity_bias_at_20"] == pytest.approx(vocab.popularity_percentile()[1:21].mean())
    assert m["repetition_rate_at_20"] > 0
    m_ex = evaluate_next_track(Constant(), cases, exclude_seen=True, vocab=vocab)
    assert m_ex["repetition_rate_at_20"] == 0.0


def test_module_mode_is_restored_and_no_grad_is_used():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, 4)

        def score_batch(self, histories, hours, dows):
            assert not self.training and not torch.is_grad_enabled()
            return self.emb(histories[:, -1]) @ self.emb.weight.T

    model = Model().train()
    evaluate_next_track(model, make_cases(n=20))
    assert model.training


def test_empty_cases_are_refused():
    with pytest.raises(ValueError, match="no cases"):
        evaluate_next_track(Constant(), make_cases().subset(np.zeros(300, bool)))


def test_shuffled_context_keeps_pairs_and_histories():
    cases = make_cases(n=100)
    shuffled = shuffle_context(cases, seed=1)
    assert np.array_equal(shuffled.histories, cases.histories)
    pairs = lambda c: sorted(zip(c.hours.tolist(), c.dows.tolist(), strict=True))  # noqa: E731
    assert pairs(shuffled) == pairs(cases) and not np.array_equal(shuffled.hours, cases.hours)


def test_continuation_cases_and_recall_on_a_known_split(tiny_split):
    frame, vocab = tiny_split
    sessions = encode_sessions(frame, vocab)          # "x" is unknown and dropped
    cont = continuation_cases(sessions, max_seq_len=3)
    # session 10: input [a, b], rest {c, d}; 11: known [b, c] -> input [b], rest {c};
    # 12: one track -> no case; 13: input [d, a], rest {a, b, c}
    assert cont.session_index.tolist() == [0, 1, 3]
    assert cont.histories.tolist() == [[0, 1, 2], [0, 0, 2], [0, 4, 1]]
    assert np.split(cont.relevant_items, cont.relevant_indptr[1:-1])[2].tolist() == [1, 2, 3]
    assert cont.hours.tolist() == [10, 10, 10]         # context of the first continued event

    class Popular:
        def score_batch(self, histories, hours, dows):
            return torch.tensor([[0.0, 4, 3, 2, 1]]).repeat(len(histories), 1)

    cases = next_track_cases(sessions, 3)
    ev = evaluate_scorer("popular", Popular(), cases, vocab, cont, exclude_seen=True)
    # slates with input excluded: [c, d], [a, c, d], [b, c] -> recall 2/2, 1/1, 2/3 (a is in input)
    assert ev.metrics["cont_recall_at_20"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert ev.metrics["cont_recall_at_20_with_repeats"] == pytest.approx(1.0)
    assert {"recall_at_20_with_repeats", "coverage_at_100_with_repeats", "repeat_target_share"} <= set(ev.metrics)
    # next-track: targets b,c,d | c | a,b,a,c ; with exclusion the repeat target 'a' (pos 3 of 13) is lost
    assert ev.metrics["recall_at_20"] == pytest.approx(7 / 8)
    assert ev.metrics["recall_at_20_with_repeats"] == 1.0
    assert ev.per_case[True]["ndcg_at_10"].shape == (8,)


def test_progress_names_the_scorer_and_the_protocol_on_stderr_only_when_asked(tiny_split, capsys):
    frame, vocab = tiny_split
    sessions = encode_sessions(frame, vocab)

    class Popular:
        def score_batch(self, histories, hours, dows):
            return torch.tensor([[0.0, 4, 3, 2, 1]]).repeat(len(histories), 1)

    cases, cont = next_track_cases(sessions, 3), continuation_cases(sessions, max_seq_len=3)
    quiet = evaluate_scorer("popular", Popular(), cases, vocab, cont)
    assert capsys.readouterr().err == ""
    shown = evaluate_scorer("popular", Popular(), cases, vocab, cont, progress=True)
    err = capsys.readouterr().err
    assert "popular, next track" in err and "popular, continuation" in err
    assert shown.metrics == quiet.metrics                   # a bar changes nothing it measures
