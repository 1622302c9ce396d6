"""Replay synthetic traffic against a running API, with or without a known shift (the drift demo).

Requests are next-track cases of the training split, drawn at random: the history is the session's
tracks before a target play and the context is that play's hour and dow, exactly what the packaged
drift reference was computed over. So unshifted traffic matches the reference, and a shift changes
one known feature:

    none        the training cases as they are
    hour        the context hour drawn from 02:00-05:59 (a night-time audience)
    popularity  every history track replaced by one of the catalog's least played tracks

Only a local API is accepted (127.0.0.1, localhost, ::1), and the request count is bounded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

SHIFTS = ("none", "hour", "popularity")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 20_000
MAX_HISTORY = 500              # the API's limit
NIGHT_HOURS = (2, 6)           # [start, end)
RARE_TRACK_SHARE = 0.2         # the least played fifth of the catalog


@dataclass(frozen=True)
class ReplayRequest:
    tracks: list[str]
    hour: int
    dow: int


def training_cases(events: pd.DataFrame) -> pd.DataFrame:
    """One row per next-track case of a split (a target with >= 1 track before it): where its
    history starts and ends in the sorted events, and the target's hour and dow."""
    events = events.sort_values(["session_id", "pos"], kind="mergesort").reset_index(drop=True)
    position = events.groupby("session_id", sort=False).cumcount().to_numpy()
    is_target = events["is_target"].to_numpy(bool) if "is_target" in events else np.ones(len(events), bool)
    case = np.flatnonzero(is_target & (position >= 1))
    return pd.DataFrame({"start": case - position[case], "end": case,
                         "hour": events["hour"].to_numpy()[case], "dow": events["dow"].to_numpy()[case]})


def make_requests(events: pd.DataFrame, n: int, shift: str = "none", seed: int = 0) -> list[ReplayRequest]:
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
    if not 1 <= n <= MAX_REQUESTS:
        raise ValueError(f"requests must be in 1..{MAX_REQUESTS}, got {n}")
    events = events.sort_values(["session_id", "pos"], kind="mergesort").reset_index(drop=True)
    cases = training_cases(events)
    if cases.empty:
        raise ValueError("the training split has no next-track case to replay")
    track_ids = events["track_id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    picked = cases.iloc[rng.choice(len(cases), size=n, replace=len(cases) < n)]
    rare: np.ndarray | None = None
    if shift == "popularity":
        counts = events["track_id"].astype(str).value_counts(ascending=True)
        rare = counts.index.to_numpy()[: max(1, int(len(counts) * RARE_TRACK_SHARE))]
    requests = []
    for start, end, hour, dow in picked[["start", "end", "hour", "dow"]].itertuples(index=False):
        tracks = track_ids[max(start, end - MAX_HISTORY):end].tolist()
        if shift == "hour":
            hour = rng.integers(*NIGHT_HOURS)
        elif shift == "popularity":
            tracks = rng.choice(rare, size=len(tracks)).tolist()
        requests.append(ReplayRequest(tracks, int(hour), int(dow)))
    return requests


def require_local(api_url: str) -> str:
    host = urlparse(api_url).hostname
    if host not in LOCAL_HOSTS:
        raise ValueError(f"the replay only sends traffic to a local API (127.0.0.1, localhost), not {api_url!r}")
    return api_url.rstrip("/")


def replay(api_url: str, requests: list[ReplayRequest], timeout_s: float = 10.0, settle_s: float = 2.0) -> dict:
    """POST every request to /continue; wait `settle_s` so that the API writes its feature rows."""
    import httpx

    base = require_local(api_url)
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=timeout_s) as client:
        for request in requests:
            response = client.post("/continue", json={"tracks": request.tracks, "k": 10,
                                                      "context": {"hour": request.hour, "dow": request.dow}})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    elapsed = time.perf_counter() - started
    time.sleep(settle_s)
    return {"requests": len(requests), "statuses": statuses, "seconds": round(elapsed, 2)}


def replay_from_data_dir(api_url: str, data_dir: str | Path, n: int, shift: str, seed: int = 0) -> dict:
    from playlistai.data.sequences import load_split

    require_local(api_url)
    requests = make_requests(load_split(data_dir, "train"), n, shift, seed)
    return replay(api_url, requests)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Replay training-like /continue traffic against a local API.")
    parser.add_argument("--api-url", default="http://127.0.0.1:8088")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--shift", choices=SHIFTS, default="none")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        outcome = replay_from_data_dir(args.api_url, args.data_dir, args.requests, args.shift, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: replay: {exc}") from None
    except OSError as exc:     # httpx.ConnectError and the like
        raise SystemExit(f"error: replay: cannot reach the API at {args.api_url}: {exc}") from None
    print(f"replay: {outcome['requests']} requests with shift={args.shift} in {outcome['seconds']} s, "
          f"statuses {outcome['statuses']}")


if __name__ == "__main__":
    main()
