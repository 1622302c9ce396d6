"""SessionNeighbours: the votes of the k most similar sessions, the last track's transitions beside
them, and the file they travel in."""

from __future__ import annotations

import numpy as np
import pytest

from playlistai.models.neighbours import SessionNeighbours

V = 60


def _sessions(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a small pool, so sessions share tracks and many similarities tie
    return [rng.integers(1, 15, size=rng.integers(1, 6)) for _ in range(n)]


def _reference_votes(sessions: list[np.ndarray], history: list[int], k: int, recent_items: int) -> np.ndarray:
    """V-SKNN written out for one history, one session at a time."""
    recent = [t for t in history if t != 0][-recent_items:]
    weight = {}
    for position, track in enumerate(recent):      # the last track weighs 1, the m-th most recent 1/m
        weight[track] = weight.get(track, 0.0) + (position + 1) / len(recent)
    similarity = []
    for index, session in enumerate(sessions):
        held = set(session.tolist())
        sim = sum(w for t, w in weight.items() if t in held) / np.sqrt(len(held))
        if sim > 0:
            similarity.append((sim, index))
    similarity.sort(key=lambda x: (-np.float32(x[0]), -x[1]))   # most similar, then most recent
    votes = np.zeros(V, dtype=np.float64)
    for sim, index in similarity[:k]:
        votes[np.unique(sessions[index])] += sim
    return votes


def test_batched_votes_equal_the_one_session_at_a_time_definition():
    sessions = _sessions(400)
    neighbours = SessionNeighbours.fit(sessions, V, k=7, recent_items=3)
    rng = np.random.default_rng(1)
    histories = rng.integers(1, 15, size=(50, 5))
    histories[:10, :3] = 0                          # short histories, left-padded
    histories[10] = 0                               # no history: no votes
    votes = neighbours.votes(histories).toarray()
    assert votes[10].sum() == 0
    for row, history in enumerate(histories.tolist()):
        np.testing.assert_allclose(votes[row], _reference_votes(sessions, history, 7, 3), rtol=1e-5, atol=1e-6)


def test_transitions_count_what_came_right_after_the_last_track():
    sessions = [np.array([1, 2, 3]), np.array([1, 2]), np.array([3, 1, 4]), np.array([2, 1])]
    neighbours = SessionNeighbours.fit(sessions, 6, k=10, with_transitions=True)
    counts = neighbours.last_track_transitions(np.array([[0, 1], [3, 1], [0, 2], [0, 0], [0, 4]])).toarray()
    np.testing.assert_array_equal(counts[0], [0, 0, 2, 0, 1, 0])   # after 1: 2 twice, 4 once
    np.testing.assert_array_equal(counts[1], counts[0])             # only the last track counts
    np.testing.assert_array_equal(counts[2], [0, 1, 0, 1, 0, 0])   # after 2: 3 and 1 (never across sessions)
    assert counts[3].sum() == 0 and counts[4].sum() == 0            # no history; a track nothing followed


def test_the_share_adds_scaled_transitions_to_the_scaled_votes():
    sessions = _sessions(300)
    neighbours = SessionNeighbours.fit(sessions, V, k=20, with_transitions=True)
    histories = np.random.default_rng(2).integers(1, 15, size=(30, 4))
    alone = neighbours.scaled_votes_sparse(histories).toarray()
    assert alone.max(axis=1) == pytest.approx(1.0)                  # each row scaled to [0, 1]
    transitions = neighbours.last_track_transitions(histories).toarray()
    scaled_transitions = transitions / np.maximum(transitions.max(axis=1, keepdims=True), 1e-30)
    neighbours.transition_share = 0.5
    mixed = neighbours.scaled_votes_sparse(histories).toarray()
    np.testing.assert_allclose(mixed, alone + 0.5 * scaled_transitions, rtol=1e-6, atol=1e-7)
    assert (mixed != alone).any()


def test_a_share_needs_transitions_and_cannot_be_negative():
    sessions = _sessions(20)
    with pytest.raises(ValueError, match="needs the transition counts"):
        SessionNeighbours(SessionNeighbours.fit(sessions, V).sessions, transition_share=1.0)
    fitted = SessionNeighbours.fit(sessions, V, with_transitions=True)
    with pytest.raises(ValueError, match="transition_share must be >= 0"):
        SessionNeighbours(fitted.sessions, transitions=fitted.transitions, transition_share=-1.0)


@pytest.mark.parametrize("share", [0.0, 2.0])
def test_the_file_round_trip_keeps_the_scores(tmp_path, share):
    neighbours = SessionNeighbours.fit(_sessions(200), V, k=15, recent_items=2, with_transitions=True)
    neighbours.transition_share = share
    neighbours.save(tmp_path / "n.npz")
    loaded = SessionNeighbours.load(tmp_path / "n.npz")
    histories = np.random.default_rng(3).integers(0, 15, size=(20, 4))
    np.testing.assert_array_equal(loaded.scaled_votes_sparse(histories).toarray(),
                                  neighbours.scaled_votes_sparse(histories).toarray())
    assert (loaded.k, loaded.recent_items, loaded.transition_share) == (15, 2, share)
    # transitions travel only when the scores use them
    assert (loaded.transitions is not None) == bool(share)


def test_a_file_from_before_transitions_loads_as_votes_alone(tmp_path):
    neighbours = SessionNeighbours.fit(_sessions(100), V)
    m = neighbours.sessions
    np.savez(tmp_path / "old.npz", indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
             shape=np.asarray(m.shape, dtype=np.int64), k=np.int64(100), recent_items=np.int64(3))
    loaded = SessionNeighbours.load(tmp_path / "old.npz")
    assert loaded.transition_share == 0.0 and loaded.transitions is None
    histories = np.array([[0, 3, 4], [5, 6, 7]])
    np.testing.assert_array_equal(loaded.votes(histories).toarray(), neighbours.votes(histories).toarray())


@pytest.mark.parametrize("k, recent_items, message", [(0, 3, "k must be >= 1"), (10, 0, "recent_items must be >= 1")])
def test_bad_settings_are_refused_by_the_neighbours_and_the_sknn_baseline_alike(k, recent_items, message):
    from playlistai.models.baselines import SessionKNN

    with pytest.raises(ValueError, match=message):
        SessionNeighbours.fit(_sessions(10), V, k=k, recent_items=recent_items)
    with pytest.raises(ValueError, match=message):
        SessionKNN(k=k, recent_items=recent_items)


@pytest.mark.parametrize("k, recent_items, share", [(7, 3, 0.0), (20, 3, 0.7), (5, None, 1.3), (400, 2, 0.0)])
def test_the_one_row_path_gives_the_batched_votes_bit_for_bit(k, recent_items, share):
    """What the API computes per request (`scaled_votes_of_one`) is what evaluation computes in
    batches (`scaled_votes_sparse`): the same tracks and the same float32 values, so the same ranks."""
    sessions = _sessions(500, seed=3)
    neighbours = SessionNeighbours.fit(sessions, V, k=k, recent_items=recent_items, with_transitions=True)
    neighbours.transition_share = share
    rng = np.random.default_rng(4)
    histories = rng.integers(1, 15, size=(80, 6))
    histories[:20, :4] = 0                            # short histories, left-padded
    histories[20] = 0                                 # no history
    histories[21, -3:] = histories[21, -1]            # one track three times
    histories[22, -1] = 40                            # a track no session holds
    batched = neighbours.scaled_votes_sparse(histories)
    for row, history in enumerate(histories):
        tracks, values = neighbours.scaled_votes_of_one(history[history != 0])
        lo, hi = batched.indptr[row], batched.indptr[row + 1]
        np.testing.assert_array_equal(tracks, batched.indices[lo:hi])
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, batched.data[lo:hi])
