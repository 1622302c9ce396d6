"""Next-track losses over every position of a batch of sequences.

Both take the model's hidden states [..., D], the tied item table [V, D] and targets [...]
(PAD = 0 marks positions with no target, which are ignored), and return a scalar mean.

- `FullSoftmaxLoss`: cross-entropy over the whole catalog with label smoothing; the default,
  exact and affordable up to ~10^5 tracks.
- `SampledSoftmaxLoss`: cross-entropy over the target and `num_negatives` sampled tracks, with the
  log-Q correction (Bengio & Senecal 2008; Yi et al. 2019): subtracting log(expected count of each
  candidate in the sample) makes the sampled softmax an unbiased-in-the-limit estimate of the full
  one, which matters because popular tracks are sampled often and would otherwise be pushed down.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("ce", "sampled")


def _select(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten and keep only positions that have a target (scoring PAD positions is wasted work)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != 0
    return hidden[keep], targets[keep]


class FullSoftmaxLoss:
    def __init__(self, label_smoothing: float = 0.1):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h, t = _select(hidden, targets)
        if t.numel() == 0:
            return hidden.sum() * 0.0
        # PAD is not a class: drop its column so smoothing mass only goes to real tracks
        logits = h @ item_table[1:].T
        return F.cross_entropy(logits, t - 1, label_smoothing=self.label_smoothing)


class SampledSoftmaxLoss:
    def __init__(
        self,
        num_negatives: int,
        item_counts: np.ndarray | torch.Tensor | None = None,
        vocab_size: int | None = None,
        alpha: float = 0.75,
    ):
        """Negatives are drawn (shared across the batch) from counts**alpha, or uniformly when
        `item_counts` is None; counts are indexed by vocabulary index, PAD (0) included.
        No label smoothing here: it would spread mass onto masked accidental hits."""
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if item_counts is None:
            if vocab_size is None:
                raise ValueError("give item_counts or vocab_size")
            q = torch.ones(vocab_size, dtype=torch.float64)
        else:
            q = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64).clamp(min=0) ** alpha
            q = q + 1e-12  # tracks with no training play can still be sampled, rarely
        q[0] = 0.0
        self.q = (q / q.sum()).float()
        self.num_negatives = num_negatives

    def __call__(self, hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h, t = _select(hidden, targets)
        if t.numel() == 0:
            return hidden.sum() * 0.0
        q = self.q.to(h.device)
        neg = torch.multinomial(q, self.num_negatives, replacement=True)          # [K]
        log_expected = torch.log(q * self.num_negatives)                         # log-Q per track
        pos_logit = (h * item_table[t]).sum(-1) - log_expected[t]                 # [N]
        neg_logit = h @ item_table[neg].T - log_expected[neg][None, :]            # [N, K]
        # a sampled "negative" that is the target itself would be trained against: mask it
        neg_logit = neg_logit.masked_fill(neg[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
        labels = torch.zeros(len(t), dtype=torch.long, device=h.device)
        return F.cross_entropy(logits, labels)


def make_loss(
    name: str,
    *,
    label_smoothing: float = 0.1,
    num_negatives: int = 512,
    item_counts: np.ndarray | None = None,
    vocab_size: int | None = None,
):
    if name == "ce":
        return FullSoftmaxLoss(label_smoothing)
    if name == "sampled":
        return SampledSoftmaxLoss(num_negatives, item_counts=item_counts, vocab_size=vocab_size)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
