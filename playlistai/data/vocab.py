"""The track vocabulary: track ids of the training period that get an index (0 is padding).

It carries each track's artist (and genre), so serving can apply artist rules, and its training
count, so the popularity fallback and the popularity-bias metric need nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PAD = 0


def track_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per track of `events`: `track_id`, its first artist and genre (the first non-null
    value in the frame's row order) and its `count` of plays."""
    counts = events.groupby("track_id", sort=False).size().rename("count")
    meta = events.groupby("track_id", sort=False)[["artist_id", "genre"]].first()
    return meta.join(counts).reset_index()


@dataclass
class Vocabulary:
    track_ids: list[str]                  # position i holds the track of index i + 1
    artist_ids: list[str | None]
    genres: list[str | None]
    counts: np.ndarray                    # training plays per track, aligned with track_ids
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.track_ids) == len(self.artist_ids) == len(self.genres) == len(self.counts)):
            raise ValueError("vocabulary columns differ in length")
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self._index = {t: i + 1 for i, t in enumerate(self.track_ids)}
        if len(self._index) != len(self.track_ids):
            raise ValueError("vocabulary has duplicate track ids")

    # size of the embedding table, padding included
    @property
    def size(self) -> int:
        return len(self.track_ids) + 1

    def __len__(self) -> int:
        return len(self.track_ids)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._index

    def index_of(self, track_id: str) -> int:
        """Index of a track, PAD (0) when unknown."""
        return self._index.get(track_id, PAD)

    def encode(self, track_ids) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(t, PAD) for t in track_ids), dtype=np.int64, count=len(track_ids))

    def decode(self, indices) -> list[str]:
        return [self.track_ids[i - 1] for i in np.asarray(indices, dtype=np.int64)]

    def artist_index(self) -> np.ndarray:
        """Integer artist code per vocabulary index (PAD and unknown artists get -1)."""
        codes, _ = pd.factorize(pd.Series(self.artist_ids, dtype="object"))
        return np.concatenate([[-1], codes]).astype(np.int64)

    def popularity(self) -> np.ndarray:
        """Training play counts per index (PAD gets 0)."""
        return np.concatenate([[0], self.counts]).astype(np.int64)

    def popularity_percentile(self) -> np.ndarray:
        """Percentile (0..1] of each index's training popularity; PAD gets 0."""
        ranks = pd.Series(self.counts).rank(method="average", pct=True).to_numpy()
        return np.concatenate([[0.0], ranks])

    # -- building and persistence ------------------------------------------------------------

    @classmethod
    def build(cls, train_events: pd.DataFrame, min_freq: int) -> Vocabulary:
        """Index every track seen at least `min_freq` times, most played first (ties by id)."""
        return cls.from_track_table(track_table(train_events), min_freq)

    @classmethod
    def from_track_table(cls, table: pd.DataFrame, min_freq: int) -> Vocabulary:
        """The vocabulary of a `track_table` (its rows in any order)."""
        if min_freq < 1:
            raise ValueError("min_freq must be >= 1")
        table = table[table["count"] >= min_freq]
        table = table.sort_values(["count", "track_id"], ascending=[False, True], kind="mergesort")
        return cls.from_frame(table)

    @classmethod
    def from_frame(cls, table: pd.DataFrame) -> Vocabulary:
        if "index" in table.columns:
            table = table.sort_values("index")
            expected = np.arange(1, len(table) + 1)
            if not np.array_equal(table["index"].to_numpy(), expected):
                raise ValueError("vocabulary indices must run 1..N without gaps")
        nullable = lambda col: [None if pd.isna(v) else str(v) for v in table[col]]  # noqa: E731
        return cls(
            track_ids=[str(t) for t in table["track_id"]],
            artist_ids=nullable("artist_id") if "artist_id" in table else [None] * len(table),
            genres=nullable("genre") if "genre" in table else [None] * len(table),
            counts=table["count"].to_numpy() if "count" in table else np.ones(len(table), np.int64),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "index": np.arange(1, len(self) + 1, dtype=np.int64),
                "track_id": self.track_ids,
                "artist_id": pd.Series(self.artist_ids, dtype="string"),
                "genre": pd.Series(self.genres, dtype="string"),
                "count": self.counts,
            }
        )

    def to_json(self, path: Path) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "track_ids": self.track_ids,
                    "artist_ids": self.artist_ids,
                    "genres": self.genres,
                    "counts": self.counts.tolist(),
                }
            )
        )

    @classmethod
    def from_json(cls, path: Path) -> Vocabulary:
        obj = json.loads(Path(path).read_text())
        return cls(obj["track_ids"], obj["artist_ids"], obj["genres"], np.asarray(obj["counts"]))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_json(path)
        return cls.from_frame(pd.read_parquet(path))
