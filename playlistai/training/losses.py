"""Next-track losses over every position of a batch of sequences.

Both take the model's hidden states [..., D], the tied item table [V, D] and targets [...]
(PAD = 0 marks positions with no target, which are ignored), and return a scalar mean.

- `FullSoftmaxLoss`: cross-entropy over the whole catalog with label smoothing, exact. It never
  holds a [targets x catalog] matrix: targets are processed in chunks whose logits fit in
  `chunk_mb`, and the gradient of each chunk is computed while its logits are at hand (the loss is
  the graph's last node, so its backward is a scaling of that gradient). Peak memory is set by
  `chunk_mb`, not by batch x positions x catalog.
- `SampledSoftmaxLoss`: cross-entropy over the target and `num_negatives` sampled tracks, with the
  log-Q correction (Bengio & Senecal 2008; Yi et al. 2019): subtracting log(expected count of each
  candidate in the sample) makes the sampled softmax an unbiased-in-the-limit estimate of the full
  one, which matters because popular tracks are sampled often and would otherwise be pushed down.
  Its cost does not grow with the catalog: the better choice once a full pass over the catalog per
  chunk of targets costs more than it teaches (`loss=auto` picks it above `AUTO_SAMPLED_FROM`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("auto", "ce", "sampled")
# catalog size (tracks) from which `loss=auto` trains with sampled softmax (BENCHMARKS.md, "Losses")
AUTO_SAMPLED_FROM = 20_000


def resolve_loss(name: str, catalog_size: int) -> str:
    """`auto` -> 'ce' or 'sampled' for a catalog of `catalog_size` tracks; other names unchanged."""
    if name != "auto":
        return name
    return "sampled" if catalog_size >= AUTO_SAMPLED_FROM else "ce"


def _select(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten and keep only positions that have a target (scoring PAD positions is wasted work)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != 0
    return hidden[keep], targets[keep]


class _ChunkedSoftmaxCrossEntropy(torch.autograd.Function):
    """mean over rows of label-smoothed cross-entropy(h @ table.T, t), chunk by chunk.

    With smoothing eps over C classes the loss of a row is lse(z) - (1 - eps) z_t - eps mean(z), and
    its gradient in z is softmax(z) - (1 - eps) onehot(t) - eps / C: both need only one chunk's
    logits at a time. Matmuls run in `compute_dtype` (bf16 where the hardware has it); logits,
    the softmax and the accumulated table gradient stay float32.
    """

    @staticmethod
    def forward(ctx, h, table, t, label_smoothing: float, chunk_rows: int, compute_dtype):
        n, classes = h.shape[0], table.shape[0]
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        h_c, table_c = h.detach().to(compute_dtype), table.detach().to(compute_dtype)
        grad_h = torch.empty_like(h, dtype=torch.float32) if needs_grad else None
        grad_table = torch.zeros_like(table, dtype=torch.float32) if needs_grad else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        eps = label_smoothing
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            z = (h_c[rows] @ table_c.T).float()                       # [c, C] logits
            tc = t[rows]
            lse = torch.logsumexp(z, dim=1)
            z_t = z.gather(1, tc[:, None]).squeeze(1)
            total += (lse - (1.0 - eps) * z_t - eps * z.mean(dim=1)).sum(dtype=torch.float64)
            if needs_grad:
                g = z.sub_(lse[:, None]).exp_()                         # softmax, in place of z
                g.sub_(eps / classes)
                g[torch.arange(len(tc), device=g.device), tc] -= 1.0 - eps
                g_c = g.to(compute_dtype)
                grad_h[rows] = g_c @ table_c
                grad_table += g_c.T @ h_c[rows]
        if needs_grad:
            ctx.save_for_backward(grad_h.div_(n), grad_table.div_(n))
        return (total / n).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_table = ctx.saved_tensors
        return grad_h * grad_loss, grad_table * grad_loss, None, None, None, None


class FullSoftmaxLoss:
    def __init__(self, label_smoothing: float = 0.1, chunk_mb: float = 256.0, compute_dtype=torch.float32):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not chunk_mb > 0:
            raise ValueError(f"chunk_mb must be > 0, got {chunk_mb}")
        self.label_smoothing = label_smoothing
        self.chunk_mb = chunk_mb
        self.compute_dtype = compute_dtype

    def chunk_rows(self, catalog_size: int) -> int:
        # per row of a chunk: float32 logits (reused for the softmax) + their compute-dtype copy
        bytes_per_row = catalog_size * (4 + torch.finfo(self.compute_dtype).bits // 8)
        return max(1, int(self.chunk_mb * 2**20 // bytes_per_row))

    def __call__(self, hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h, t = _select(hidden, targets)
        if t.numel() == 0:
            return hidden.sum() * 0.0
        # PAD is not a class: drop its row so smoothing mass only goes to real tracks
        table = item_table[1:]
        with torch.autocast(h.device.type, enabled=False):   # the function picks its own dtypes
            return _ChunkedSoftmaxCrossEntropy.apply(
                h.float(), table, t - 1, self.label_smoothing, self.chunk_rows(table.shape[0]), self.compute_dtype
            )


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

    def __call__(
        self, hidden: torch.Tensor, item_table: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """`item_table` is the table [V, D], or a function ids -> its rows (a model's `item_rows`), so
        that only the rows of the targets and the negatives are ever computed."""
        h, t = _select(hidden, targets)
        if t.numel() == 0:
            return hidden.sum() * 0.0
        rows_of = item_table.__getitem__ if isinstance(item_table, torch.Tensor) else item_table
        q = self.q.to(h.device)
        neg = torch.multinomial(q, self.num_negatives, replacement=True)          # [K]
        log_expected = torch.log(q * self.num_negatives)                         # log-Q per track
        pos_rows, neg_rows = rows_of(torch.cat([t, neg])).split([len(t), len(neg)])
        pos_logit = (h * pos_rows).sum(-1) - log_expected[t]                      # [N]
        neg_logit = h @ neg_rows.T - log_expected[neg][None, :]                   # [N, K]
        # a sampled "negative" that is the target itself would be trained against: mask it
        neg_logit = neg_logit.float().masked_fill(neg[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos_logit.float()[:, None], neg_logit], dim=1)
        labels = torch.zeros(len(t), dtype=torch.long, device=h.device)
        return F.cross_entropy(logits, labels)


def make_loss(
    name: str,
    *,
    label_smoothing: float = 0.1,
    num_negatives: int = 512,
    item_counts: np.ndarray | None = None,
    vocab_size: int | None = None,
    chunk_mb: float = 256.0,
    compute_dtype=torch.float32,
):
    """The loss `name` names; `auto` needs `vocab_size` (or `item_counts`) to choose."""
    if name == "auto":
        catalog = vocab_size if vocab_size is not None else (len(item_counts) if item_counts is not None else None)
        if catalog is None:
            raise ValueError("loss=auto needs the catalog size (vocab_size or item_counts)")
        name = resolve_loss(name, catalog - 1)
    if name == "ce":
        return FullSoftmaxLoss(label_smoothing, chunk_mb=chunk_mb, compute_dtype=compute_dtype)
    if name == "sampled":
        return SampledSoftmaxLoss(num_negatives, item_counts=item_counts, vocab_size=vocab_size)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
