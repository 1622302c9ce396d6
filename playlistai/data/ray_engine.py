"""The `preprocess` and `splits` stages on Ray Data (`engine=ray`), for logs larger than one machine.

The outputs are those of the pandas engine, byte for byte: the same sessions and session ids, the
same splits, the same vocabulary in the same order, the same single Parquet files (so their hashes,
the MLflow datasets and `data_hash` agree too). How each step is spread over the cluster:

- **Per-user work in groups of whole users.** Rows are grouped by a hash of the user (of the session
  for the temporal split), `groupby(...).map_groups(...)`, and each group runs the pandas engine's
  own code (`mark_sessions`, the split rules): a group holds whole users, so what it computes is
  what the pandas engine computes for them. Rows that a rule drops stay in the group's output with
  the reason, so the counts the stages log are aggregations.
- **Global steps are aggregations or sorts.** Distinct users and tracks are group counts; the
  temporal cut-offs are order statistics of the session starts (the k-th latest start); the
  vocabulary's play counts and first artist/genre per track are computed in groups of whole
  tracks, and only the vocabulary itself (the tracks played often enough) comes to the driver.
- **Writing.** The driver writes each output one row group at a time (`ParquetStream`, the row
  groups pandas writes) and numbers sessions and positions as they pass: session ids follow the
  sessions' order (start, then user), as the pandas engine numbers them. The driver holds a row
  group and a few batches, never the data set.
- **preprocess: sorted groups, merged.** Each group of whole users writes its kept plays, sorted
  into the sessions file's order, to a file of its own beside the output; the driver merges the
  groups' files (a k-way merge that reads each file once, in batches) into the sessions file and
  counts tracks and artists as the rows pass. No global sort, and no second pass for the counts.
- **Other outputs** (`splits` of a file out of session order, `leave_one_out`) are sorted in Ray
  into the order of their file and streamed to the driver.
- **The temporal split of a file in session order** (the sessions file `preprocess` writes) takes
  none of this: blocks of whole sessions, read in file order, are split where they are read, the
  vocabulary is counted per block and combined in the driver, and the three splits stream into
  their files in the file's own order (see "splits: temporal, in the sessions file's own order").

Ray is the cluster at `RAY_ADDRESS`, or a local Ray on this machine's cores; `data_dir` must then be
a path that every node reads and writes (a shared volume).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from playlistai.data.parquet_io import ROW_GROUP_ROWS, ParquetStream
from playlistai.data.sessionize import (
    DROP_COLLAPSED,
    DROP_DUPLICATE,
    DROP_SHORT,
    EVENT_COLUMNS,
    KEPT,
    SESSION_COLUMNS,
    SessionizeStats,
    _check_args,
    add_context,
    mark_sessions,
    validate_events,
)
from playlistai.data.splits import check_fractions, check_split_args, check_vocab, period_sizes
from playlistai.data.vocab import PAD, Vocabulary, track_table

ENGINES = ("pandas", "ray")
# rows per group of whole users (or sessions, tracks) that one map_groups call handles
ROWS_PER_GROUP = 500_000
MAX_GROUPS = 4096

SESSION_DTYPES = {"session_id": np.dtype(np.int64), "hour": np.dtype(np.int8), "dow": np.dtype(np.int8),
                  "pos": np.dtype(np.int32)}

log = logging.getLogger(__name__)


def parse_engine(value: str) -> str:
    engine = str(value).strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {value!r}")
    return engine


# -- Ray -----------------------------------------------------------------------------------------


@contextmanager
def ray_data(rows: int) -> Iterator[Any]:
    """Ray (RAY_ADDRESS, else a local Ray; one already started is used as it is) with Ray Data set
    up for ordered, quiet execution and shuffles sized for `rows`; Ray is shut down after if this
    call started it."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import ray

    started = False
    if not ray.is_initialized():
        from playlistai.config import get_settings

        address = get_settings().RAY_ADDRESS or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING)
        started = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "default_hash_shuffle_parallelism")
    saved = {name: getattr(ctx, name) for name in names}
    saved_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.default_hash_shuffle_parallelism = max(2, min(saved["default_hash_shuffle_parallelism"], 4 * n_groups(rows)))
    try:
        yield ray
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        ctx.execution_options.preserve_order = saved_order
        if started:
            ray.shutdown()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class Steps:
    """What a Ray stage is doing, on stderr: a line when a step starts, one every `every` seconds
    while it runs (the time so far, and the rows so far when the step counts them), and its
    duration at the end. Ray Data's own progress bars stay off: they draw a bar per operator, redrawn
    per block, hundreds of lines in a log file; without them a step ran for minutes on `xlarge`
    without a word."""

    def __init__(self, stage: str, every: float = 30.0, out: TextIO | None = None):
        self.stage, self.every, self.out = stage, every, out
        self.rows = 0

    def say(self, text: str) -> None:
        print(f"{self.stage} (ray): {text}", file=self.out or sys.stderr, flush=True)

    def _so_far(self, total: int | None) -> str:
        if total is None:
            return ""
        share = f" ({self.rows / total:.0%})" if total else ""
        return f", {self.rows:,} of {total:,} rows{share}"

    @contextmanager
    def step(self, what: str, total: int | None = None) -> Iterator[Steps]:
        """Within the block, `add(n)` counts rows done (of `total`) for the lines it prints."""
        self.rows = 0
        started = time.monotonic()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.every):
                self.say(f"{what}: {_duration(time.monotonic() - started)} so far{self._so_far(total)}")

        self.say(f"{what} ...")
        thread = threading.Thread(target=beat, name="ray-engine-steps", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
        self.say(f"{what}: done in {_duration(time.monotonic() - started)}")

    def add(self, rows: int) -> None:
        self.rows += rows


def n_groups(rows: int) -> int:
    return max(1, min(MAX_GROUPS, math.ceil(rows / ROWS_PER_GROUP)))


def _bucket(values: pd.Series, groups: int) -> np.ndarray:
    """A group number per value, the same in every process (a fixed-key hash, never Python's)."""
    hashed = pd.util.hash_array(values.to_numpy(dtype=object))
    return (hashed % np.uint64(groups)).astype(np.int64)


def _add_bucket(batch: pd.DataFrame, key: str, groups: int) -> pd.DataFrame:
    batch["_bucket"] = _bucket(batch[key], groups)
    return batch


def by_groups(ds, key: str, groups: int, fn: Callable, **kwargs):
    """`fn(frame, **kwargs)` on groups of whole `key` values (pandas frames), materialized."""
    return (ds.map_batches(_add_bucket, fn_kwargs={"key": key, "groups": groups}, batch_format="pandas")
            .groupby("_bucket", num_partitions=groups).map_groups(fn, fn_kwargs=kwargs, batch_format="pandas")
            .materialize())


def _where(batch: pd.DataFrame, column: str, values: tuple) -> pd.DataFrame:
    return batch[batch[column].isin(values).to_numpy()]


def rows_where(ds, column: str, *values):
    return ds.map_batches(_where, fn_kwargs={"column": column, "values": values}, batch_format="pandas")


def value_counts(ds, columns: list[str]) -> dict[tuple, int]:
    """Rows per combination of `columns` (few combinations: codes, split names)."""
    table = ds.groupby(columns).count().to_pandas()
    return {tuple(int(v) for v in row[:-1]): int(row[-1]) for row in table.itertuples(index=False)}


def _notna(batch: pd.DataFrame, column: str) -> pd.DataFrame:
    return batch[batch[column].notna().to_numpy()]


def nunique(ds, column: str) -> int:
    """Distinct non-null values of a column, as pandas' `nunique` counts them."""
    only = ds.select_columns([column]).map_batches(_notna, fn_kwargs={"column": column}, batch_format="pandas")
    return only.groupby(column).count().count()


def _read_rows(path: str, start: int, stop: int, columns: list[str] | None) -> pa.Table:
    """Rows `start` to `stop` (excluded) of a Parquet file. A row group the range only begins is
    decoded only as far as the range goes: a block of whole sessions takes the first rows of the
    next row group, which is another block's whole row group."""
    file = pq.ParquetFile(path)
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    pieces, begin = [], 0
    for group, size in enumerate(sizes):
        lo, hi = max(start - begin, 0), min(stop - begin, size)
        if lo < hi:
            if hi < size:
                batches, rows = [], 0
                for batch in file.iter_batches(batch_size=hi, row_groups=[group], columns=columns):
                    batches.append(batch)
                    rows += batch.num_rows
                    if rows >= hi:
                        break
                table = pa.Table.from_batches(batches)
            else:
                table = file.read_row_group(group, columns=columns)
            pieces.append(table.slice(lo, hi - lo))
        begin += size
    if not pieces:
        schema = file.schema_arrow
        return schema.empty_table().select(columns or schema.names)
    return pa.concat_tables(pieces)


def _read_ranges(ranges: pd.DataFrame, columns: list[str] | None) -> pa.Table:
    """The rows of the ranges of a batch of `file_blocks`, one after the other."""
    bounds = zip(ranges["path"], ranges["start"], ranges["stop"], strict=True)
    return pa.concat_tables([_read_rows(path, int(start), int(stop), columns)
                             for path, start, stop in bounds])


def file_blocks(path: Path, block_starts: list[int] | None = None):
    """A Parquet file as a Ray dataset of row ranges (`path`, `start`, `stop`), one range a block, in
    file order: from each of `block_starts` (by default the first row of each row group) to the next.
    A map over it with `batch_size=1` reads each range in its task (`_read_ranges`)."""
    import ray

    meta = pq.ParquetFile(path).metadata
    if block_starts is None:
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        block_starts = np.cumsum([0, *sizes])[:-1].tolist()
    path = str(Path(path).resolve())
    items = [{"path": path, "start": int(start), "stop": int(stop)}
             for start, stop in pairwise([*block_starts, meta.num_rows])]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


def _rows_of(ranges: pd.DataFrame) -> np.ndarray:
    """The row in the file of each row that `_read_ranges` reads."""
    return np.concatenate([np.arange(int(start), int(stop), dtype=np.int64)
                           for start, stop in zip(ranges["start"], ranges["stop"], strict=True)])


def _read_blocks(ranges: pd.DataFrame, columns: list[str] | None) -> pd.DataFrame:
    frame = _read_ranges(ranges, columns).to_pandas()
    frame["_order"] = _rows_of(ranges)
    return frame


def read_in_file_order(path: Path, columns: list[str] | None = None):
    """A Parquet file as a Ray dataset, one block per row group, with `_order`: each row's row in the
    file (ties in time keep file order, as the pandas engine keeps them)."""
    return file_blocks(path).map_batches(_read_blocks, fn_kwargs={"columns": columns}, batch_size=1,
                                         batch_format="pandas")


# -- the driver's side: ordered streams into single files ------------------------------------


def _sorted_pairs_ok(prev: list[np.ndarray], cur: list[np.ndarray]) -> bool:
    """Rows (lexicographic over the key columns) never go down from one row to the next."""
    undecided = np.ones(len(cur[0]), dtype=bool)
    for a, b in zip(prev, cur, strict=True):
        lower = b < a
        if np.any(undecided & lower):
            return False
        undecided &= ~(b > a)
    return True


@dataclass
class Numbering:
    """Numbers the sessions of a stream sorted by `keys` (a session: a run of equal keys), and the
    position of each row in its session, across batches; checks that the stream is sorted."""

    keys: list[str]
    sessions: int = 0                               # sessions begun so far
    _last: list | None = None                       # the key of the last row seen
    _pos: int = -1                                  # its position

    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(session number from 0, position) of each row."""
        cols = [batch[k].to_numpy() for k in self.keys]
        n = len(batch)
        new = np.zeros(n, dtype=bool)
        if n:
            prev = [np.concatenate([[last], c[:-1]]) if self._last is not None else np.r_[c[:1], c[:-1]]
                    for c, last in zip(cols, self._last or [None] * len(cols), strict=True)]
            if not _sorted_pairs_ok(prev, cols):
                raise RuntimeError("the Ray engine's output came out of order; nothing was written")
            for p, c in zip(prev, cols, strict=True):
                new |= p != c
            if self._last is None:
                new[0] = True
        rank = self.sessions - 1 + np.cumsum(new)
        idx = np.arange(n)
        begun = np.maximum.accumulate(np.where(new, idx, -1)) if n else idx
        pos = np.where(begun >= 0, idx - begun, idx + self._pos + 1)
        if n:
            self.sessions = int(rank[-1]) + 1
            self._last = [c[-1] for c in cols]
            self._pos = int(pos[-1])
        return rank.astype(np.int64), pos.astype(np.int64)


class SessionSums:
    """Per-session sums of some columns over a stream in session order; each session's sums go to
    `finished` once the session is whole (the driver keeps no per-session table)."""

    def __init__(self, finished: Callable[[np.ndarray], None]):
        self.finished = finished
        self._open: np.ndarray | None = None
        self._open_id = -1

    def add(self, session: np.ndarray, values: np.ndarray) -> None:
        """`session`: each row's session number (non-decreasing); `values`: [rows, k]."""
        if not len(session):
            return
        first = session[0]
        rel = session - first
        sums = np.stack([np.bincount(rel, weights=values[:, j], minlength=rel[-1] + 1)
                         for j in range(values.shape[1])], axis=1)
        present = np.bincount(rel, minlength=rel[-1] + 1) > 0
        ids = np.flatnonzero(present) + first
        sums = sums[present]
        if self._open is not None:
            if ids[0] == self._open_id:
                sums[0] += self._open
            else:
                self.finished(self._open[None, :])
        if len(sums) > 1:
            self.finished(sums[:-1])
        self._open, self._open_id = sums[-1].copy(), int(ids[-1])

    def finish(self) -> None:
        if self._open is not None:
            self.finished(self._open[None, :])
            self._open = None


class Histogram:
    """Counts of integer values (session lengths), and the statistics numpy gives on the values
    themselves, computed from the counts: the same floats, without an array of every value."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, values: np.ndarray) -> None:
        for v, c in zip(*np.unique(np.asarray(values, dtype=np.int64), return_counts=True), strict=True):
            self.counts[int(v)] = self.counts.get(int(v), 0) + int(c)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.array(sorted(self.counts), dtype=np.int64)
        return keys, np.cumsum([self.counts[k] for k in keys.tolist()]).astype(np.int64)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def at(self, index: int) -> np.int64:
        """The value at `index` of the sorted values."""
        keys, ends = self._arrays()
        return keys[int(np.searchsorted(ends, index, side="right"))]

    def mean(self) -> float:
        total = sum(k * c for k, c in self.counts.items())
        return float(np.float64(total) / len(self))

    def median(self) -> float:
        n = len(self)
        middle = [self.at(n // 2)] if n % 2 else [self.at(n // 2 - 1), self.at(n // 2)]
        return float(np.mean(np.array(middle, dtype=np.int64)))

    def percentile(self, q: float) -> float:
        """np.percentile(values, q) (method `linear`), step by step as numpy computes it."""
        n = len(self)
        virtual = np.asanyarray((n - 1) * np.asanyarray(np.true_divide(q, 100)))
        previous = np.floor(virtual)
        if virtual >= n - 1:
            i = j = n - 1
        else:
            i, j = int(previous), int(previous) + 1
        gamma = np.asanyarray(virtual - np.asanyarray(previous).astype(np.intp))
        a, b = self.at(i), self.at(j)
        diff = np.subtract(b, a)
        out = np.asanyarray(np.add(a, diff * gamma))
        np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
        return float(out[()])

    def sample(self) -> np.ndarray:
        """The values themselves (for a figure), at most 1,000,000 of them spread like all."""
        keys, ends = self._arrays()
        n = len(self)
        if n <= 1_000_000:
            return np.repeat(keys, np.diff(np.r_[0, ends]))
        return keys[np.searchsorted(ends, np.linspace(0, n - 1, 1_000_000).astype(np.int64), side="right")]


def _has_values(ds) -> Callable[[list[str]], dict[str, bool]]:
    from ray.data.aggregate import Count

    def ask(columns: list[str]) -> dict[str, bool]:
        counts = ds.aggregate(*[Count(c, ignore_nulls=True, alias_name=c) for c in columns])
        return {c: bool(counts[c]) for c in columns}

    return ask


def _batches(ds) -> Iterator[pd.DataFrame]:
    yield from ds.iter_batches(batch_size=ROW_GROUP_ROWS // 4, batch_format="pandas", prefetch_batches=1)


# -- preprocess ----------------------------------------------------------------------------------

# the order of the sessions file: sessions by start, then user (as the pandas engine numbers them);
# a session's plays by time, then file order
SESSION_ORDER = ["_start_ns", "user_id", "_ts_ns", "_order"]
GROUP_FILE_COLUMNS = [*(c for c in SESSION_COLUMNS if c not in ("session_id", "pos")), "_start_ns", "_ts_ns",
                      "_order"]
DROP_CODES = (KEPT, DROP_DUPLICATE, DROP_COLLAPSED, DROP_SHORT)
MERGE_BUFFER_ROWS = 1 << 18          # rows the driver's merge of the group files holds, all files together
MIN_MERGE_BATCH_ROWS = 1024          # ... but at least this many of each file at a time


def _mark_group(group: pd.DataFrame, gap_min: float, min_session_len: int, collapse_repeats: bool) -> pd.DataFrame:
    """`mark_sessions` on a group of whole users; every input row comes out with its `_drop`, and
    the kept ones with their session's start (`_start_ns`) and their time (`_ts_ns`)."""
    ev = group.loc[:, [*EVENT_COLUMNS, "_order"]].sort_values("_order", kind="mergesort").reset_index(drop=True)
    dup = ev.duplicated(subset=["user_id", "track_id", "ts"], keep="first").to_numpy()
    marked, _ = mark_sessions(ev[~dup], gap_min, min_session_len, collapse_repeats)
    dups = ev[dup].assign(session_id=np.int64(-1), _drop=np.int8(DROP_DUPLICATE))
    out = pd.concat([marked, dups], ignore_index=True)
    kept = (out["_drop"] == KEPT).to_numpy()
    ts_ns = epoch_ns(out["ts"])
    start = pd.Series(np.where(kept, ts_ns, np.iinfo(np.int64).max)).groupby(out["session_id"].to_numpy()) \
        .transform("min").to_numpy()
    out["_ts_ns"] = ts_ns
    out["_start_ns"] = np.where(kept, start, -1)
    out["_drop"] = out["_drop"].astype(np.int8)
    return out


def _sessionize_group(group: pd.DataFrame, out_dir: str, row_group_rows: int, gap_min: float,
                      min_session_len: int, collapse_repeats: bool, timezone: str) -> pd.DataFrame:
    """`_mark_group`, then the group's kept plays, in the sessions file's order and with their
    context, written to a file of their own in `out_dir` (the driver merges the groups' files).
    Returns one row: the file ("" when the group keeps nothing), the rows per `_drop` code, the
    users kept and, per column, the rows with a value."""
    marked = _mark_group(group, gap_min, min_session_len, collapse_repeats)
    drops = marked["_drop"].value_counts()
    kept = marked[(marked["_drop"] == KEPT).to_numpy()].sort_values(SESSION_ORDER, kind="mergesort")
    kept = add_context(kept.reset_index(drop=True), timezone).loc[:, GROUP_FILE_COLUMNS]
    path = ""
    if len(kept):
        table = pa.Table.from_pandas(kept, preserve_index=False)
        # a column without a value in this group is typed null here and string in another group
        table = table.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                      for f in table.schema]))
        path = str(Path(out_dir) / f"{uuid.uuid4().hex}.parquet")
        pq.write_table(table, path, row_group_size=row_group_rows, compression="lz4")
    return pd.DataFrame({"path": [path], "users": [kept["user_id"].nunique()],
                         **{f"_drop_{code}": [int(drops.get(code, 0))] for code in DROP_CODES},
                         **{f"_values_{c}": [int(kept[c].notna().sum())] for c in GROUP_FILE_COLUMNS}})


def _rows_before(table: pa.Table, start: int, user: Any) -> int:
    """Rows of a table sorted by (`_start_ns`, `user_id`) that come before (`start`, `user`)."""
    starts = table.column("_start_ns").to_numpy()
    lo, hi = np.searchsorted(starts, start, "left"), np.searchsorted(starts, start, "right")
    if lo == hi:
        return int(lo)
    return int(lo) + bisect.bisect_left(table.column("user_id").slice(lo, hi - lo).to_pylist(), user)


def merged_in_order(paths: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """The rows of Parquet files, each sorted in SESSION_ORDER and holding whole users, as tables
    in that order across the files: a k-way merge that holds a batch of each file. Each round reads
    the next batch of the file whose last row read is the lowest: every row below that row, in any
    file, comes before all rows not yet read (no other file has that user, so no other row equals
    it), and goes out sorted."""
    readers = {i: pq.ParquetFile(path).iter_batches(batch_size=batch_rows) for i, path in enumerate(paths)}
    held: dict[int, pa.Table] = {}

    def read(i: int) -> None:
        """The next rows of file i (then every file still read has rows held), or its end."""
        for batch in readers[i]:
            if batch.num_rows:
                table = pa.Table.from_batches([batch])
                held[i] = pa.concat_tables([held[i], table]).combine_chunks() if i in held else table
                return
        del readers[i]

    def in_order(tables: list[pa.Table]) -> pa.Table:
        return pa.concat_tables(tables).sort_by([(c, "ascending") for c in SESSION_ORDER])

    for i in list(readers):
        read(i)
    while readers:
        last = {i: (held[i].column("_start_ns")[-1].as_py(), held[i].column("user_id")[-1].as_py())
                for i in readers}
        lowest = min(last, key=last.__getitem__)
        below = {i: _rows_before(table, *last[lowest]) for i, table in held.items()}
        out = [held[i].slice(0, n) for i, n in below.items() if n]
        held = {i: table.slice(below[i]) for i, table in held.items()}
        if out:
            yield in_order(out)
        read(lowest)
    rest = [table for table in held.values() if table.num_rows]
    if rest:
        yield in_order(rest)


class Tallies:
    """Tables that come in order, combined in the driver by `combine` (an Arrow group-by): tables
    wait until they have as many rows as the tally so far (and a row group), so each row is combined
    a few times at most and the driver holds a few tallies' worth, in Arrow (not Python objects)."""

    def __init__(self, combine: Callable[[pa.Table], pa.Table]):
        self.combine = combine
        self._tables: list[pa.Table] = []          # the tally so far (once there is one), then the waiting
        self._tally_rows = 0
        self._waiting_rows = 0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._waiting_rows += table.num_rows
        if self._waiting_rows >= max(ROW_GROUP_ROWS, self._tally_rows):
            tally = self.result()
            self._tables, self._tally_rows, self._waiting_rows = [tally], tally.num_rows, 0

    def result(self) -> pa.Table:
        return self.combine(pa.concat_tables(self._tables))


def _sum_counts(table: pa.Table) -> pa.Table:
    summed = table.group_by("value", use_threads=False).aggregate([("count", "sum")])
    return pa.table({"value": summed["value"], "count": summed["count_sum"]})


class ValueCounts(Tallies):
    """Rows per distinct non-null value of a column that comes in tables: (value, count)."""

    def __init__(self) -> None:
        super().__init__(_sum_counts)

    def add_values(self, values: pa.ChunkedArray) -> None:
        counts = pc.value_counts(pc.drop_null(values))
        self.add(pa.table({"value": counts.field("values"), "count": counts.field("counts")}))

    def result(self) -> pa.Table:
        if not self._tables:
            return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        return super().result()


@dataclass
class PreprocessOutcome:
    stats: SessionizeStats
    event_stats: dict[str, float]
    lengths: Histogram              # plays per session
    track_counts: np.ndarray        # plays per track
    head: pd.DataFrame              # the first rows of the sessions file


def preprocess(events_path: Path, sessions_path: Path, gap_min: float = 45.0, min_session_len: int = 2,
               collapse_repeats: bool = False, timezone: str = "UTC") -> PreprocessOutcome:
    """`sessionize` on Ray; writes `sessions_path` (the caller makes the write atomic).

    Ray cuts the sessions in groups of whole users, and each group writes its kept plays, sorted,
    to a file of its own beside `sessions_path`; the driver merges the groups' files into the
    sessions file, numbering sessions and counting tracks and artists as the rows pass. No global
    sort: the merge reads each group file once, in order."""
    _check_args(gap_min, min_session_len)
    validate_events(_schema_frame(events_path))
    add_context(pd.DataFrame({"ts": pd.Series([], dtype="datetime64[ns, UTC]")}), timezone)  # a bad timezone fails now
    dtypes = {**_schema_frame(events_path).dtypes.to_dict(), **SESSION_DTYPES}
    n_in = pq.ParquetFile(events_path).metadata.num_rows
    steps = Steps("preprocess")
    groups = n_groups(n_in)
    batch_rows = max(MIN_MERGE_BATCH_ROWS, MERGE_BUFFER_ROWS // groups)
    group_dir = Path(tempfile.mkdtemp(prefix=".sessions-of-groups-", dir=Path(sessions_path).parent))
    try:
        with ray_data(n_in):
            events = read_in_file_order(events_path, columns=list(EVENT_COLUMNS))
            with steps.step(f"sessions of {n_in:,} plays, in {groups:,} group{'s' * (groups > 1)} of whole users"):
                summary = by_groups(events, "user_id", groups, _sessionize_group, out_dir=str(group_dir),
                                    row_group_rows=batch_rows, gap_min=gap_min, min_session_len=min_session_len,
                                    collapse_repeats=collapse_repeats, timezone=timezone).to_pandas()
        drops = {code: int(summary[f"_drop_{code}"].sum()) for code in DROP_CODES}
        if not drops[KEPT]:
            raise ValueError(f"no session has {min_session_len}+ plays at a {gap_min}-minute gap")
        with_values = {c: int(summary[f"_values_{c}"].sum()) for c in GROUP_FILE_COLUMNS}
        numbering = Numbering(["_start_ns", "user_id"])
        lengths = Histogram()
        sums = SessionSums(lambda done: lengths.add(done[:, 0]))
        tracks, artists = ValueCounts(), ValueCounts()
        stream = ParquetStream(sessions_path, lambda columns: {c: bool(with_values[c]) for c in columns},
                               frame_of=lambda table: _as_dtypes(table.to_pandas(), dtypes))
        with steps.step("merging the groups and writing the sessions", total=drops[KEPT]) as progress:
            for table in merged_in_order(sorted(p for p in summary["path"] if p), batch_rows):
                tracks.add_values(table.column("track_id"))
                artists.add_values(table.column("artist_id"))
                sid, pos = numbering(table)
                sums.add(sid, np.ones((len(sid), 1)))
                columns = {**{c: table.column(c) for c in SESSION_COLUMNS if c in table.column_names},
                           "session_id": pa.array(sid), "pos": pa.array(pos.astype(np.int32))}
                stream.write_table(pa.table({c: columns[c] for c in SESSION_COLUMNS}))
                progress.add(table.num_rows)
            sums.finish()
            stream.close(pd.DataFrame(columns=list(SESSION_COLUMNS)))
    finally:
        shutil.rmtree(group_dir, ignore_errors=True)
    if stream.rows_written != drops[KEPT]:
        raise RuntimeError(f"the Ray engine wrote {stream.rows_written:,} of {drops[KEPT]:,} kept plays")
    track_counts = tracks.result().column("count").to_numpy()
    event_stats = {
        "users": float(summary["users"].sum()),         # each user's plays are in one group
        "tracks": float(len(track_counts)),
        "artists": float(artists.result().num_rows),
        "events": float(drops[KEPT]),
    }
    stats = SessionizeStats(
        events_in=n_in,
        exact_duplicates_dropped=drops[DROP_DUPLICATE],
        short_sessions_dropped_events=drops[DROP_SHORT],
        repeats_collapsed=drops[DROP_COLLAPSED],
        sessions=numbering.sessions,
        events_out=drops[KEPT],
    )
    return PreprocessOutcome(stats, event_stats, lengths, track_counts, stream.head)


def epoch_ns(times: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of timezone-aware times, whatever their unit or backing."""
    return pd.DatetimeIndex(times.astype("datetime64[ns, UTC]")).asi8


def _as_dtypes(frame: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    """The columns of `frame` in the dtypes pandas reads them in (Ray hands strings over as
    Arrow-backed ones), so that the file written has the pandas engine's metadata."""
    cast = {c: t for c, t in dtypes.items() if c in frame.columns and frame[c].dtype != t}
    return (frame.astype(cast) if cast else frame).reset_index(drop=True)


def _schema_frame(path: Path) -> pd.DataFrame:
    """An empty frame with the columns and types of a Parquet file."""
    return pq.ParquetFile(path).schema_arrow.empty_table().to_pandas()


# -- splits --------------------------------------------------------------------------------------

SPLIT_NAMES = ("train", "val", "test")
KEEP, TRUNCATED, SHORT, PLACEHOLDER = 0, 1, 2, 3      # `_why` of a row of the split groups


def _temporal_group(group: pd.DataFrame, t_val: int, t_test: int) -> pd.DataFrame:
    """`temporal_split` and the short-session rule on a group of whole sessions (`t_val`, `t_test`:
    the cut-offs in ns): `_part` (0 train, 1 val, 2 test) and `_why` (KEEP, TRUNCATED at the next
    period's cut-off, SHORT after the cut)."""
    ts_ns = epoch_ns(group["ts"])
    start = pd.Series(ts_ns).groupby(group["session_id"].to_numpy()).transform("min").to_numpy()
    part = np.where(start >= t_test, 2, np.where(start >= t_val, 1, 0)).astype(np.int8)
    cutoff_ns = np.where(part == 0, t_val, t_test)
    why = np.where((part < 2) & (ts_ns >= cutoff_ns), TRUNCATED, KEEP).astype(np.int8)
    left = why == KEEP
    sid = group["session_id"].to_numpy()
    sizes = pd.Series(sid[left]).value_counts()
    short = left & (pd.Series(sid).map(sizes).fillna(0).to_numpy() < 2)
    why[short] = SHORT
    return group.assign(_part=part, _why=why)


def _loo_group(group: pd.DataFrame) -> pd.DataFrame:
    """`leave_one_out_split` on a group of whole users: each user's plays once per split they belong
    to, `_part` and `pos` (the user's position), `is_target`, `_vocab_val` (a validation play that
    is not also a training play), and one PLACEHOLDER row in val and test for each user with fewer
    than 3 plays, so that users are numbered alike in every split."""
    ev = group.sort_values(["user_id", "ts", "session_id", "pos"], kind="mergesort").reset_index(drop=True)
    upos = ev.groupby("user_id").cumcount().to_numpy()
    n_user = ev.groupby("user_id")["track_id"].transform("size").to_numpy()
    eligible = n_user >= 3
    ev["pos"] = upos.astype(np.int64)
    parts = []
    for part, mask, last_is_target in ((0, np.where(eligible, upos < n_user - 2, True), False),
                                       (1, eligible & (upos < n_user - 1), True),
                                       (2, eligible, True)):
        f = ev[mask]
        end = (n_user - 2 if part == 1 else n_user - 1)[mask]
        is_target = (f["pos"].to_numpy() == end) if last_is_target else (f["pos"].to_numpy() > 0)
        why = np.full(len(f), KEEP, np.int8)
        parts.append(f.assign(_part=np.int8(part), _why=why, is_target=is_target,
                              _vocab_val=(part == 1) & (f["pos"].to_numpy() == end)))
        if part:
            lone = ev[~eligible].drop_duplicates("user_id")
            parts.append(lone.assign(_part=np.int8(part), _why=np.int8(PLACEHOLDER), is_target=False,
                                     _vocab_val=False, pos=np.int64(-1)))
    return pd.concat(parts, ignore_index=True)


def _tracks_group(group: pd.DataFrame, order: list[str], min_freq: int) -> pd.DataFrame:
    """`track_table` of a group of whole tracks, its rows in the order of the splits' files (train
    before val), the tracks played at least `min_freq` times."""
    table = track_table(group.sort_values(order, kind="mergesort"))
    return table[table["count"] >= min_freq].reset_index(drop=True)


def _kth_latest(starts, column: str, k: int) -> int:
    """The k-th latest value of `column` (k >= 1): the earliest of the k latest."""
    return int(starts.sort(column, descending=True).limit(k).min(column))


def _start_ns(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"session_id": batch["session_id"].to_numpy(), "_ts_ns": epoch_ns(batch["ts"])})


@dataclass
class SplitOutcome:
    meta: dict
    vocab: Vocabulary
    metrics: dict[str, float]
    heads: dict[str, pd.DataFrame]
    train_lengths: Histogram


@dataclass
class _SplitTally:
    """What the splits stage logs of one split file, counted as it is written: `n` holds the
    sessions, events, targets, unknown events and targets, training windows and pairs."""

    vocab: Vocabulary
    max_seq_len: int
    n: Counter = field(default_factory=Counter)
    lengths: Histogram = field(default_factory=Histogram)
    head: pd.DataFrame | None = None

    def add(self, frame: pd.DataFrame | pa.Table, session: np.ndarray, sums: SessionSums,
            known: np.ndarray | None = None) -> None:
        """`known`: whether each play's track has an index (looked up here when not given)."""
        if known is None:
            known = self.vocab.encode(list(frame["track_id"])) != PAD
        target = np.asarray(frame["is_target"], dtype=bool)
        self.n.update(events=len(frame), targets=int(target.sum()), unknown=int((~known).sum()),
                      target_unknown=int((target & ~known).sum()))
        sums.add(session, np.stack([np.ones(len(frame)), known], axis=1))

    def session_done(self, done: np.ndarray) -> None:
        self.lengths.add(done[:, 0].astype(np.int64))
        known = done[:, 1].astype(np.int64)
        known = known[known >= 2]        # a session's windows and pairs, as SequenceDataset cuts them
        self.n.update(sessions=len(done), windows=int(np.sum((known - 2) // self.max_seq_len + 1)),
                      pairs=int(np.sum(known - 1)))

    def metrics(self, name: str) -> dict[str, float]:
        n = self.n
        m = {f"{name}_sessions": float(n["sessions"]), f"{name}_events": float(n["events"]),
             f"{name}_targets": float(n["targets"])}
        if name != "train":
            m[f"{name}_unknown_track_share"] = n["unknown"] / n["events"] if n["events"] else 0.0
            m[f"{name}_unknown_target_share"] = n["target_unknown"] / n["targets"] if n["targets"] else 0.0
        return m


def _empty_split(dtypes: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """A split without rows, as pandas writes it."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items() if c in columns})[columns]


def _write_split(ds, path: Path, order: list[str], numbering: Numbering, tally: _SplitTally,
                 dtypes: dict[str, Any], columns: list[str], session_offset: int | None,
                 progress: Steps, total: int) -> None:
    """Sort a split in Ray, stream it into `path`: positions from 0 within each session, session
    ids kept (`session_offset` None) or numbered from `session_offset` in the sort's order."""
    stream = ParquetStream(path, _has_values(rows_where(ds, "_why", KEEP)))
    sums = SessionSums(tally.session_done)
    with progress.step(f"sorting and writing {path.name}", total=total) as rows_done:
        for batch in _batches(ds.sort(order)):
            rank, pos = numbering(batch)
            if session_offset is not None:
                batch["session_id"] = rank + session_offset
            real = (batch["_why"] == KEEP).to_numpy()
            batch, rank, pos = batch[real], rank[real], pos[real]
            if session_offset is None:
                batch["pos"] = pos
                batch["is_target"] = pos > 0
            frame = _as_dtypes(batch.loc[:, columns], dtypes)
            tally.add(frame, rank, sums)
            stream.write(frame)
            rows_done.add(len(batch))
        sums.finish()
        stream.close(_empty_split(dtypes, columns))
    tally.head = stream.head


def _as_time(ns: int, dtype) -> pd.Timestamp:
    """A cut-off (ns since the epoch) as the pandas engine's meta writes it: a value of the `ts` column."""
    return pd.Series(pd.to_datetime([ns], utc=True)).astype(dtype).iloc[0]


# -- splits: temporal, in the sessions file's own order -------------------------------------------
#
# `preprocess` (either engine) writes the sessions in session order: (session_id, pos) never goes down
# from one row to the next. Each session's rows are then contiguous, so blocks cut where a session
# begins hold whole sessions, and every rule of the temporal split applies within a block. The rows
# of each split, in file order, are already in the order of its file: the splits stream out as the
# blocks come, with no shuffle and no sort. Three passes read the file, each a block a task: the
# session starts (the cut-offs; the order is checked on the way), the vocabulary's counts per
# block (combined in the driver), and the splits themselves.

# rows of the sessions file a block has (a quarter of a row group: the driver holds a few blocks and
# the splits' row groups in under 1 GB; tests make it small so that sessions cross blocks), before
# its end moves on to the end of the session it cuts
SESSION_BLOCK_ROWS = ROW_GROUP_ROWS // 4
VOCAB_COLUMNS = ["track_id", "artist_id", "genre"]


def _block_starts(path: Path) -> list[int]:
    """Every SESSION_BLOCK_ROWS-th row of each row group, from its first (a block reads one row
    group at most, but for the end of its last session)."""
    meta = pq.ParquetFile(path).metadata
    starts, begin = [], 0
    for group in range(meta.num_row_groups):
        size = meta.row_group(group).num_rows
        starts.extend(range(begin, begin + size, SESSION_BLOCK_ROWS))
        begin += size
    return starts


def _session_runs(ranges: pd.DataFrame) -> pa.Table:
    """A block of the sessions file as runs of rows of one session: the session, the run's first row
    in the file and its length, its earliest play (ns), its first and last `pos`, and whether the
    block's rows are in session order (each run a session then, but for the first and the last,
    which may go on in the blocks beside)."""
    table = _read_ranges(ranges, ["session_id", "pos", "ts"])
    sid, pos = table["session_id"].to_numpy(), table["pos"].to_numpy()
    in_order = _sorted_pairs_ok([sid[:-1], pos[:-1]], [sid[1:], pos[1:]])
    first = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    last = np.r_[first[1:] - 1, len(sid) - 1]
    return pa.table({"session_id": sid[first], "row": _rows_of(ranges)[first], "rows": last - first + 1,
                     "start_ns": np.minimum.reduceat(epoch_ns(table["ts"].to_pandas()), first),
                     "first_pos": pos[first], "last_pos": pos[last],
                     "in_order": np.full(len(first), in_order)})


@dataclass
class _SessionStarts:
    starts_ns: np.ndarray          # each session's earliest play, sessions in file order
    block_starts: list[int]        # rows where a session begins, a block apart: blocks of whole sessions


def _session_starts(path: Path, n_rows: int, steps: Steps) -> _SessionStarts | None:
    """Each session's start, from the `session_id`, `pos` and `ts` columns read block by block; None
    when the rows are not in session order (the blocks check their rows, the driver where they meet)."""
    runs_of_blocks = file_blocks(path, _block_starts(path)).map_batches(_session_runs, batch_size=1,
                                                                        batch_format="pandas")
    sessions, starts, block_starts = [], [], []
    last = None                                  # (session_id, pos) of the last row so far
    what = "the start of every session, reading the sessions file in its order"
    with steps.step(what, total=n_rows) as progress:
        for runs in runs_of_blocks.iter_batches(batch_size=None, batch_format="numpy"):
            sid = runs["session_id"]
            if not len(sid):
                continue
            if not runs["in_order"].all() or (last is not None and (sid[0], runs["first_pos"][0]) < last):
                return None
            goes_on = int(last is not None and sid[0] == last[0])     # the block before's last session
            if len(sid) > goes_on:
                block_starts.append(int(runs["row"][goes_on]))
            sessions.append(sid)
            starts.append(runs["start_ns"])
            last = (sid[-1], runs["last_pos"][-1])
            progress.add(int(runs["rows"].sum()))
    # a session's runs are its pieces in the blocks it crosses: its start is theirs
    sid = np.concatenate(sessions)
    first_runs = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    return _SessionStarts(np.minimum.reduceat(np.concatenate(starts), first_runs), block_starts)


def _cutoffs(starts_ns: np.ndarray, val_frac: float, test_frac: float) -> tuple[int, int]:
    """`temporal_split`'s cut-offs (ns): the starts of the first validation and test sessions."""
    n = len(starts_ns)
    n_test, n_val = period_sizes(n, val_frac, test_frac)
    ordered = np.sort(starts_ns)
    t_test = int(ordered[n - n_test])
    return (int(ordered[n - n_test - n_val]) if n_val else t_test), t_test


def _tally_tracks(plays: pa.Table, keys: list[str]) -> pa.Table:
    """`track_table` in Arrow, per `keys`: the first artist and genre that are not null in the
    table's order, and the plays (the sum of `count`)."""
    table = plays.group_by(keys, use_threads=False).aggregate(
        [("artist_id", "first"), ("genre", "first"), ("count", "sum")])
    return pa.table({**{k: table[k] for k in keys}, "artist_id": table["artist_id_first"],
                     "genre": table["genre_first"], "count": table["count_sum"]})


def _block_tracks(ranges: pd.DataFrame, t_val: int, t_test: int, parts: tuple[int, ...]) -> pa.Table:
    """`_tally_tracks` of the plays of a block of whole sessions that the vocabulary counts (kept, in
    one of `parts`), per split and track."""
    table = _read_ranges(ranges, ["session_id", "ts", *VOCAB_COLUMNS])
    marked = _temporal_group(table.select(["session_id", "ts"]).to_pandas(), t_val, t_test)
    counted = ((marked["_why"] == KEEP) & marked["_part"].isin(parts)).to_numpy()
    plays = table.select(VOCAB_COLUMNS).filter(pa.array(counted))
    plays = plays.append_column("_part", pa.array(marked["_part"].to_numpy()[counted]))
    return _tally_tracks(plays.append_column("count", pa.array(np.ones(plays.num_rows, np.int64))),
                         ["_part", "track_id"])


def _block_splits(ranges: pd.DataFrame, t_val: int, t_test: int, vocab_ids: pa.Array) -> pa.Table:
    """A block of whole sessions with `_part` and `_why` (`_temporal_group`), `pos` counted over the
    plays kept and `is_target` (`_finish`), and `_known`: the track has an index. The plays a rule
    drops come along (their `pos` means nothing) for the counts of the meta."""
    table = _read_ranges(ranges, None).replace_schema_metadata(None)
    marked = _temporal_group(table.select(["session_id", "ts"]).to_pandas(), t_val, t_test)
    kept = (marked["_why"] == KEEP).to_numpy()
    kept_so_far = pd.Series(kept.astype(np.int32)).groupby(marked["session_id"].to_numpy()).cumsum()
    pos = (kept_so_far - 1).to_numpy(np.int32)
    table = table.set_column(table.schema.get_field_index("pos"), "pos", pa.array(pos))
    return (table.append_column("is_target", pa.array(pos > 0))
            .append_column("_part", pa.array(marked["_part"].to_numpy()))
            .append_column("_why", pa.array(marked["_why"].to_numpy()))
            .append_column("_known", pc.is_in(table["track_id"], value_set=vocab_ids)))


def _temporal_in_file_order(sessions_path: Path, out_dir: Path, starts: _SessionStarts, val_frac: float,
                            test_frac: float, vocab_min_freq: int, vocab_scope: str, max_seq_len: int,
                            ts_dtype, dtypes: dict[str, Any], columns: list[str], steps: Steps,
                            n_rows: int) -> tuple[dict, Vocabulary, dict[str, _SplitTally]]:
    """The temporal split of a sessions file in session order, block by block of whole sessions."""
    t_val, t_test = _cutoffs(starts.starts_ns, val_frac, test_frac)
    blocks = file_blocks(sessions_path, starts.block_starts)
    parts = (0,) if vocab_scope == "train" else (0, 1)
    cutoffs = {"t_val": t_val, "t_test": t_test}
    tracks_of_blocks = blocks.map_batches(_block_tracks, fn_kwargs={**cutoffs, "parts": parts}, batch_size=1,
                                          batch_format="pandas")
    with steps.step(f"the vocabulary: tracks played {vocab_min_freq}+ times in {vocab_scope}"):
        track_tallies = Tallies(lambda table: _tally_tracks(table, ["_part", "track_id"]))
        for table in tracks_of_blocks.iter_batches(batch_size=None, batch_format="pyarrow"):
            track_tallies.add(table)
        by_part = track_tallies.result()
        # train's plays before val's, as the pandas engine counts them (the first artist and genre)
        in_scope = [by_part.filter(pc.equal(by_part["_part"], part)).drop_columns(["_part"])
                    for part in parts]
        if not pc.sum(in_scope[0]["count"]).as_py():
            raise ValueError("the training split is empty")
        table = _tally_tracks(pa.concat_tables(in_scope), ["track_id"]).to_pandas()
    vocab = Vocabulary.from_track_table(table, vocab_min_freq)
    check_vocab(vocab, vocab_min_freq, vocab_scope)

    marked = blocks.map_batches(_block_splits, batch_size=1, batch_format="pandas",
                                fn_kwargs={**cutoffs, "vocab_ids": pa.array(vocab.track_ids, pa.string())})
    tallies = {name: _SplitTally(vocab, max_seq_len) for name in SPLIT_NAMES}
    sums = {name: SessionSums(tally.session_done) for name, tally in tallies.items()}
    streams = {name: ParquetStream(out_dir / f"{name}.parquet",
                                   _has_values(rows_where(rows_where(marked, "_part", part), "_why", KEEP)),
                                   frame_of=lambda table: _as_dtypes(table.to_pandas(), dtypes))
               for part, name in enumerate(SPLIT_NAMES)}
    whys = np.zeros(PLACEHOLDER + 1, np.int64)
    files = ", ".join(f"{name}.parquet" for name in SPLIT_NAMES)
    what = f"splitting {len(starts.starts_ns):,} sessions ({n_rows:,} plays) at the cut-offs, writing {files}"
    with steps.step(what, total=n_rows) as progress:
        for batch in marked.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            why, part = batch["_why"].to_numpy(), batch["_part"].to_numpy()
            whys += np.bincount(why, minlength=len(whys))
            for p, name in enumerate(SPLIT_NAMES):
                rows = batch.filter(pa.array((why == KEEP) & (part == p)))
                if rows.num_rows:
                    split = rows.select(columns)
                    tallies[name].add(split, rows["session_id"].to_numpy(), sums[name],
                                      known=rows["_known"].to_numpy())
                    streams[name].write_table(split)
            progress.add(batch.num_rows)
        for name, tally in tallies.items():
            sums[name].finish()
            streams[name].close(_empty_split(dtypes, columns))
            tally.head = streams[name].head
    meta = {"val_start": str(_as_time(t_val, ts_dtype)), "test_start": str(_as_time(t_test, ts_dtype)),
            "events_truncated_at_cutoffs": int(whys[TRUNCATED]),
            "events_dropped_short_after_cut": int(whys[SHORT])}
    return meta, vocab, tallies


# -- splits: any order, either strategy: shuffles and sorts ---------------------------------------


def _split_with_shuffles(ray, sessions_path: Path, out_dir: Path, strategy: str, val_frac: float,
                         test_frac: float, vocab_min_freq: int, vocab_scope: str, max_seq_len: int, ts_dtype,
                         dtypes: dict[str, Any], columns: list[str], steps: Steps,
                         n_rows: int) -> tuple[dict, Vocabulary, dict[str, _SplitTally]]:
    """The split in groups of whole sessions (temporal) or users (leave_one_out), each split's file
    sorted in Ray."""
    sessions = ray.data.read_parquet(str(Path(sessions_path).resolve()))
    groups = n_groups(n_rows)
    if strategy == "temporal":
        with steps.step("the time cut-offs: the start of every session"):
            starts = (sessions.select_columns(["session_id", "ts"])
                      .map_batches(_start_ns, batch_format="pandas")
                      .groupby("session_id").min("_ts_ns").materialize())
            n = starts.count()
            n_test, n_val = period_sizes(n, val_frac, test_frac)
            column = starts.columns()[-1]
            t_test = _kth_latest(starts, column, n_test)
            t_val = _kth_latest(starts, column, n_test + n_val) if n_val else t_test
        with steps.step(f"splitting {n:,} sessions ({n_rows:,} plays) at the cut-offs"):
            marked = by_groups(sessions, "session_id", groups, _temporal_group, t_val=t_val, t_test=t_test)
            whys = value_counts(marked.select_columns(["_why"]), ["_why"])
        meta = {"val_start": str(_as_time(t_val, ts_dtype)), "test_start": str(_as_time(t_test, ts_dtype)),
                "events_truncated_at_cutoffs": whys.get((TRUNCATED,), 0),
                "events_dropped_short_after_cut": whys.get((SHORT,), 0)}
        order, offsets = ["session_id", "pos"], None
        vocab_rows = rows_where(marked, "_why", KEEP)
        vocab_rows = rows_where(vocab_rows, "_part", *((0,) if vocab_scope == "train" else (0, 1)))
        vocab_order = ["_part", "session_id", "pos"]
    else:
        with steps.step(f"splitting the sessions of every user ({n_rows:,} plays): the last one to test"):
            marked = by_groups(sessions, "user_id", groups, _loo_group)
            n_users = nunique(marked, "user_id")
            meta = {"users_eligible": nunique(rows_where(rows_where(marked, "_part", 2), "_why", KEEP),
                                              "user_id"),
                    "events_truncated_at_cutoffs": 0}
        order, offsets = ["user_id", "pos"], (0, n_users, 2 * n_users)
        vocab_rows = rows_where(marked, "_part", 0)
        if vocab_scope == "train_val":
            val_only = rows_where(rows_where(marked, "_part", 1), "_vocab_val", True)
            vocab_rows = vocab_rows.union(val_only)
        vocab_order = ["_part", "user_id", "pos"]
    with steps.step("counting the plays of each split"):
        kept = rows_where(marked.select_columns(["_part", "_why"]), "_why", KEEP)
        part_rows = value_counts(kept, ["_part"])
    if not part_rows.get((0,)):
        raise ValueError("the training split is empty")
    with steps.step(f"the vocabulary: tracks played {vocab_min_freq}+ times in {vocab_scope}"):
        table = by_groups(vocab_rows.select_columns([*vocab_order, "track_id", "artist_id", "genre"]),
                          "track_id", groups, _tracks_group, order=vocab_order,
                          min_freq=vocab_min_freq).to_pandas()
    if table.empty:
        table = pd.DataFrame(columns=["track_id", "artist_id", "genre", "count"])
    vocab = Vocabulary.from_track_table(table, vocab_min_freq)
    check_vocab(vocab, vocab_min_freq, vocab_scope)

    tallies = {}
    for part, name in enumerate(SPLIT_NAMES):
        rows = rows_where(marked, "_part", part)
        rows = rows_where(rows, "_why", KEEP, PLACEHOLDER)
        tallies[name] = _SplitTally(vocab, max_seq_len)
        _write_split(rows, out_dir / f"{name}.parquet", order, Numbering(order[:1]), tallies[name], dtypes,
                     columns, None if offsets is None else offsets[part], steps, part_rows.get((part,), 0))
    return meta, vocab, tallies


def splits(sessions_path: Path, out_dir: Path, strategy: str = "temporal", val_frac: float = 0.1,
           test_frac: float = 0.1, vocab_min_freq: int = 5, vocab_scope: str = "train",
           max_seq_len: int = 50) -> SplitOutcome:
    """`make_splits` on Ray; writes `out_dir/{train,val,test}.parquet` (the vocabulary and the
    meta are the caller's to write). The temporal split of a sessions file in session order (what
    `preprocess` writes) streams through the file in its order; any other takes shuffles and sorts."""
    vocab_scope = check_split_args(strategy, vocab_min_freq, vocab_scope)
    schema = _schema_frame(sessions_path)
    dtypes = {**schema.dtypes.to_dict(), **SESSION_DTYPES, "is_target": np.dtype(bool)}
    columns = [*schema.columns, "is_target"]
    n_rows = pq.ParquetFile(sessions_path).metadata.num_rows
    if n_rows == 0:
        raise ValueError("no sessions to split")
    if strategy == "temporal":
        check_fractions(val_frac, test_frac)
    steps = Steps("splits")
    args = {"val_frac": val_frac, "test_frac": test_frac, "vocab_min_freq": vocab_min_freq,
            "vocab_scope": vocab_scope, "max_seq_len": max_seq_len, "ts_dtype": schema["ts"].dtype,
            "dtypes": dtypes, "columns": columns, "steps": steps, "n_rows": n_rows}
    with ray_data(n_rows) as ray:
        starts = _session_starts(sessions_path, n_rows, steps) if strategy == "temporal" else None
        if starts is not None:
            meta, vocab, tallies = _temporal_in_file_order(sessions_path, out_dir, starts, **args)
        else:
            if strategy == "temporal":
                steps.say("the sessions file is not in session order: the split takes shuffles and sorts")
            meta, vocab, tallies = _split_with_shuffles(ray, sessions_path, out_dir, strategy, **args)
    metrics: dict[str, float] = {"vocab_size": float(len(vocab))}
    for name, tally in tallies.items():
        metrics.update(tally.metrics(name))
    metrics["train_windows"] = float(tallies["train"].n["windows"])
    metrics["train_pairs"] = float(tallies["train"].n["pairs"])
    metrics["events_truncated_at_cutoffs"] = float(meta.get("events_truncated_at_cutoffs", 0))
    meta.update(strategy=strategy, val_frac=val_frac, test_frac=test_frac, vocab_min_freq=vocab_min_freq,
                vocab_scope=vocab_scope)
    heads = {name: tally.head for name, tally in tallies.items()}
    return SplitOutcome(meta, vocab, metrics, heads, tallies["train"].lengths)
