"""The training loop, shared by `trainer=local` and every Ray Train worker.

One epoch = every training window once (each worker its own shard), with every position of each
window a next-track target. After each epoch the loop validates on the validation split with the
evaluator (full catalog, tracks of the input excluded), keeps the best weights by val_ndcg_at_10,
and stops after `patience` epochs without improvement, or once `max_minutes` of training would be
exceeded by another epoch: epochs is a safety cap, not the way a run is meant to end.

Distributed: with world_size > 1 the model runs under DistributedDataParallel. `batch_size` is
the global batch (each of N workers takes batch_size / N), so 1 and 2 workers take the same
number of optimizer steps with the same effective batch, and their metrics are comparable.
Validation cases are sharded too and the per-case means are combined exactly, so every worker
sees the same metric and takes the same early-stopping decision.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from playlistai.data.sequences import NextTrackCases, case_sample
from playlistai.evaluation.evaluator import evaluate_next_track, rows_per_score_batch
from playlistai.models import SequenceRecommender
from playlistai.training.losses import LOSSES, SampledSoftmaxLoss, make_loss
from playlistai.training.optim import ITEM_UPDATES, ModelOptimizer, resolve_item_updates
from playlistai.training.precision import PRECISIONS, autocast_dtype
from playlistai.training.score_terms import collect_evidence, fit_terms
from playlistai.training.windows import TrainWindows

EARLY_STOP_METRIC = "val_ndcg_at_10"
STOP_REASONS = ("early_stopping", "max_minutes", "epochs")
VAL_KS = (10, 20)
STATE_FORMAT_VERSION = 1


@dataclass
class TrainConfig:
    epochs: int = 200                # a safety cap: runs end by early stopping or max_minutes
    batch_size: int = 256            # global batch, split across workers
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100          # linear warm-up (at most one epoch), then constant: resuming never shifts it
    plateau_lr_factor: float = 0.5   # after an epoch without val improvement the lr is multiplied by this; 1 = off
    grad_clip: float = 1.0
    loss: str = "auto"               # 'ce' (full softmax) | 'sampled' (log-Q corrected) | 'auto' (by catalog size)
    num_negatives: int = 2048        # sampled softmax only
    label_smoothing: float = 0.1     # full softmax only
    item_updates: str = "auto"       # 'dense' | 'sparse' (only the item rows a step used; sampled loss) | 'auto'
    ce_chunk_mb: float = 256.0       # full softmax: the logits of at most this many MB exist at once
    precision: str = "auto"          # 'auto' (bf16 where the hardware runs it fast) | 'bf16' | 'fp32'
    max_minutes: float = 0.0         # stop before an epoch that would end past this budget; 0 = none
    anneal_to_budget: bool = True    # with max_minutes: the lr decays linearly to 0 at the budget's last epoch
    epoch_windows: int = 0           # windows sampled per epoch (validation that often); 0 = all of them
    patience: int = 2                # epochs without val_ndcg_at_10 improvement before stopping; 0 = never stop early
    seed: int = 42
    val_max_cases: int = 5000        # per-epoch validation on a fixed random subset; 0 = all cases
    val_exclude_seen: bool = True    # validate as the evaluation will rank: without (true) or with repeats
    fit_repeat_bonus: bool = True    # with repeats allowed, fit the model's repeat bonus at every validation
    eval_batch_size: int = 512          # at most; fewer on a large catalog (rows_per_score_batch)
    progress: bool = True            # tqdm bar per epoch (rank 0 only)

    def validate(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.plateau_lr_factor <= 1.0:
            problems.append(f"plateau_lr_factor must be in (0, 1], got {self.plateau_lr_factor}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.item_updates not in ITEM_UPDATES:
            problems.append(f"item_updates must be one of {ITEM_UPDATES}, got {self.item_updates!r}")
        elif self.item_updates == "sparse" and self.loss == "ce":
            problems.append("item_updates=sparse needs loss=sampled (or auto on a large catalog)")
        if self.num_negatives < 1:
            problems.append(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.ce_chunk_mb > 0:
            problems.append(f"ce_chunk_mb must be > 0, got {self.ce_chunk_mb}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epoch_windows < 0:
            problems.append(f"epoch_windows must be >= 0 (0 = every window), got {self.epoch_windows}")
        if self.max_minutes < 0:
            problems.append(f"max_minutes must be >= 0 (0 = no budget), got {self.max_minutes}")
        if self.patience < 0:
            problems.append(f"patience must be >= 0, got {self.patience}")
        if self.val_max_cases < 0:
            problems.append(f"val_max_cases must be >= 0, got {self.val_max_cases}")
        if self.eval_batch_size < 1:
            problems.append(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# -- data ------------------------------------------------------------------------------------------


def epoch_batches(
    lengths: np.ndarray, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
    bucket_batches: int = 50, sample: int = 0,
) -> list[np.ndarray]:
    """This rank's batches of window indices for one epoch.

    A seeded shuffle (its first `sample` windows only, when 0 < sample < all), cut into equal shards (wrapping around, so every rank takes the same number
    of steps: DDP all-reduces at each one). Within chunks of `bucket_batches` batches, windows are
    sorted by length so a batch trims little padding; batch order is shuffled again afterwards.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if 0 < sample < len(perm):
        perm = perm[:sample]
    n = len(perm)
    local_bs = math.ceil(batch_size / world_size)
    per_rank = math.ceil(n / world_size)
    perm = np.resize(perm, per_rank * world_size)
    shard = perm[rank::world_size]
    batches = []
    chunk = local_bs * bucket_batches
    for start in range(0, len(shard), chunk):
        part = shard[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + local_bs] for i in range(0, len(part), local_bs))
    return [batches[i] for i in rng.permutation(len(batches))]


def validation_subset(cases: NextTrackCases, max_cases: int, seed: int) -> NextTrackCases:
    """A fixed random subset (the same every epoch), ordered by history length so that batches of
    short histories trim their padding. Metrics are means over cases: order does not matter."""
    keep = case_sample(len(cases), max_cases, seed)
    if keep is not None:
        cases = cases.subset(keep)
    order = np.argsort(np.minimum(cases.history_lengths, cases.histories.shape[1]), kind="stable")
    return cases.subset(order)


# -- distributed helpers ---------------------------------------------------------------------------


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def _all_reduce(values: list[float], world_size: int, op=None) -> list[float]:
    if not _distributed(world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op if op is not None else dist.ReduceOp.SUM)
    return t.tolist()


def validate(
    model: SequenceRecommender, cases: NextTrackCases, config: TrainConfig, rank: int = 0, world_size: int = 1
) -> dict[str, float]:
    """val_* metrics over `cases`, each rank scoring its share; means are combined exactly.

    Validating with repeats allowed (and `fit_repeat_bonus`), the model's repeat bonus is first set
    to the value that maximises EARLY_STOP_METRIC on these cases, and the metrics are those of the
    model with it (`val_repeat_bonus` reports it).
    """
    shard = cases.subset(np.arange(len(cases)) % world_size == rank)
    keys = [f"{m}_at_{k}" for m in ("recall", "ndcg", "mrr") for k in VAL_KS]
    if not config.val_exclude_seen and config.fit_repeat_bonus:
        return _validate_fitting_repeat_bonus(model, shard, keys, config, world_size)
    if len(shard):
        metrics = evaluate_next_track(
            model, shard, ks=VAL_KS, exclude_seen=config.val_exclude_seen, batch_size=_eval_rows(model, config)
        )
        sums = [metrics[k] * len(shard) for k in keys]
    else:
        sums = [0.0] * len(keys)
    totals = _all_reduce(sums + [float(len(shard))], world_size)
    n = max(totals[-1], 1.0)
    return {f"val_{k}": totals[i] / n for i, k in enumerate(keys)}


def _eval_rows(model: SequenceRecommender, config: TrainConfig) -> int:
    return rows_per_score_batch(model.config.vocab_size, config.eval_batch_size)


def _validate_fitting_repeat_bonus(
    model: SequenceRecommender, shard: NextTrackCases, keys: list[str], config: TrainConfig, world_size: int
) -> dict[str, float]:
    evidence = collect_evidence(model, shard, max(VAL_KS), _eval_rows(model, config)) if len(shard) else None
    fitted = fit_terms(evidence, keys, VAL_KS, EARLY_STOP_METRIC.removeprefix("val_"),
                       reduce=lambda values: _all_reduce(values, world_size))
    model.repeat_bonus.fill_(fitted.bonus)
    return {**{f"val_{k}": v for k, v in fitted.metrics.items()}, "val_repeat_bonus": fitted.bonus}


# -- the loop --------------------------------------------------------------------------------------


class _LossStep(nn.Module):
    """Model + loss in one forward, so DDP sees the tied item table used in one forward pass."""

    def __init__(self, model: SequenceRecommender, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, input_ids, target_ids, hours, dows):
        hidden = self.model(input_ids, hours, dows)
        # the sampled loss asks for its rows only: the whole table is never normalised, and its
        # gradient stays sparse when the embedding's is
        items = self.model.item_rows if isinstance(self.loss_fn, SampledSoftmaxLoss) else self.model.item_embeddings()
        return self.loss_fn(hidden, items, target_ids)


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """What an epoch-end callback can persist, and what `resume_state` restores."""

    epoch: int = 0                    # completed epochs
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    best_model: dict | None = None    # state_dict of the best epoch
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0        # wall time of the epochs so far (resumed runs carry it on)
    lr_scale: float = 1.0             # product of the plateau decays so far
    anneal_start_step: int = 0        # budget annealing: the lr falls linearly from here...
    anneal_end_step: int = 0          # ...to 0 here (both 0: no annealing)

    def anneal_factor(self, step: int) -> float:
        """1 until budget annealing starts, then linear to 0 at `anneal_end_step`.

        A fixed number of steps at a constant lr ends wherever the budget cuts it; decaying to zero
        as the budget ends lets the last epochs settle into the minimum instead (Li et al. 2020,
        "Budgeted training": a linear decay to the budget beats step and plateau schedules)."""
        if self.anneal_end_step <= self.anneal_start_step:
            return 1.0
        return min(1.0, max(0.0, (self.anneal_end_step - step) / (self.anneal_end_step - self.anneal_start_step)))

    def snapshot(self, model, optimizer: ModelOptimizer, model_config: dict, train_config: dict) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "lr_scale": self.lr_scale,
            "anneal_start_step": self.anneal_start_step,
            "anneal_end_step": self.anneal_end_step,
            "model": model.state_dict(),
            **optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "model_config": model_config,
            "train_config": train_config,
        }


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_metrics: dict[str, float]
    best_state: dict
    stopped_early: bool
    stop_reason: str = "epochs"      # one of STOP_REASONS

    @property
    def epochs_run(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


EpochCallback = Callable[[dict, Callable[[], dict]], None]


def fit(
    model: SequenceRecommender,
    train: TrainWindows,
    val_cases: NextTrackCases,
    config: TrainConfig,
    *,
    item_counts: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_epoch_end: EpochCallback | None = None,
    resume_state: dict | None = None,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Train `model` in place; return the history and the best epoch's weights.

    `on_epoch_end(record, snapshot)` runs on every rank after each epoch; `snapshot()` returns the
    full resumable state (weights, optimizer, schedule, early-stopping state, RNG).
    `resume_state` is such a snapshot: training continues after its epoch.
    """
    config.validate()
    device = torch.device(device)
    model.to(device)
    amp_dtype = autocast_dtype(config.precision, device)
    loss_fn = make_loss(
        config.loss,
        label_smoothing=config.label_smoothing,
        num_negatives=config.num_negatives,
        item_counts=item_counts,
        vocab_size=model.config.vocab_size,
        chunk_mb=config.ce_chunk_mb,
        compute_dtype=amp_dtype or torch.float32,
    )
    item_updates = resolve_item_updates(config.item_updates, config.loss, model.config.vocab_size - 1)
    # set before DDP wraps the model: it registers its gradient hooks for what the model is then
    model.item_emb.sparse = item_updates == "sparse"
    step_module: nn.Module = _LossStep(model, loss_fn)
    if _distributed(world_size):
        step_module = nn.parallel.DistributedDataParallel(step_module)
    # warm-up never outlasts the first epoch: on small data 100 steps could be several epochs
    windows = min(config.epoch_windows or len(train), len(train))
    steps_per_epoch = math.ceil(math.ceil(windows / world_size) / math.ceil(config.batch_size / world_size))
    warmup = max(1, min(config.warmup_steps, steps_per_epoch))
    state = TrainState()
    # the schedule reads `state` when called, so a resumed state's decays apply from its first step
    optimizer = ModelOptimizer(
        list(model.parameters()), config.lr, config.weight_decay,
        lambda step: min(1.0, (step + 1) / warmup) * state.lr_scale * state.anneal_factor(step),
        item_table=model.item_emb.weight if model.item_emb.sparse else None,
    )
    val_cases = validation_subset(val_cases, config.val_max_cases, config.seed)

    if resume_state is not None:
        _check_resumable(resume_state, model)
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state)
        torch.set_rng_state(resume_state["torch_rng"])
        state = TrainState(**{f.name: resume_state[f.name] for f in fields(TrainState) if f.name in resume_state})
        state.stopped_early = False
    else:
        # distinct dropout / sampling streams per rank; the weights are identical (DDP broadcasts)
        torch.manual_seed(config.seed + rank)

    snapshot = lambda: state.snapshot(model, optimizer, model.config.to_dict(), config.to_dict())  # noqa: E731
    stop_reason = "epochs"
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if config.patience and state.bad_epochs >= config.patience:
            stop_reason = "early_stopping"
            break
        epochs_left = _epochs_left_in_budget(state, config, world_size)
        if epochs_left == 0:
            stop_reason = "max_minutes"
            break
        if epochs_left is not None and config.anneal_to_budget:
            # re-planned every epoch from measured epoch times, so the lr reaches 0 as the budget ends
            state.anneal_start_step = state.anneal_start_step or state.global_step
            state.anneal_end_step = state.global_step + epochs_left * steps_per_epoch
            optimizer.apply_schedule()
        record = _train_epoch(
            step_module, model, train, optimizer, config, epoch, rank, world_size, device, state,
            amp_dtype,
        )
        t_val = time.perf_counter()
        record.update(validate(model, val_cases, config, rank, world_size))
        record["epoch_seconds"] += time.perf_counter() - t_val
        state.train_seconds += record["epoch_seconds"]
        record["elapsed_minutes"] = state.train_seconds / 60

        score = record[EARLY_STOP_METRIC]
        state.epoch = epoch
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = score, epoch, 0
            state.best_model = copy.deepcopy(model.state_dict())
        else:
            state.bad_epochs += 1
            # a plateau at this lr: smaller steps often find the next improvement
            state.lr_scale *= config.plateau_lr_factor
            optimizer.apply_schedule()
        state.stopped_early = bool(config.patience) and state.bad_epochs >= config.patience
        state.history.append(record)
        if rank == 0 and config.progress:
            tqdm.write(
                f"epoch {epoch}: train_loss {record['train_loss']:.4f}  "
                f"val_ndcg_at_10 {record['val_ndcg_at_10']:.4f}  val_recall_at_20 {record['val_recall_at_20']:.4f}  "
                f"{record['train_events_per_second']:.0f} events/s  {record['epoch_seconds']:.1f}s"
            )
        if on_epoch_end is not None:
            on_epoch_end(record, snapshot)
        if state.stopped_early:
            stop_reason = "early_stopping"
            break

    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    return FitResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_metrics=dict(best),
        best_state=state.best_model if state.best_model is not None else model.state_dict(),
        stopped_early=state.stopped_early,
        stop_reason=stop_reason,
    )


def _epochs_left_in_budget(state: TrainState, config: TrainConfig, world_size: int) -> int | None:
    """How many more epochs, each as long as the longest so far, end within `max_minutes`; None
    without a budget or before the first epoch has been timed.

    The longest, not the last: epochs vary by a few percent with the machine's load, and a budget
    is a promise to the user.

    Ranks take the slowest rank's figures, so they all stop (and anneal) alike (DDP needs it)."""
    if not config.max_minutes or not state.history:
        return None
    spent, longest = _all_reduce(
        [state.train_seconds, max(r["epoch_seconds"] for r in state.history)], world_size,
        op=dist.ReduceOp.MAX if _distributed(world_size) else None,
    )
    return max(0, math.floor((config.max_minutes * 60 - spent) / max(longest, 1e-9)))


def _train_epoch(
    step_module, model, train: TrainWindows, optimizer: ModelOptimizer, config: TrainConfig, epoch: int,
    rank: int, world_size: int, device, state: TrainState, amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    model.train()
    batches = epoch_batches(
        train.lengths, config.batch_size, epoch, config.seed, rank, world_size, sample=config.epoch_windows
    )
    bar = tqdm(
        batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
        disable=not (config.progress and rank == 0),
        # a log file (a Ray worker's, a CI job's) gets a line per refresh: refresh rarely there
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
    )
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    t0 = time.perf_counter()
    loss_sum, targets = 0.0, 0
    for idx in bar:
        input_ids, target_ids, hours, dows = train.batch(idx)
        input_ids, target_ids, hours, dows = (t.to(device) for t in (input_ids, target_ids, hours, dows))
        with autocast:
            loss = step_module(input_ids, target_ids, hours, dows)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, step {state.global_step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step(config.grad_clip)
        state.global_step += 1
        n = int((target_ids != 0).sum())
        loss_sum += loss.detach().item() * n
        targets += n
        bar.set_postfix(loss=f"{loss.detach().item():.3f}", refresh=False)
    train_seconds = time.perf_counter() - t0
    loss_sum, targets = _all_reduce([loss_sum, float(targets)], world_size)
    # events/s of the whole group: all ranks' targets over this rank's time (ranks step in lockstep)
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(targets, 1.0),
        "lr": optimizer.lr,
        "epoch_seconds": train_seconds,
        "train_seconds": train_seconds,
        "train_events_per_second": targets / max(train_seconds, 1e-9),
    }


def _check_resumable(resume_state: dict, model: SequenceRecommender) -> None:
    if resume_state.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"training state format {resume_state.get('format_version')} is not supported")
    saved = resume_state.get("model_config")
    if saved != model.config.to_dict():
        diff = {k: (saved.get(k), v) for k, v in model.config.to_dict().items() if saved.get(k) != v}
        raise ValueError(f"cannot resume: the model config differs from the saved one (saved, now): {diff}")
