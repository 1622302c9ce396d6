"""Sparse item updates: only the item-table rows a step used change, and training still learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from playlistai.models import build_model
from playlistai.training.loop import _LossStep
from playlistai.training.losses import SampledSoftmaxLoss
from playlistai.training.optim import AUTO_SPARSE_FROM, ModelOptimizer, clip_grad_norm, resolve_item_updates

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cosine_scale", [0.0, 16.0])
def test_item_rows_are_the_rows_of_the_scoring_table(small_model_config, cosine_scale):
    model = build_model(dataclasses.replace(small_model_config(50), cosine_scale=cosine_scale))
    ids = torch.tensor([[3, 0, 7], [7, 49, 1]])
    assert torch.allclose(model.item_rows(ids), model.item_embeddings()[ids], atol=1e-6)


def test_resolving_item_updates():
    assert resolve_item_updates("auto", "sampled", AUTO_SPARSE_FROM) == "sparse"
    assert resolve_item_updates("auto", "sampled", AUTO_SPARSE_FROM - 1) == "dense"
    assert resolve_item_updates("auto", "ce", 10 * AUTO_SPARSE_FROM) == "dense"      # the full softmax touches every row
    assert resolve_item_updates("dense", "sampled", 10 * AUTO_SPARSE_FROM) == "dense"
    with pytest.raises(ValueError, match="needs loss=sampled"):
        resolve_item_updates("sparse", "ce", 10)


def test_clipping_a_sparse_gradient_matches_clipping_it_dense():
    torch.manual_seed(0)
    rows = torch.tensor([1, 4, 1, 2])                       # row 1 twice: an uncoalesced gradient
    values = torch.randn(4, 3)
    sparse_param, dense_param = torch.nn.Parameter(torch.zeros(6, 3)), torch.nn.Parameter(torch.zeros(6, 3))
    bias = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    sparse_param.grad = torch.sparse_coo_tensor(rows[None], values, (6, 3), check_invariants=True)
    dense_param.grad = sparse_param.grad.to_dense()
    for b in bias:
        b.grad = torch.tensor([3.0, -4.0])
    ours = clip_grad_norm([sparse_param, bias[0]], 1.0)
    theirs = torch.nn.utils.clip_grad_norm_([dense_param, bias[1]], 1.0)
    assert torch.allclose(ours, theirs) and float(theirs) > 1.0           # it did clip
    assert torch.allclose(sparse_param.grad.to_dense(), dense_param.grad)
    assert torch.allclose(bias[0].grad, bias[1].grad)


def test_a_sparse_step_changes_only_the_rows_it_used(tiny_training_data, small_model_config):
    torch.manual_seed(0)
    model = build_model(small_model_config(tiny_training_data.vocab.size))
    model.item_emb.sparse = True
    table = model.item_emb.weight
    optimizer = ModelOptimizer(list(model.parameters()), 1e-2, 0.01, lambda step: 1.0, item_table=table)
    loss_fn = SampledSoftmaxLoss(8, vocab_size=model.config.vocab_size)
    input_ids, target_ids, hours, dows = tiny_training_data.train.batch(torch.arange(4).numpy())
    before = table.detach().clone()
    loss = _LossStep(model, loss_fn)(input_ids, target_ids, hours, dows)
    loss.backward()
    assert table.grad.is_sparse
    used = torch.zeros(len(before), dtype=torch.bool)
    used[table.grad.coalesce().indices()[0]] = True
    optimizer.step(grad_clip=1.0)
    changed = (table.detach() != before).any(dim=1)
    assert changed.any() and torch.equal(changed, used & changed)        # nothing outside the used rows moved
    assert not changed[0]                                                 # PAD never learns
    assert set(torch.unique(target_ids[target_ids != 0]).tolist()) <= set(torch.nonzero(used).flatten().tolist())
