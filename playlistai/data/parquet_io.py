"""Parquet in batches: writing a file as pandas writes it whole (`ParquetStream`), and reading a file
sorted by a key in batches that never cut a key's rows apart (`whole_groups`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# the row group size pandas (pyarrow) writes: the streamed files keep it, so they are the same bytes
ROW_GROUP_ROWS = 1024 * 1024
HEAD_ROWS = 1000                   # rows of an output logged with its MLflow dataset


def whole_groups(batches: Iterable[pa.RecordBatch], key: str) -> Iterator[pa.Table]:
    """Record batches of a table sorted (or at least grouped) by `key`, regrouped so that no key's
    rows span two tables: each table ends before the last key of its batch, which moves on to the
    next one."""
    carried: pa.Table | None = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if carried is not None:
            table = pa.concat_tables([carried, table])
        if not table.num_rows:
            continue
        keys = table.column(key)
        last_key_from = int(np.argmax(pc.equal(keys, keys[-1]).to_numpy(zero_copy_only=False)))
        if last_key_from:
            yield table.slice(0, last_key_from)
        carried = table.slice(last_key_from)
    if carried is not None and carried.num_rows:
        yield carried


class ParquetStream:
    """Writes a frame that arrives in batches as `DataFrame.to_parquet(index=False)` writes it whole:
    the same schema and pandas metadata, the same row groups, the same bytes.

    `has_values(columns)` answers, for object columns whose first rows are all null, whether any
    row of the whole output has a value (pandas types such a column by all its values)."""

    def __init__(self, path: Path, has_values: Callable[[list[str]], dict[str, bool]],
                 row_group_rows: int = ROW_GROUP_ROWS):
        self.path = Path(path)
        self.has_values = has_values
        self.row_group_rows = row_group_rows
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pd.DataFrame] = []
        self._rows = 0
        self.rows_written = 0
        self.head: pd.DataFrame | None = None

    def _schema_of(self, chunk: pd.DataFrame) -> pa.Schema:
        schema = pa.Table.from_pandas(chunk, preserve_index=False).schema
        nulls = [f.name for f in schema if pa.types.is_null(f.type)]
        answered = self.has_values(nulls) if nulls else {}
        if any(answered.values()):
            probe = chunk.head(1).copy()
            for name in nulls:
                if answered.get(name):
                    probe[name] = pd.Series([""], dtype=object, index=probe.index)
            schema = pa.Table.from_pandas(probe, preserve_index=False).schema
        return schema

    def _flush(self, chunk: pd.DataFrame) -> None:
        if self._writer is None:
            self._schema = self._schema_of(chunk)
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="snappy")
        self._writer.write_table(pa.Table.from_pandas(chunk, schema=self._schema, preserve_index=False))
        self.rows_written += len(chunk)

    def write(self, frame: pd.DataFrame) -> None:
        if self.head is None or len(self.head) < HEAD_ROWS:
            self.head = frame.head(HEAD_ROWS) if self.head is None else \
                pd.concat([self.head, frame.head(HEAD_ROWS - len(self.head))], ignore_index=True)
        self._pending.append(frame)
        self._rows += len(frame)
        while self._rows >= self.row_group_rows:
            whole = pd.concat(self._pending, ignore_index=True)
            self._flush(whole.iloc[: self.row_group_rows].reset_index(drop=True))
            rest = whole.iloc[self.row_group_rows :].reset_index(drop=True)
            self._pending, self._rows = [rest], len(rest)

    def close(self, empty_like: pd.DataFrame) -> None:
        """Write what is left; an output without rows is written as pandas writes `empty_like`."""
        if self._rows or self._writer is None:
            rest = pd.concat(self._pending, ignore_index=True) if self._rows else empty_like
            if self._writer is None and not self._rows:
                rest.to_parquet(self.path, index=False)
                self.head = rest
            else:
                self._flush(rest.reset_index(drop=True))
        if self._writer is not None:
            self._writer.close()
