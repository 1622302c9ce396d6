"""The item table the Recommender scores against, in float32 or bfloat16 (ITEM_TABLE_DTYPE).

One request is a batch of one: scoring it against the catalog reads the whole [V, D] table for one
row of output, so its time is the table's bytes. bfloat16 halves them, and torch's bfloat16 matrix
product uses the CPU's AVX-512 BF16 (or AMX) instructions where it has them (BENCHMARKS.md, "Exact
scoring in bfloat16"). Scores always leave as float32: the repeat bonus, the neighbours' votes
and the masks are added to them in float32, as with a float32 table.

bfloat16 keeps 8 bits of mantissa, in the table and in the product's result: scores move by
about 0.4 % of their size, which can swap tracks of nearly equal score near the end of a top-k.
"""

from __future__ import annotations

import torch

ITEM_TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ItemTable:
    """Item vectors [V, D] (row 0 is PAD) stored in one dtype; scores and rows come out float32."""

    def __init__(self, items: torch.Tensor, dtype: str = "float32") -> None:
        if dtype not in ITEM_TABLE_DTYPES:
            raise ValueError(f"item table dtype must be one of {', '.join(ITEM_TABLE_DTYPES)}, got {dtype!r}")
        self.dtype_name = dtype
        self.dtype = ITEM_TABLE_DTYPES[dtype]
        self.weights = items.detach().to(self.dtype).contiguous()                    # [V, D]

    def __len__(self) -> int:
        return self.weights.shape[0]

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Query vectors [B, D] (float32) -> scores over the catalog [B, V], float32."""
        if self.dtype == torch.float32:
            return queries @ self.weights.T
        # the product in the table's dtype (what makes it fast), its [B, V] result made float32
        return (queries.to(self.dtype) @ self.weights.T).float()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The vectors of `ids` (any shape) as float32 [..., D]: the ANN path re-scores a few hundred."""
        return self.weights[ids].float()
