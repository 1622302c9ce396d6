"""Full softmax with label smoothing and sampled softmax with log-Q correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from playlistai.training.losses import (
    AUTO_SAMPLED_FROM,
    FullSoftmaxLoss,
    SampledSoftmaxLoss,
    make_loss,
    resolve_loss,
)


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


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_chunked_full_softmax_has_the_loss_and_gradients_of_the_unchunked_one(label_smoothing):
    hidden, table, targets = _inputs(V=300, D=16, B=6, L=7)
    hidden.requires_grad_(True)
    table.requires_grad_(True)
    keep = targets.reshape(-1) != 0
    logits = hidden.reshape(-1, 16)[keep] @ table[1:].T
    expected = F.cross_entropy(logits, targets.reshape(-1)[keep] - 1, label_smoothing=label_smoothing)
    exp_h, exp_t = torch.autograd.grad(expected, (hidden, table))

    loss_fn = FullSoftmaxLoss(label_smoothing, chunk_mb=5 * 299 * 8 / 2**20)   # 5 targets per chunk
    assert loss_fn.chunk_rows(299) == 5
    loss = loss_fn(hidden, table, targets)
    got_h, got_t = torch.autograd.grad(loss * 3.0, (hidden, table))   # the upstream gradient scales
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(got_h, 3.0 * exp_h)
    torch.testing.assert_close(got_t, 3.0 * exp_t)
    assert got_t[0].abs().sum() == 0                     # PAD's row is no class


def test_full_softmax_chunks_are_bounded_by_the_setting_not_the_catalog():
    for catalog in (1_000, 50_000, 1_000_000):
        rows = FullSoftmaxLoss(chunk_mb=64).chunk_rows(catalog)
        assert rows * catalog * 8 <= 64 * 2**20 or rows == 1
    assert FullSoftmaxLoss(chunk_mb=64).chunk_rows(1_000) > FullSoftmaxLoss(chunk_mb=64).chunk_rows(1_000_000)


def test_bf16_full_softmax_stays_close_to_float32():
    hidden, table, targets = _inputs(V=500, D=32, B=8, L=6)
    hidden.requires_grad_(True)
    ref = FullSoftmaxLoss(0.1)(hidden, table, targets)
    (ref_grad,) = torch.autograd.grad(ref, hidden)
    low = FullSoftmaxLoss(0.1, compute_dtype=torch.bfloat16)(hidden, table, targets)
    (low_grad,) = torch.autograd.grad(low, hidden)
    assert low.dtype == torch.float32 and low_grad.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 0.02 * ref.item()
    assert F.cosine_similarity(low_grad.reshape(1, -1), ref_grad.reshape(1, -1)).item() > 0.99


def test_auto_picks_the_full_softmax_for_small_catalogs_and_sampled_for_large_ones():
    assert resolve_loss("auto", 6_088) == "ce"
    assert resolve_loss("auto", AUTO_SAMPLED_FROM - 1) == "ce"
    assert resolve_loss("auto", AUTO_SAMPLED_FROM) == "sampled"
    assert resolve_loss("auto", 43_097) == "sampled"
    assert resolve_loss("ce", 10**7) == "ce"
    assert isinstance(make_loss("auto", vocab_size=1_000), FullSoftmaxLoss)
    assert isinstance(make_loss("auto", vocab_size=AUTO_SAMPLED_FROM + 1, num_negatives=8), SampledSoftmaxLoss)


def test_make_loss_rejects_unknown_names():
    assert isinstance(make_loss("ce"), FullSoftmaxLoss)
    assert isinstance(make_loss("sampled", num_negatives=8, vocab_size=10), SampledSoftmaxLoss)
    with pytest.raises(ValueError, match="unknown loss 'bpr'"):
        make_loss("bpr")
