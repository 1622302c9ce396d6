"""The oracle scores raw prefixes (unknown tracks included), one per case, through the same evaluator."""

import numpy as np
import pytest

from playlistai.data.sequences import encode_sessions, next_track_cases
from playlistai.evaluation.evaluator import continuation_cases, evaluate_scorer
from playlistai.evaluation.oracle import OracleScorer, oracle_for_cases, raw_prefixes


class EchoWorld:
    """Puts all probability on the vocabulary track the prefix names by its length (a, b, c, d)."""

    def __init__(self):
        self.calls = []

    def oracle_scores(self, prefixes, hours, dows, vocab):
        self.calls.append([list(p) for p in prefixes])
        out = np.zeros((len(prefixes), vocab.size), dtype=np.float32)
        for i, p in enumerate(prefixes):
            out[i, 1 + (len(p) % len(vocab))] = 1.0
        return out


def test_raw_prefixes_keep_unknown_tracks_and_stop_before_the_target(tiny_split):
    frame, vocab = tiny_split
    sessions = encode_sessions(frame, vocab)
    cases = next_track_cases(sessions, 3)
    prefixes = raw_prefixes(frame, sessions, cases.session_index, cases.positions)
    # session 11 is [b, x, c]: its only case (target c at raw position 2) has the unknown x
    assert ["b", "x"] in prefixes
    assert prefixes[0] == ["a"] and prefixes[2] == ["a", "b", "c"]
    assert all(len(p) == pos for p, pos in zip(prefixes, cases.positions, strict=True))


def test_oracle_is_ranked_by_the_evaluator_like_any_scorer(tiny_split):
    frame, vocab = tiny_split
    sessions = encode_sessions(frame, vocab)
    cases = next_track_cases(sessions, 3)
    cont = continuation_cases(sessions, 3)
    world = EchoWorld()
    scorer = oracle_for_cases(world, frame, sessions, cases, vocab)
    cont_scorer = oracle_for_cases(world, frame, sessions, cont, vocab)
    assert isinstance(scorer, OracleScorer)
    ev = evaluate_scorer("oracle", scorer, cases, vocab, cont, continuation_scorer=cont_scorer, batch_size=3)
    assert ev.metrics["num_cases"] == len(cases) == 8
    assert 0 <= ev.metrics["recall_at_20"] <= 1
    # each case scored once for both exclude_seen settings: 8 next-track prefixes, then the raw
    # plays before each continuation starts (session [b, x, c] continues at c, after b and x)
    flat = [p for call in world.calls for p in call]
    assert len(flat) == 8 + 3
    assert flat[8:] == [["a", "b"], ["b", "x"], ["d", "a"]]


def test_oracle_rows_must_align():
    with pytest.raises(ValueError):
        OracleScorer(EchoWorld(), [["a"]], np.array([1, 2]), np.array([1]), None)
