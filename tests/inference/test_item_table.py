"""The exact path's item table: both layouts and both dtypes score and gather alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from playlistai.inference import item_table as item_table_lib
from playlistai.inference.item_table import ItemTable, faster_layout


@pytest.fixture
def items() -> torch.Tensor:
    table = torch.nn.functional.normalize(torch.randn(3000, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    table[0] = 0.0
    return table


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_both_layouts_give_the_scores_of_the_table(items, dtype, tolerance):
    queries = torch.randn(3, 32) * 16
    expected = queries @ items.T
    for layout in ("rows", "columns"):
        table = ItemTable(items, dtype, layout)
        assert table.layout == layout and len(table) == 3000
        scores = table.scores(queries)
        assert scores.dtype == torch.float32 and scores.shape == (3, 3000)
        assert torch.allclose(scores, expected, atol=tolerance * 16, rtol=0)
    assert ItemTable(items, dtype, "columns").weights.shape == (32, 3000)


def test_auto_layout_keeps_the_faster_one_on_a_large_table(items, monkeypatch):
    assert ItemTable(items, "float32").layout == "rows"                # small: not worth timing
    monkeypatch.setattr(item_table_lib, "AUTO_LAYOUT_FROM", 1000)
    measured = faster_layout(items.contiguous(), items.T.contiguous())
    assert measured in ("rows", "columns")
    monkeypatch.setattr(item_table_lib, "faster_layout", lambda rows, columns: "columns")
    table = ItemTable(items, "float32")
    assert table.layout == "columns" and table.weights.shape == (32, 3000)


def test_a_bad_layout_or_dtype_is_refused(items):
    with pytest.raises(ValueError, match="layout must be one of"):
        ItemTable(items, "float32", "diagonal")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ItemTable(items, "float16")


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq"])
def test_the_ann_path_reads_the_vectors_the_index_stores(items, index_type):
    from playlistai.inference import ann as ann_lib

    index, _ = ann_lib.build_index(items[1:].numpy(), index_type)
    vectors = ann_lib.stored_vectors(index)
    ids = np.array([0, 2998, 5, 5, 17])
    assert np.array_equal(vectors(ids), items[1:].numpy()[ids])
    del index                                       # the reader keeps what it reads alive
    assert np.array_equal(vectors(ids), items[1:].numpy()[ids])
