"""Cold start: what to play when no track of the request is known.

Plays per (hour of day, track) over the training sessions, shrunk towards global popularity:

    p(track | hour) = (plays[hour, track] + smoothing * p_global(track)) / (plays[hour] + smoothing)

An hour with many plays speaks for itself; a quiet hour (03:00) borrows from the whole day, so a
thin hour never serves a handful of accidental tracks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from playlistai.data.vocab import PAD, Vocabulary

N_HOURS = 24
DEFAULT_SMOOTHING = 200.0


@dataclass
class ContextPopularity:
    hour_counts: np.ndarray        # [24, V] plays per hour and vocabulary index (PAD column 0)
    global_counts: np.ndarray      # [V] training plays per index
    smoothing: float = DEFAULT_SMOOTHING

    def __post_init__(self) -> None:
        self.hour_counts = np.asarray(self.hour_counts, dtype=np.float64)
        self.global_counts = np.asarray(self.global_counts, dtype=np.float64)
        if self.hour_counts.shape != (N_HOURS, len(self.global_counts)):
            raise ValueError(
                f"popularity table shape {self.hour_counts.shape} does not match {len(self.global_counts)} tracks"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.global_counts)

    def probabilities(self) -> np.ndarray:
        """[24, V] smoothed p(track | hour); PAD gets 0."""
        total = self.global_counts.sum()
        p_global = self.global_counts / total if total > 0 else np.full(self.vocab_size, 1.0 / self.vocab_size)
        p_global = p_global.copy()
        p_global[PAD] = 0.0
        hour_counts = self.hour_counts.copy()
        hour_counts[:, PAD] = 0.0
        table = (hour_counts + self.smoothing * p_global) / (hour_counts.sum(axis=1, keepdims=True) + self.smoothing)
        table[:, PAD] = 0.0
        return table

    @classmethod
    def from_events(cls, events: pd.DataFrame | Iterable[pd.DataFrame], vocab: Vocabulary,
                    smoothing: float = DEFAULT_SMOOTHING):
        """Count the plays of vocabulary tracks per hour (`events` has `track_id` and `hour`): one
        frame, or frames read one at a time (a split streamed: memory for one frame, not the log)."""
        flat = np.zeros(N_HOURS * vocab.size, dtype=np.int64)
        for frame in [events] if isinstance(events, pd.DataFrame) else events:
            idx = vocab.encode(frame["track_id"].astype(str).tolist())
            hours = frame["hour"].to_numpy().astype(np.int64)
            known = idx != PAD
            flat += np.bincount(hours[known] * vocab.size + idx[known], minlength=N_HOURS * vocab.size)
        return cls(flat.reshape(N_HOURS, vocab.size), vocab.popularity(), smoothing)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(
                f, hour_counts=self.hour_counts, global_counts=self.global_counts, smoothing=np.float64(self.smoothing)
            )

    @classmethod
    def load(cls, path: Path) -> ContextPopularity:
        with np.load(path) as z:
            return cls(z["hour_counts"], z["global_counts"], float(z["smoothing"]))
