"""The Ray engine's `preprocess` merges its groups' files in the driver: the merge gives the rows of
all files in the sessions file's order, whatever the batch size, and the counts of tracks and
artists taken as the rows pass are pandas' counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from playlistai.data import ray_engine
from playlistai.data.ray_engine import SESSION_ORDER, ValueCounts, merged_in_order


def group_files(tmp_path: Path, groups: int, rng: np.random.Generator) -> tuple[list[str], pd.DataFrame]:
    """Files of whole users, each sorted in SESSION_ORDER; sessions of 1-30 plays, starts that tie
    across users and files, some files much shorter than others."""
    frames = []
    for g in range(groups):
        rows = []
        for u in range(int(rng.integers(1, 12)) if g % 3 else 40):
            user = f"u{g:02d}-{u:02d}"
            for _ in range(int(rng.integers(1, 6))):
                start = int(rng.integers(0, 50)) * 1_000       # few distinct starts: ties across users
                for k in range(int(rng.integers(1, 31))):
                    rows.append((start, user, start + k * 10, len(rows) + 1_000 * g, f"t{rng.integers(0, 40)}"))
        frames.append(pd.DataFrame(rows, columns=[*SESSION_ORDER, "track_id"]).sort_values(SESSION_ORDER))
    paths = []
    for g, frame in enumerate(frames):
        path = tmp_path / f"group-{g}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=7)
        paths.append(str(path))
    whole = pd.concat(frames).sort_values(SESSION_ORDER).reset_index(drop=True)
    return paths, whole


@pytest.mark.parametrize("batch_rows", [1, 5, 64, 100_000])
def test_the_merge_gives_every_row_once_in_the_sessions_order(tmp_path, batch_rows):
    paths, whole = group_files(tmp_path, 9, np.random.default_rng(batch_rows))
    tables = list(merged_in_order(paths, batch_rows))
    merged = pa.concat_tables(tables).to_pandas()
    pd.testing.assert_frame_equal(merged, whole)
    if batch_rows < 100:
        assert len(tables) > len(paths)                # many rounds, each its own sorted piece


def test_a_session_longer_than_a_batch_stays_whole_and_in_order(tmp_path):
    frame = pd.DataFrame({"_start_ns": [5] * 50 + [6] * 3, "user_id": ["a"] * 50 + ["a"] * 3,
                          "_ts_ns": list(range(5, 55)) + [60, 61, 62], "_order": range(53), "track_id": "t"})
    other = pd.DataFrame({"_start_ns": [5, 5, 7], "user_id": ["b", "b", "b"], "_ts_ns": [5, 9, 7],
                          "_order": [100, 101, 102], "track_id": "t"})
    paths = []
    for name, part in (("a", frame), ("b", other)):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), tmp_path / f"{name}.parquet")
        paths.append(str(tmp_path / f"{name}.parquet"))
    merged = pa.concat_tables(list(merged_in_order(paths, 4))).to_pandas()
    assert merged["user_id"].tolist() == ["a"] * 50 + ["b", "b"] + ["a"] * 3 + ["b"]
    assert merged["_order"].tolist() == [*range(50), 100, 101, 50, 51, 52, 102]


def test_value_counts_are_pandas_counts_without_nulls_across_many_combines(monkeypatch):
    monkeypatch.setattr(ray_engine, "ROW_GROUP_ROWS", 8)       # combine after every few tables
    rng = np.random.default_rng(0)
    values = pd.Series([None if v == 0 else f"a{v}" for v in rng.zipf(1.5, 5_000) % 300], dtype=object)
    counts = ValueCounts()
    for start in range(0, len(values), 137):
        counts.add_values(pa.chunked_array([pa.array(values.iloc[start:start + 137].tolist(), pa.string())]))
    got = counts.result().to_pandas().set_index("value")["count"].sort_index()
    expected = values.value_counts().sort_index()
    assert got.to_dict() == expected.to_dict()
    assert ValueCounts().result().num_rows == 0


def test_a_file_without_rows_takes_no_part_in_the_merge(tmp_path):
    paths, whole = group_files(tmp_path, 3, np.random.default_rng(7))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pandas(whole.head(0), preserve_index=False), empty)
    merged = pa.concat_tables(list(merged_in_order([str(empty), *paths], 3))).to_pandas()
    pd.testing.assert_frame_equal(merged, whole)
