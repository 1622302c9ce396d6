"""The optimizer of a training run: AdamW over the whole model, or, with sparse item updates, AdamW
over everything but the item table and lazy Adam over the rows of the table a step used.

Why sparse: on a catalog of a million tracks the item table is nearly all of the model (115M of its
parameters at d_model 128), and a step of the sampled loss uses a few thousand of its rows (the
batch's tracks, its targets, the negatives). A dense update still reads and writes every row's
weight, gradient and two moments, and DDP all-reduces a gradient the size of the table: seconds per
step, whatever the batch. Lazy Adam (torch's SparseAdam) updates a row and its moments only when the
row has a gradient, so a step costs what the batch touches. What it gives up: rows left unused keep
their moments as they were, and the table gets no weight decay. A cosine model (the default) scores
by a row's direction, not its norm, so decay, which only shrinks norms, does not change its ranking.

`item_updates=auto` takes sparse updates with the sampled loss from AUTO_SPARSE_FROM tracks
(BENCHMARKS.md, "Sparse item updates"); the full softmax touches every row, so it stays dense.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from playlistai.training.losses import resolve_loss

ITEM_UPDATES = ("auto", "dense", "sparse")
# catalog size (tracks) from which `item_updates=auto` updates only the rows a step used
AUTO_SPARSE_FROM = 100_000
BETAS = (0.9, 0.98)


def resolve_item_updates(name: str, loss: str, catalog_size: int) -> str:
    """`auto` -> 'dense' or 'sparse' for `loss` (`auto` included) on `catalog_size` tracks."""
    loss = resolve_loss(loss, catalog_size)
    if name == "sparse" and loss != "sampled":
        raise ValueError(f"item_updates=sparse needs loss=sampled (loss {loss!r} scores every track at every step)")
    if name != "auto":
        return name
    return "sparse" if loss == "sampled" and catalog_size >= AUTO_SPARSE_FROM else "dense"


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    # nanoGPT's rule: matrices (embeddings included) decay, biases and LayerNorm gains do not
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelOptimizer:
    """One lr schedule (`lr_lambda` of the step, as LambdaLR takes it) over one or two optimizers.

    `item_table` given, its gradient is expected sparse (the caller sets the embedding's `sparse`)
    and it gets SparseAdam at the lr of the rest of the model."""

    def __init__(self, params: list[nn.Parameter], lr: float, weight_decay: float,
                 lr_lambda: Callable[[int], float], item_table: nn.Parameter | None = None):
        self.params = [p for p in params if p.requires_grad]
        dense = [p for p in self.params if p is not item_table]
        self.optimizer = torch.optim.AdamW(_param_groups(dense, weight_decay), lr=lr, betas=BETAS)
        self.item_optimizer = torch.optim.SparseAdam([item_table], lr=lr, betas=BETAS) if item_table is not None else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self._sync_item_lr()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.item_optimizer is not None:
            self.item_optimizer.zero_grad(set_to_none=True)

    def step(self, grad_clip: float) -> None:
        """Clip the gradient's global norm to `grad_clip`, update, advance the schedule."""
        clip_grad_norm(self.params, grad_clip)
        self.optimizer.step()
        if self.item_optimizer is not None:
            self.item_optimizer.step()
        self.scheduler.step()
        self._sync_item_lr()

    def apply_schedule(self) -> None:
        """Set the lr of the next step from the schedule now, after the state it reads has changed."""
        s = self.scheduler
        for group, base_lr, lr_lambda in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas, strict=True):
            group["lr"] = base_lr * lr_lambda(s.last_epoch)
        self._sync_item_lr()

    def _sync_item_lr(self) -> None:
        if self.item_optimizer is not None:
            self.item_optimizer.param_groups[0]["lr"] = self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "item_optimizer": self.item_optimizer.state_dict() if self.item_optimizer is not None else None,
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved_sparse, sparse = state.get("item_optimizer") is not None, self.item_optimizer is not None
        if saved_sparse != sparse:
            was = "sparse" if saved_sparse else "dense"
            raise ValueError(f"cannot resume: the saved run updated the item table {was}ly; pass item_updates={was}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.item_optimizer is not None:
            self.item_optimizer.load_state_dict(state["item_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._sync_item_lr()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_, sparse gradients included (torch's refuses them): the norm
    of a sparse gradient is that of its coalesced values (an uncoalesced one may repeat a row)."""
    grads = [p.grad for p in params if p.grad is not None]
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    dense = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    sparse = [p.grad for p in params if p.grad is not None and p.grad.is_sparse]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(dense + [g.values() for g in sparse])
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        torch.nn.utils.clip_grads_with_norm_(
            [p for p in params if p.grad is not None and not p.grad.is_sparse], max_norm, total)
        for g in sparse:
            g.mul_(coef)
    return total
