"""The item table the Recommender scores against, in float32 or bfloat16 (ITEM_TABLE_DTYPE), laid out
as rows [V, D] or columns [D, V], whichever scores one query faster on this CPU.

One request is a batch of one: scoring it against the catalog reads the whole table for one row of
output, so its time should be the table's bytes over the memory bandwidth. bfloat16 halves the bytes,
and torch's bfloat16 matrix product uses the CPU's AVX-512 BF16 (or AMX) instructions where it has
them (BENCHMARKS.md, "Exact scoring in bfloat16"). Scores always leave as float32: the repeat bonus,
the neighbours' votes and the masks are added to them in float32, as with a float32 table.

The layout: a query times a [V, D] table is a matrix-vector product down the table's rows, a query
times [D, V] one along its columns, and which of the two kernels the BLAS runs near the memory's
speed depends on the CPU, the dtype and D (on a 2-core AMD EPYC, D 128, float32: 3x apart, in favour
of columns; at D 64 rows were the faster). So `layout="auto"` times both on the catalog itself when
the table is built and keeps the faster: measured, not guessed, on the machine that serves.

bfloat16 keeps 8 bits of mantissa, in the table and in the product's result: scores move by
about 0.4 % of their size, which can swap tracks of nearly equal score near the end of a top-k.
"""

from __future__ import annotations

import statistics
import time

import torch

ITEM_TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAYOUTS = ("auto", "rows", "columns")
# below this many tracks both layouts score in well under a millisecond: not worth timing
AUTO_LAYOUT_FROM = 20_000


class ItemTable:
    """Item vectors (row 0 is PAD) stored in one dtype and layout; scores come out float32."""

    def __init__(self, items: torch.Tensor, dtype: str = "float32", layout: str = "auto") -> None:
        if dtype not in ITEM_TABLE_DTYPES:
            raise ValueError(f"item table dtype must be one of {', '.join(ITEM_TABLE_DTYPES)}, got {dtype!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"item table layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.dtype_name = dtype
        self.dtype = ITEM_TABLE_DTYPES[dtype]
        rows = items.detach().to(self.dtype).contiguous()                               # [V, D]
        if layout == "auto" and len(rows) < AUTO_LAYOUT_FROM:
            layout = "rows"
        columns = rows.T.contiguous() if layout != "rows" else None                    # [D, V]
        if layout == "auto":
            layout = faster_layout(rows, columns)
        self.layout = layout
        self.weights = rows if layout == "rows" else columns

    def __len__(self) -> int:
        return self.weights.shape[0] if self.layout == "rows" else self.weights.shape[1]

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Query vectors [B, D] (float32) -> scores over the catalog [B, V], float32."""
        # the product in the table's dtype (what makes bfloat16 fast), its result made float32
        return _product(queries.to(self.dtype), self.weights, self.layout).float()


def _product(queries: torch.Tensor, weights: torch.Tensor, layout: str) -> torch.Tensor:
    return queries @ weights.T if layout == "rows" else queries @ weights


def faster_layout(rows: torch.Tensor, columns: torch.Tensor, repeats: int = 5) -> str:
    """'rows' or 'columns': in which layout of one table, `rows` [V, D] or `columns` [D, V], one
    query scores faster (median of `repeats`, after one warm-up each)."""
    query = torch.randn(1, rows.shape[1]).to(rows.dtype)
    seconds = {}
    with torch.inference_mode():
        for layout, weights in (("rows", rows), ("columns", columns)):
            _product(query, weights, layout)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                _product(query, weights, layout)
                times.append(time.perf_counter() - started)
            seconds[layout] = statistics.median(times)
    return min(seconds, key=seconds.get)
