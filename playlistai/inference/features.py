"""Request features that drift monitoring compares between live traffic and training data.

One definition, used on both sides:

- `history_length`: tracks in the request's history, as sent (unknown ones included)
- `hour`, `dow`: the context of the next play
- `unknown_share`: share of the history's tracks that are not in the vocabulary
- `mean_popularity_percentile`: mean training popularity percentile (0..1] of the known tracks;
  NaN when none is known

The training reference is computed over the training sessions' next-track cases (DESIGN.md §3):
for each target event, the raw tracks before it are the "request", so the reference sees unknown
tracks exactly as the API does (tracks below the vocabulary's minimum frequency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from playlistai.data.vocab import PAD, Vocabulary

FEATURES = ("history_length", "hour", "dow", "unknown_share", "mean_popularity_percentile")
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
# histogram bin edges per feature; history lengths beyond the last edge fall into the last bin
BIN_EDGES = {
    "history_length": [1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 22, 30, 40, 50, 75, 100, 1_000_000],
    "hour": list(range(25)),
    "dow": list(range(8)),
    "unknown_share": [round(x, 2) for x in np.linspace(0, 1, 11)],
    "mean_popularity_percentile": [round(x, 2) for x in np.linspace(0, 1, 21)],
}
DEFAULT_SAMPLE_SIZE = 5000


def history_features(tracks: Sequence[str], vocab: Vocabulary, popularity_percentile: np.ndarray) -> dict:
    """Features of one request's history (`hour`/`dow` are the request's own and not repeated here)."""
    tracks = [str(t) for t in tracks]
    idx = vocab.encode(tracks) if tracks else np.zeros(0, np.int64)
    known = idx[idx != PAD]
    n = len(tracks)
    return {
        "history_length": n,
        "known_length": int(len(known)),
        "unknown_share": float((n - len(known)) / n) if n else 0.0,
        "mean_popularity_percentile": float(popularity_percentile[known].mean()) if len(known) else None,
    }


def training_case_features(events: pd.DataFrame, vocab: Vocabulary) -> pd.DataFrame:
    """One row of FEATURES per next-track case of a split file (vectorised over all sessions)."""
    events = events.sort_values(["session_id", "pos"], kind="mergesort")
    idx = vocab.encode(events["track_id"].astype(str).tolist())
    known = (idx != PAD).astype(np.float64)
    pct = vocab.popularity_percentile()[idx] * known
    sessions = events["session_id"].to_numpy()
    group = pd.Series(sessions)
    # counts of the events *before* each event in its session: cumulative sum minus the event itself
    before = lambda values: pd.Series(values).groupby(group).cumsum().to_numpy() - values  # noqa: E731
    n_before = group.groupby(group).cumcount().to_numpy().astype(np.float64)
    known_before = before(known)
    pct_before = before(pct)
    is_target = events["is_target"].to_numpy().astype(bool) if "is_target" in events else np.ones(len(events), bool)
    case = is_target & (n_before >= 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pct = np.where(known_before > 0, pct_before / np.maximum(known_before, 1), np.nan)
    return pd.DataFrame(
        {
            "history_length": n_before[case],
            "hour": events["hour"].to_numpy()[case].astype(np.float64),
            "dow": events["dow"].to_numpy()[case].astype(np.float64),
            "unknown_share": (1.0 - known_before / np.maximum(n_before, 1))[case],
            "mean_popularity_percentile": mean_pct[case],
        }
    )


def reference_statistics(features: pd.DataFrame, sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0):
    """(JSON-able statistics per feature, a row sample as {feature: array}) of training features."""
    stats: dict = {"n_cases": int(len(features)), "features": {}, "quantile_levels": list(QUANTILES)}
    for name in FEATURES:
        values = features[name].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        edges = np.asarray(BIN_EDGES[name], dtype=np.float64)
        counts, _ = np.histogram(np.clip(finite, edges[0], edges[-1]), bins=edges)
        stats["features"][name] = {
            "count": int(len(finite)),
            "missing": int(len(values) - len(finite)),
            "mean": float(finite.mean()) if len(finite) else None,
            "std": float(finite.std()) if len(finite) else None,
            "quantiles": [float(q) for q in np.quantile(finite, QUANTILES)] if len(finite) else [],
            "histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
        }
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), size=min(sample_size, len(features)), replace=False))
    sample = {name: features[name].to_numpy(dtype=np.float64)[rows] for name in FEATURES}
    return stats, sample


def save_reference(stats: dict, sample: dict, stats_path: Path, sample_path: Path) -> None:
    Path(stats_path).write_text(json.dumps(stats, indent=2, sort_keys=True))
    with open(sample_path, "wb") as f:
        np.savez_compressed(f, **sample)


def load_reference(stats_path: Path, sample_path: Path) -> tuple[dict, pd.DataFrame]:
    stats = json.loads(Path(stats_path).read_text())
    with np.load(sample_path) as z:
        sample = pd.DataFrame({name: z[name] for name in FEATURES})
    return stats, sample
