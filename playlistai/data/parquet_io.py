"""Reading a Parquet file that is sorted by a key in batches that never cut a key's rows apart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
