import numpy as np
import pandas as pd
import pytest

from playlistai.data.sessionize import sessionize


def events(rows, tz="UTC"):
    df = pd.DataFrame(rows, columns=["user_id", "track_id", "ts"])
    df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize(tz) if tz else pd.to_datetime(df["ts"], utc=True)
    df["artist_id"] = "a"
    df["genre"] = None
    return df


def test_gap_of_exactly_45_minutes_stays_in_the_session():
    ev = events([("u", "a", "2024-01-01 10:00:00"), ("u", "b", "2024-01-01 10:45:00"),
                 ("u", "c", "2024-01-01 11:30:01")])
    s, _ = sessionize(ev, gap_min=45, min_session_len=1)
    assert s["session_id"].tolist() == [0, 0, 1]
    assert s["pos"].tolist() == [0, 1, 0]


def test_out_of_order_timestamps_are_sorted_within_the_user():
    ev = events([("u", "c", "2024-01-01 10:10"), ("u", "a", "2024-01-01 10:00"), ("u", "b", "2024-01-01 10:05")])
    s, _ = sessionize(ev, min_session_len=1)
    assert s["track_id"].tolist() == ["a", "b", "c"]
    assert s["pos"].tolist() == [0, 1, 2]


def test_exact_duplicates_dropped_but_same_time_different_tracks_kept_in_file_order():
    ev = events([("u", "a", "2024-01-01 10:00"), ("u", "a", "2024-01-01 10:00"), ("u", "b", "2024-01-01 10:00"),
                 ("u", "c", "2024-01-01 10:03")])
    s, stats = sessionize(ev, min_session_len=1)
    assert stats.exact_duplicates_dropped == 1
    assert s["track_id"].tolist() == ["a", "b", "c"]


def test_a_user_with_one_event_is_dropped_by_the_length_filter_and_counted():
    ev = events([("solo", "a", "2024-01-01 10:00"), ("u", "a", "2024-01-01 10:00"), ("u", "b", "2024-01-01 10:04")])
    s, stats = sessionize(ev, min_session_len=2)
    assert set(s["user_id"]) == {"u"}
    assert stats.short_sessions_dropped_events == 1
    kept, _ = sessionize(ev, min_session_len=1)
    assert kept["session_id"].nunique() == 2


def test_sessions_never_span_two_users():
    ev = events([("u1", "a", "2024-01-01 10:00"), ("u2", "b", "2024-01-01 10:01"), ("u1", "c", "2024-01-01 10:02"),
                 ("u2", "d", "2024-01-01 10:03")])
    s, _ = sessionize(ev, min_session_len=1)
    assert s.groupby("session_id")["user_id"].nunique().max() == 1
    assert s["session_id"].nunique() == 2


def test_hour_and_dow_follow_the_configured_timezone():
    # 2024-01-05 23:30 UTC is a Friday; in Tokyo (UTC+9) it is Saturday 08:30
    ev = events([("u", "a", "2024-01-05 23:30"), ("u", "b", "2024-01-05 23:33")])
    utc, _ = sessionize(ev, timezone="UTC")
    tokyo, _ = sessionize(ev, timezone="Asia/Tokyo")
    assert (utc["hour"].iloc[0], utc["dow"].iloc[0]) == (23, 4)
    assert (tokyo["hour"].iloc[0], tokyo["dow"].iloc[0]) == (8, 5)


def test_input_timestamps_in_another_timezone_compare_as_instants():
    ev = events([("u", "a", "2024-01-01 10:00"), ("u", "b", "2024-01-01 10:30")], tz="Europe/Berlin")
    s, _ = sessionize(ev)
    assert s["session_id"].nunique() == 1


def test_collapse_repeats_counts_consecutive_plays_once():
    ev = events([("u", "a", "2024-01-01 10:00"), ("u", "a", "2024-01-01 10:03"), ("u", "b", "2024-01-01 10:06"),
                 ("u", "a", "2024-01-01 10:09")])
    s, stats = sessionize(ev, collapse_repeats=True)
    assert s["track_id"].tolist() == ["a", "b", "a"]
    assert stats.repeats_collapsed == 1


def test_session_ids_follow_start_time():
    ev = events([("u2", "a", "2024-01-01 09:00"), ("u2", "b", "2024-01-01 09:03"),
                 ("u1", "c", "2024-01-01 08:00"), ("u1", "d", "2024-01-01 08:03")])
    s, _ = sessionize(ev)
    starts = s.groupby("session_id")["ts"].min()
    assert starts.is_monotonic_increasing


def test_bad_arguments_are_refused():
    ev = events([("u", "a", "2024-01-01 10:00")])
    with pytest.raises(ValueError, match="gap_min"):
        sessionize(ev, gap_min=0)
    with pytest.raises(ValueError, match="column"):
        sessionize(ev.drop(columns="track_id"))
    naive = ev.copy()
    naive["ts"] = naive["ts"].dt.tz_localize(None)
    with pytest.raises(ValueError, match="timezone-aware"):
        sessionize(naive)


def test_generated_sessions_are_recovered_exactly():
    from playlistai.data.generate import make_world

    ev = make_world("tiny", 3).generate()
    s, stats = sessionize(ev, min_session_len=1)
    # the generator keeps plays of a session < 45 min apart and sessions > 45 min apart
    gaps = s.sort_values(["session_id", "pos"]).groupby("session_id")["ts"].diff().dropna()
    assert gaps.max() <= pd.Timedelta(minutes=45)
    assert stats.events_out == len(ev)
    assert np.all(s.groupby("session_id")["user_id"].nunique() == 1)
