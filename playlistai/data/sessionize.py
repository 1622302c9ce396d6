"""Events -> sessions (docs/ARCHITECTURE.md, "Sessions").

A user's plays are ordered by time (ties keep file order); a new session starts when the silence
since the previous play *exceeds* `gap_min` minutes (a gap of exactly `gap_min` stays in the
session). Each play gets its `hour` and `dow` (Monday = 0) in the configured timezone, and its
position `pos` in the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EVENT_COLUMNS = ("user_id", "track_id", "ts", "artist_id", "genre")


@dataclass
class SessionizeStats:
    events_in: int
    exact_duplicates_dropped: int
    short_sessions_dropped_events: int
    repeats_collapsed: int
    sessions: int
    events_out: int

    def as_metrics(self) -> dict[str, float]:
        n = max(self.events_in, 1)
        return {
            "events_in": self.events_in,
            "events_out": self.events_out,
            "sessions": self.sessions,
            "dropped_share_duplicates": self.exact_duplicates_dropped / n,
            "dropped_share_short_sessions": self.short_sessions_dropped_events / n,
            "dropped_share_collapsed_repeats": self.repeats_collapsed / n,
        }


def validate_events(events: pd.DataFrame) -> None:
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; expected {list(EVENT_COLUMNS)}")
    if not isinstance(events["ts"].dtype, pd.DatetimeTZDtype):
        raise ValueError("events column 'ts' must be a timezone-aware (UTC) timestamp")


# why `mark_sessions` marks a play (DROP_DUPLICATE: the plays it drops before sorting)
KEPT, DROP_DUPLICATE, DROP_COLLAPSED, DROP_SHORT = 0, 1, 2, 3
SESSION_COLUMNS = ("session_id", "user_id", "track_id", "ts", "artist_id", "genre", "hour", "dow", "pos")


def _check_args(gap_min: float, min_session_len: int) -> None:
    if gap_min <= 0:
        raise ValueError("gap_min must be > 0")
    if min_session_len < 1:
        raise ValueError("min_session_len must be >= 1")


def mark_sessions(
    ev: pd.DataFrame, gap_min: float, min_session_len: int, collapse_repeats: bool
) -> tuple[pd.DataFrame, int]:
    """The per-user part of `sessionize`, for any set of whole users.

    `ev` holds EVENT_COLUMNS and `_order` (the play's row in the file), in file order. Returns the
    plays that are not exact duplicates, sorted by (user, ts, _order), with a provisional
    `session_id` (numbered within `ev`) and `_drop` (KEPT, DROP_COLLAPSED or DROP_SHORT), and the
    number of duplicates dropped.
    """
    n_in = len(ev)
    ev = ev.drop_duplicates(subset=["user_id", "track_id", "ts"], keep="first")
    n_dupes = n_in - len(ev)
    ev = ev.sort_values(["user_id", "ts", "_order"], kind="mergesort").reset_index(drop=True)

    gap = ev["ts"].diff().dt.total_seconds().to_numpy()
    new_user = (ev["user_id"] != ev["user_id"].shift()).to_numpy()
    new_session = new_user | (np.nan_to_num(gap, nan=np.inf) > gap_min * 60.0)
    new_session[0:1] = True
    ev["session_id"] = np.cumsum(new_session).astype(np.int64) - 1

    drop = np.full(len(ev), KEPT, dtype=np.int8)
    if collapse_repeats:
        same = (ev["session_id"] == ev["session_id"].shift()) & (ev["track_id"] == ev["track_id"].shift())
        drop[same.to_numpy()] = DROP_COLLAPSED
    left = drop == KEPT
    sizes = np.bincount(ev["session_id"].to_numpy()[left], minlength=int(new_session.sum()))
    drop[left & (sizes[ev["session_id"].to_numpy()] < min_session_len)] = DROP_SHORT
    ev["_drop"] = drop
    return ev, n_dupes


def add_context(ev: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """`hour` and `dow` (Monday = 0) of each play in `timezone`."""
    local = ev["ts"].dt.tz_convert(timezone)
    ev["hour"] = local.dt.hour.astype(np.int8)
    ev["dow"] = local.dt.dayofweek.astype(np.int8)
    return ev


def sessionize(
    events: pd.DataFrame,
    gap_min: float = 45.0,
    min_session_len: int = 2,
    collapse_repeats: bool = False,
    timezone: str = "UTC",
) -> tuple[pd.DataFrame, SessionizeStats]:
    """Split each user's plays into sessions; returns (sessions frame, stats).

    Exact duplicate rows (same user, track and timestamp) are dropped: they are double-logged
    plays, not re-listens. With `collapse_repeats`, consecutive plays of the same track within a
    session count once.
    """
    validate_events(events)
    _check_args(gap_min, min_session_len)
    n_in = len(events)
    ev = events.loc[:, list(EVENT_COLUMNS)].copy()
    ev["_order"] = np.arange(len(ev))
    ev, n_dupes = mark_sessions(ev, gap_min, min_session_len, collapse_repeats)
    n_collapsed = int((ev["_drop"] == DROP_COLLAPSED).sum())
    n_short = int((ev["_drop"] == DROP_SHORT).sum())
    ev = ev[(ev["_drop"] == KEPT).to_numpy()].drop(columns="_drop")

    # renumber sessions by start time so ids follow the timeline (ties by user)
    starts = ev.groupby("session_id").agg(start=("ts", "min"), user=("user_id", "first"))
    starts = starts.sort_values(["start", "user"], kind="mergesort")
    remap = pd.Series(np.arange(len(starts), dtype=np.int64), index=starts.index)
    ev["session_id"] = remap.loc[ev["session_id"].to_numpy()].to_numpy()
    ev = ev.sort_values(["session_id", "ts", "_order"], kind="mergesort").reset_index(drop=True)
    ev["pos"] = ev.groupby("session_id").cumcount().astype(np.int32)

    ev = add_context(ev, timezone)
    ev = ev.drop(columns="_order")
    ev = ev[list(SESSION_COLUMNS)]
    stats = SessionizeStats(
        events_in=n_in,
        exact_duplicates_dropped=n_dupes,
        short_sessions_dropped_events=n_short,
        repeats_collapsed=n_collapsed,
        sessions=int(ev["session_id"].nunique()),
        events_out=len(ev),
    )
    return ev, stats


def session_lengths(sessions: pd.DataFrame) -> np.ndarray:
    return sessions.groupby("session_id").size().to_numpy()
