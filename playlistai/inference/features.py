"""Request features that drift monitoring compares between live traffic and training data.

The drift-feature schema, declared once here: the API writes one row of these per answered request
(serving/traffic.py), the model package holds them over the training next-track cases, and the drift
job tests one against the other (monitoring/drift.py). Names are those of the Prometheus series
(`drift_psi{feature="history_len"}`), the Grafana dashboard and the MLflow metrics (`drift_psi_history_len`):

    history_len    tracks in the history, as sent (unknown ones included)      continuous
    unknown_share  share of the history's tracks that are not in the vocabulary continuous
    mean_pop_pct   mean training popularity percentile (0..1] of the known       continuous
                   tracks; missing when none is known
    top_score      the best slate score (needs the model: live traffic only)    continuous
    hour, dow      the context of the next play                                 categorical (24, 7)

The training reference is computed over the training sessions' next-track cases (docs/ARCHITECTURE.md,
"Next-track cases"): for each target event, the raw tracks before it are the "request", so the
reference sees unknown tracks exactly as the API does (tracks below the vocabulary's minimum frequency).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from playlistai.data.vocab import PAD, Vocabulary


@dataclass(frozen=True)
class DriftFeature:
    name: str
    kind: Literal["continuous", "categorical"]
    bins: tuple[float, ...] = ()         # histogram edges of the packaged statistics
    categories: int = 0                  # categorical: the values are 0 .. categories - 1
    in_reference: bool = True            # computed over the training cases (top_score needs the model)
    former_name: str | None = None       # its name in the drift reference of packages written earlier


DRIFT_FEATURES = (
    # history lengths beyond the last edge fall into the last bin
    DriftFeature("history_len", "continuous",
                 bins=(1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 22, 30, 40, 50, 75, 100, 1_000_000),
                 former_name="history_length"),
    DriftFeature("unknown_share", "continuous", bins=tuple(round(x, 2) for x in np.linspace(0, 1, 11))),
    DriftFeature("mean_pop_pct", "continuous", bins=tuple(round(x, 2) for x in np.linspace(0, 1, 21)),
                 former_name="mean_popularity_percentile"),
    DriftFeature("top_score", "continuous", in_reference=False),
    DriftFeature("hour", "categorical", bins=tuple(range(25)), categories=24),
    DriftFeature("dow", "categorical", bins=tuple(range(8)), categories=7),
)
DRIFT_FEATURE_NAMES = tuple(f.name for f in DRIFT_FEATURES)               # a request's row
FEATURES = tuple(f.name for f in DRIFT_FEATURES if f.in_reference)        # the packaged training reference
CONTINUOUS = tuple(f.name for f in DRIFT_FEATURES if f.kind == "continuous")
CATEGORICAL = {f.name: f.categories for f in DRIFT_FEATURES if f.kind == "categorical"}
BIN_EDGES = {f.name: list(f.bins) for f in DRIFT_FEATURES if f.in_reference}
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
DEFAULT_SAMPLE_SIZE = 5000
# the field of the Redis hash DRIFT_STATE_KEY that holds the drift job's latest result as JSON:
# monitoring/drift_job.py writes it, serving/traffic.py reads it for /metrics
DRIFT_STATE_FIELD = "json"


def _history(tracks: Sequence[str], vocab: Vocabulary, popularity_percentile: np.ndarray):
    """(tracks, known tracks, mean popularity percentile of the known ones or None) of one history."""
    tracks = [str(t) for t in tracks]
    idx = vocab.encode(tracks) if tracks else np.zeros(0, np.int64)
    known = idx[idx != PAD]
    mean_pct = float(popularity_percentile[known].mean()) if len(known) else None
    return len(tracks), int(len(known)), mean_pct


def history_features(tracks: Sequence[str], vocab: Vocabulary, popularity_percentile: np.ndarray) -> dict:
    """What the Recommender reports of a request's history: history_length, known_length,
    unknown_share, mean_popularity_percentile (None if no track is known)."""
    n, n_known, mean_pct = _history(tracks, vocab, popularity_percentile)
    return {
        "history_length": n,
        "known_length": n_known,
        "unknown_share": float((n - n_known) / n) if n else 0.0,
        "mean_popularity_percentile": mean_pct,
    }


def request_features(
    tracks: Sequence[str],
    hour: int,
    dow: int,
    top_score: float | None = None,
    vocab: Vocabulary | None = None,
    popularity_percentile: np.ndarray | None = None,
) -> dict:
    """The drift row of one request, under DRIFT_FEATURE_NAMES; a value that is missing (no vocabulary,
    no known track, no finite score) is left out."""
    row: dict = {"history_len": len(tracks), "hour": int(hour), "dow": int(dow)}
    if vocab is not None and popularity_percentile is not None:
        n, n_known, mean_pct = _history(tracks, vocab, popularity_percentile)
        row["unknown_share"] = float((n - n_known) / n) if n else 0.0
        if mean_pct is not None:
            row["mean_pop_pct"] = mean_pct
    if top_score is not None and math.isfinite(top_score):
        row["top_score"] = float(top_score)
    return row


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
            "history_len": n_before[case],
            "hour": events["hour"].to_numpy()[case].astype(np.float64),
            "dow": events["dow"].to_numpy()[case].astype(np.float64),
            "unknown_share": (1.0 - known_before / np.maximum(n_before, 1))[case],
            "mean_pop_pct": mean_pct[case],
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
    """(statistics, sample rows under FEATURES) of a package's drift reference, earlier packages included."""
    stats = json.loads(Path(stats_path).read_text())
    with np.load(sample_path) as z:
        columns = {}
        for feature in DRIFT_FEATURES:
            if not feature.in_reference:
                continue
            stored = feature.name if feature.name in z.files else feature.former_name
            columns[feature.name] = z[stored]
        sample = pd.DataFrame(columns)
    return stats, sample
