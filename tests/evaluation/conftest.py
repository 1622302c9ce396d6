"""Fixtures of the evaluation tests."""

import numpy as np
import pandas as pd
import pytest

from playlistai.data.vocab import Vocabulary


@pytest.fixture
def tiny_split() -> tuple[pd.DataFrame, Vocabulary]:
    """Four sessions in the split-file format; track "x" is not in the vocabulary."""
    rows = []
    sessions = {10: ["a", "b", "c", "d"], 11: ["b", "x", "c"], 12: ["c"], 13: ["d", "a", "b", "a", "c"]}
    for sid, tracks in sessions.items():
        for pos, t in enumerate(tracks):
            rows.append({"session_id": sid, "user_id": "u", "track_id": t, "artist_id": "ar", "genre": "g",
                         "hour": 8 + pos, "dow": 2, "pos": pos, "is_target": pos > 0})
    vocab = Vocabulary(["a", "b", "c", "d"], ["ar"] * 4, [None] * 4, np.array([4, 3, 2, 1]))
    return pd.DataFrame(rows), vocab
