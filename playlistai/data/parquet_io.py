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


def _probe(table: pa.Table) -> pa.Table:
    """One row: each column's first value that is not null (null if it has none)."""
    return pa.table({name: (column.drop_null() if column.null_count < len(column) else column).slice(0, 1)
                     for name, column in zip(table.column_names, table.columns, strict=True)})


class ParquetStream:
    """Writes a frame that arrives in batches as `DataFrame.to_parquet(index=False)` writes it whole:
    the same schema and pandas metadata, the same row groups, the same bytes.

    The batches are pandas frames (`write`) or Arrow tables (`write_table`) whose frame is
    `frame_of(table)`: Arrow batches stay in Arrow, only the head and one row that types the file
    go through pandas. One stream takes one kind.

    `has_values(columns)` answers, for object columns whose first rows are all null, whether any
    row of the whole output has a value (pandas types such a column by all its values)."""

    def __init__(self, path: Path, has_values: Callable[[list[str]], dict[str, bool]],
                 row_group_rows: int = ROW_GROUP_ROWS,
                 frame_of: Callable[[pa.Table], pd.DataFrame] = pa.Table.to_pandas):
        self.path = Path(path)
        self.has_values = has_values
        self.row_group_rows = row_group_rows
        self.frame_of = frame_of
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pd.DataFrame | pa.Table] = []
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

    def _open(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._writer = pq.ParquetWriter(self.path, schema, compression="snappy")

    def _flush(self, chunk: pd.DataFrame | pa.Table) -> None:
        if isinstance(chunk, pa.Table):
            if self._writer is None:
                # the types pandas gives the whole chunk: a column typed by its values is typed by
                # its first value, and is null only where the chunk has no value
                self._open(self._schema_of(self.frame_of(_probe(chunk))))
            columns = [pa.nulls(chunk.num_rows) if pa.types.is_null(f.type) else
                       chunk.column(f.name).cast(f.type).combine_chunks() for f in self._schema]
            table = pa.Table.from_arrays(columns, schema=self._schema)
        else:
            if self._writer is None:
                self._open(self._schema_of(chunk))
            table = pa.Table.from_pandas(chunk, schema=self._schema, preserve_index=False)
        self._writer.write_table(table)
        self.rows_written += len(chunk)

    def _keep_head(self, frame: pd.DataFrame) -> None:
        if self.head is None or len(self.head) < HEAD_ROWS:
            self.head = frame.head(HEAD_ROWS) if self.head is None else \
                pd.concat([self.head, frame.head(HEAD_ROWS - len(self.head))], ignore_index=True)

    def _add(self, batch: pd.DataFrame | pa.Table) -> None:
        self._pending.append(batch)
        self._rows += len(batch)
        while self._rows >= self.row_group_rows:
            whole, n = self._whole(), self.row_group_rows
            if isinstance(whole, pa.Table):
                self._flush(whole.slice(0, n))
                rest = whole.slice(n)
            else:
                self._flush(whole.iloc[:n].reset_index(drop=True))
                rest = whole.iloc[n:].reset_index(drop=True)
            self._pending, self._rows = [rest], len(rest)

    def _whole(self) -> pd.DataFrame | pa.Table:
        if isinstance(self._pending[0], pa.Table):
            return pa.concat_tables(self._pending)
        return pd.concat(self._pending, ignore_index=True)

    def write(self, frame: pd.DataFrame) -> None:
        self._keep_head(frame)
        self._add(frame.reset_index(drop=True))

    def write_table(self, table: pa.Table) -> None:
        if self.head is None or len(self.head) < HEAD_ROWS:
            self._keep_head(self.frame_of(table.slice(0, HEAD_ROWS)))
        self._add(table)

    def close(self, empty_like: pd.DataFrame) -> None:
        """Write what is left; an output without rows is written as pandas writes `empty_like`."""
        if self._rows or self._writer is None:
            if self._writer is None and not self._rows:
                empty_like.to_parquet(self.path, index=False)
                self.head = empty_like
            else:
                rest = self._whole()
                self._flush(rest.reset_index(drop=True) if isinstance(rest, pd.DataFrame) else rest)
        if self._writer is not None:
            self._writer.close()
