"""Full softmax with label smoothing and sampled softmax with log-Q correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from playlistai.training.losses import FullSoftmaxLoss, SampledSoftmaxLoss, make_loss


def _inputs(V=30, D=8, B=4, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g)
    table = torch.randn(V, D, generator=g)
    targets = torch.randint(1, V, (B, L), generator=g)
    targets[0, :2] = 0                                   # padded steps have no target
    return hidden, table, targets


def test_full_softmax_matches_cross_entropy_over_real_tracks():
    hidden, table, targets = _inputs()
    loss = FullSoftmaxLoss(label_smoothing=0.1)(hidden, table, targets)
    keep = targets.reshape(-1) != 0
    logits = hidden.reshape(-1, 8)[keep] @ table[1:].T
    expected = F.cross_entropy(logits, targets.reshape(-1)[keep] - 1, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)


def test_pad_targets_are_ignored():
    hidden, table, targets = _inputs()
    loss = FullSoftmaxLoss(0.1)(hidden, table, targets)
    noisy = hidden.clone()
    noisy[0, :2] = 1e3                                   # whatever sits at padded steps
    torch.testing.assert_close(FullSoftmaxLoss(0.1)(noisy, table, targets), loss)
    assert FullSoftmaxLoss(0.1)(hidden, table, torch.zeros_like(targets)).item() == 0.0


def test_sampled_softmax_never_samples_pad_and_follows_the_full_softmax_gradient():
    torch.manual_seed(0)
    hidden, table, targets = _inputs(V=50)
    hidden.requires_grad_(True)
    (full_grad,) = torch.autograd.grad(FullSoftmaxLoss(0.0)(hidden, table, targets), hidden)
    counts = np.r_[0, np.arange(1, 50)]                  # skewed popularity
    sampled = SampledSoftmaxLoss(2000, item_counts=counts)
    assert sampled.q[0] == 0
    grads = [torch.autograd.grad(sampled(hidden, table, targets), hidden)[0] for _ in range(5)]
    # with the log-Q correction, the sampled loss pulls the states where the full softmax does
    cos = F.cosine_similarity(torch.stack(grads).mean(0).reshape(1, -1), full_grad.reshape(1, -1)).item()
    assert cos > 0.95


def test_sampled_softmax_masks_accidental_hits_and_trains():
    torch.manual_seed(0)
    hidden, table, targets = _inputs(V=6)
    table.requires_grad_(True)
    loss = SampledSoftmaxLoss(64, vocab_size=6)(hidden, table, targets)   # every target gets sampled
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(table.grad).all() and table.grad.abs().sum() > 0


def test_make_loss_rejects_unknown_names():
    assert isinstance(make_loss("ce"), FullSoftmaxLoss)
    assert isinstance(make_loss("sampled", num_negatives=8, vocab_size=10), SampledSoftmaxLoss)
    with pytest.raises(ValueError, match="unknown loss 'bpr'"):
        make_loss("bpr")
