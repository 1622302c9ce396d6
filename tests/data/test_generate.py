import numpy as np
import pandas as pd
import pytest

from playlistai.data.generate import SyntheticWorld, estimate_ceilings, make_world
from playlistai.data.vocab import Vocabulary


def test_generator_is_deterministic_under_a_seed():
    a = make_world("tiny", 11).generate()
    b = make_world("tiny", 11).generate()
    c = make_world("tiny", 12).generate()
    pd.testing.assert_frame_equal(a, b)
    assert not a["track_id"].equals(c["track_id"])


def test_events_follow_the_contract():
    ev = make_world("tiny", 1).generate()
    assert list(ev.columns) == ["user_id", "track_id", "ts", "artist_id", "genre"]
    assert str(ev["ts"].dtype) == "datetime64[ns, UTC]"
    assert ev["track_id"].notna().all() and ev["user_id"].notna().all()


def test_oracle_distribution_sums_to_one_and_matches_sampling():
    world = make_world("tiny", 5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        prefix = rng.integers(0, world.n_tracks, size=rng.integers(1, 6)).tolist()
        p = world.next_track_distribution(prefix, int(rng.integers(24)), int(rng.integers(7)))
        assert p.shape == (world.n_tracks,)
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # the album component: after a track with a successor, that successor is the single most likely track
    t = int(np.flatnonzero(world.album_next >= 0)[0])
    p = world.next_track_distribution([t], 12, 2)
    assert int(np.argmax(p)) == world.album_next[t]


def test_oracle_beats_mostpop_on_tiny():
    world = make_world("tiny", 7)
    ceilings = estimate_ceilings(world, world.generate(), min_freq=2)
    assert ceilings["oracle_recall_at_20"] > ceilings["mostpop_recall_at_20"] + 0.1
    assert ceilings["oracle_ndcg_at_10"] > ceilings["mostpop_ndcg_at_10"] + 0.1


def test_world_round_trips_through_disk(tmp_path):
    world = make_world("tiny", 2)
    world.save(tmp_path)
    again = SyntheticWorld.load(tmp_path)
    prefix = [0, 1, 2]
    assert np.allclose(world.next_track_distribution(prefix, 3, 4), again.next_track_distribution(prefix, 3, 4))
    vocab = Vocabulary.from_frame(pd.DataFrame({"track_id": ["t000001", "t000000"], "count": [5, 3]}))
    scores = again.oracle_scores([["t000000"]], [3], [4], vocab)
    assert scores.shape == (1, 3) and scores[0, 0] == 0


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="unknown size"):
        make_world("huge", 1)
