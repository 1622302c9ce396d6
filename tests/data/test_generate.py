import hashlib

import numpy as np
import pandas as pd
import pytest

from playlistai.data.generate import (
    PRESETS,
    SyntheticWorld,
    _EvalPeriod,
    _plays_in_batches,
    estimate_ceilings,
    make_world,
)
from playlistai.data.parquet_io import HEAD_ROWS
from playlistai.data.stages import event_stats, write_synthetic_events
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


def test_the_log_of_a_seed_stays_what_it_was():
    """Tuned results depend on the synthetic logs: any change to the generator's draws shows here."""
    events = make_world("tiny", 42).generate()
    digest = hashlib.sha256(events.to_csv(index=False).encode()).hexdigest()
    assert digest == "a697871467824bd293f0b76b0650770473dc40964aea324a213b1b502517eb19"


def test_chunked_generation_is_the_in_memory_log():
    world = make_world("tiny", 11)
    whole = world.generate()
    chunks = list(world.generate_chunks(chunk_rows=1_500))
    assert len(chunks) >= 5
    assert all(len(chunk) >= 1_500 for chunk in chunks[:-1])
    # chunks hold whole users: no user is in two of them
    assert sum(chunk["user_id"].nunique() for chunk in chunks) == whole["user_id"].nunique()
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


@pytest.mark.parametrize("row_group_rows", [2_000, None])
def test_the_data_stage_writes_the_file_pandas_writes_of_the_whole_log(tmp_path, row_group_rows):
    """Written chunk by chunk, the events file is `to_parquet` of the whole log, byte for byte:
    several row groups (2,000 rows here), or pandas' own row groups (None)."""
    world = make_world("tiny", 11)
    if row_group_rows is None:
        tally, head = write_synthetic_events(world, tmp_path / "streamed.parquet")
        options = {}
    else:
        tally, head = write_synthetic_events(world, tmp_path / "streamed.parquet", row_group_rows=row_group_rows)
        options = {"row_group_size": row_group_rows}
    whole = world.generate()
    whole.to_parquet(tmp_path / "whole.parquet", index=False, **options)
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert tally.stats() == event_stats(whole)
    assert sorted(tally.track_counts()) == sorted(whole["track_id"].value_counts())
    pd.testing.assert_frame_equal(head, whole.head(HEAD_ROWS))


def test_ceilings_of_a_seed_stay_what_they_were():
    world = make_world("tiny", 7)
    assert estimate_ceilings(world, world.generate(), min_freq=5, seed=7) == {
        "ceiling_cases": 840.0, "ceiling_catalog_size": 349.0,
        "oracle_recall_at_20": 0.625, "oracle_ndcg_at_10": 0.45532253234761627,
        "mostpop_recall_at_20": 0.29642857142857143, "mostpop_ndcg_at_10": 0.08903583844835704,
    }


def test_ceilings_read_from_the_file_in_batches_are_those_of_the_frame(tmp_path):
    world = make_world("tiny", 7)
    events = world.generate()
    events.to_parquet(tmp_path / "events.parquet", index=False)
    whole = estimate_ceilings(world, events, min_freq=2, seed=3)
    # 50 plays a batch: most users span several batches
    for batch_rows in (50, 1_000, 1 << 20):
        assert estimate_ceilings(world, tmp_path / "events.parquet", min_freq=2, seed=3, batch_rows=batch_rows) == whole


def test_the_evaluation_period_breaks_ties_in_start_time_by_file_order():
    """The latest sessions by start, as a stable sort of the starts takes them, even when many
    sessions start in the same second and the batches cut through them."""
    world = make_world("tiny", 1)
    rng = np.random.default_rng(0)
    start = pd.Timestamp(world.config.start, tz="UTC")
    rows = []
    for u in range(40):
        # two sessions a user, starting at one of four seconds a day apart
        for day in sorted(rng.choice(4, size=2, replace=False)):
            first = start + pd.Timedelta(days=int(day))
            rows += [(f"u{u:06d}", "t000001", first + pd.Timedelta(seconds=60 * i)) for i in range(3)]
    events = pd.DataFrame(rows, columns=["user_id", "track_id", "ts"])
    session_starts = events["ts"].iloc[::3].reset_index(drop=True)
    for eval_frac in (0.1, 0.3, 0.55):
        n_eval = max(1, int(len(session_starts) * eval_frac))
        expected = np.zeros(len(session_starts), bool)
        expected[session_starts.sort_values(kind="mergesort").index[-n_eval:]] = True
        period = _EvalPeriod.of(world, _plays_in_batches(events, 7), eval_frac)
        marked = np.concatenate([in_eval for _, in_eval in period.mark(_plays_in_batches(events, 7))])
        np.testing.assert_array_equal(marked[::3], expected)


@pytest.mark.slow
def test_the_xlarge_catalog_has_a_million_tracks_and_no_dense_genre_table():
    world = SyntheticWorld.create(PRESETS["xlarge"], 42)
    assert world.n_tracks >= 1_000_000
    tables = world._tables()
    assert all(np.ndim(v) <= 1 for v in tables.values() if isinstance(v, np.ndarray))
