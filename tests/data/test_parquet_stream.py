"""The pieces of the Ray engine that run on the driver, without Ray: the Parquet file streamed in
batches is the file pandas writes whole, sessions are numbered across batches, and the session-length
statistics computed from counts are numpy's."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from playlistai.data.parquet_io import HEAD_ROWS, ParquetStream
from playlistai.data.ray_engine import Histogram, Numbering, SessionSums, parse_engine


def frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "session_id": np.arange(n, dtype=np.int64) // 3,
        "user_id": pd.Series([f"u{i}" for i in rng.integers(0, 50, n)], dtype="string"),
        "ts": pd.to_datetime(rng.integers(1.6e18, 1.7e18, n)).tz_localize("UTC"),
        # null in the first row groups, set later: pandas types the column by all its values
        "genre": pd.Series([None] * (n // 2) + ["pop"] * (n - n // 2), dtype=object),
        "hour": rng.integers(0, 24, n).astype(np.int8),
        "pos": (np.arange(n) % 3).astype(np.int32),
    })


@pytest.mark.parametrize("kind", ["frames", "tables"])
@pytest.mark.parametrize("batch", [1, 7, 100, 1000])
def test_a_file_streamed_in_batches_is_the_file_pandas_writes(tmp_path, batch, kind):
    rows = 2_500
    df = frame(rows)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "whole.parquet",
                   row_group_size=1_000, compression="snappy")
    # Arrow batches in plain Arrow types (strings, no pandas metadata), typed as pandas by frame_of
    plain = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    stream = ParquetStream(tmp_path / "stream.parquet", lambda cols: {c: df[c].notna().any() for c in cols},
                           row_group_rows=1_000, frame_of=lambda t: t.to_pandas().astype({"user_id": "string"}))
    for start in range(0, rows, batch):
        if kind == "frames":
            stream.write(df.iloc[start:start + batch].reset_index(drop=True))
        else:
            stream.write_table(plain.slice(start, batch))
    stream.close(df.head(0))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "stream.parquet") == digest(tmp_path / "whole.parquet")
    pd.testing.assert_frame_equal(stream.head, df.head(HEAD_ROWS))


def test_an_empty_output_is_written_as_pandas_writes_it(tmp_path):
    empty = frame(10).head(0)
    stream = ParquetStream(tmp_path / "stream.parquet", lambda cols: {})
    stream.close(empty)
    empty.to_parquet(tmp_path / "whole.parquet", index=False)
    assert (tmp_path / "stream.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_sessions_are_numbered_across_batches_and_disorder_is_refused():
    keys = pd.DataFrame({"start": [1, 1, 1, 2, 2, 5, 5, 5, 5, 9], "user": list("aaabbccccd")})
    numbering, lengths = Numbering(["start", "user"]), Histogram()
    sums = SessionSums(lambda done: lengths.add(done[:, 0]))
    got = []
    for lo, hi in ((0, 2), (2, 3), (3, 8), (8, 10)):
        rank, pos = numbering(keys.iloc[lo:hi])
        sums.add(rank, np.ones((len(rank), 1)))
        got += list(zip(rank.tolist(), pos.tolist(), strict=True))
    sums.finish()
    assert got == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3), (3, 0)]
    assert lengths.counts == {3: 1, 2: 1, 4: 1, 1: 1}
    with pytest.raises(RuntimeError, match="out of order"):
        numbering(pd.DataFrame({"start": [4], "user": ["z"]}))


def test_length_statistics_from_counts_are_numpys():
    rng = np.random.default_rng(1)
    for trial in range(300):
        values = rng.geometric(rng.uniform(0.05, 0.9), int(rng.integers(1, 2000))).astype(np.int64)
        hist = Histogram()
        for part in np.array_split(values, 3):
            hist.add(part)
        assert hist.mean() == float(values.mean()), trial
        assert hist.median() == float(np.median(values)), trial
        for q in (0, 5, 50, 95, 99, 100):
            assert hist.percentile(q) == float(np.percentile(values, q)), (trial, q)
        assert np.array_equal(np.sort(hist.sample()), np.sort(values))


def test_an_unknown_engine_is_refused_with_its_name():
    assert parse_engine(" Ray ") == "ray"
    with pytest.raises(ValueError, match="engine: expected one of pandas, ray, got 'spark'"):
        parse_engine("spark")
