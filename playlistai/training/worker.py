"""One training worker: load the splits, build the model, run the loop, persist every epoch.

The same function runs in-process (`trainer=local`) and on every Ray Train worker; it learns which
from `ray.train.get_context()`. Its argument is a plain dict (it crosses process boundaries):

    model_config, train_config   ModelConfig / TrainConfig as dicts
    data_dir                     absolute path of the data directory (each worker reads it itself)
    windows_dir                  the train split's window file (training/windows.py), read a batch at a time
    run_id, tracking_uri         the MLflow run rank 0 logs per-epoch metrics into (absolute URI:
                                 Ray workers run in another working directory)
    state_dir                    local trainer: where each epoch's state directory goes
    resume_from                  a state directory (holding train_state.pt) to continue from, or None
    threads                      torch threads for this worker
    extra                        what the best checkpoint's config.json carries besides the model config

An epoch's state directory (a Ray checkpoint, or state_dir/epoch_NNN locally):

    train_state.pt   weights, optimizer, schedule, early-stopping state, history, RNG: resumable;
                     tensors and plain values only, read with torch.load(weights_only=True)
    meta.json        {"epoch", "best_epoch", "best_metric"}: readable without loading the weights
    best/            the best epoch so far as a product checkpoint (models/checkpoint.py)
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from playlistai.data.sequences import NextTrackCases, load_vocab, split_cases
from playlistai.data.vocab import Vocabulary
from playlistai.files import atomic_dir
from playlistai.models import ModelConfig, build_model
from playlistai.models.checkpoint import save_checkpoint
from playlistai.training.loop import TrainConfig, fit, seed_everything
from playlistai.training.losses import resolve_loss
from playlistai.training.optim import resolve_item_updates
from playlistai.training.precision import autocast_dtype
from playlistai.training.windows import TrainWindows, window_file

STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
BEST_DIR = "best"
KEEP_LOCAL_STATES = 2


@dataclass
class TrainingData:
    vocab: Vocabulary
    train: TrainWindows
    val: NextTrackCases


def load_training_data(data_dir: str | Path, max_seq_len: int, windows_dir: str | Path | None = None,
                       val_max_cases: int = 0, seed: int = 0) -> TrainingData:
    """The vocabulary, the training windows (read from `windows_dir`, the window file the training
    stage wrote; found or written here when not given) and the validation cases: with
    `val_max_cases`, only the fixed subset that validation takes (`validation_subset`)."""
    vocab = load_vocab(data_dir)
    train = TrainWindows.open(windows_dir or window_file(data_dir, max_seq_len))
    val = split_cases(data_dir, "val", vocab, max_seq_len, val_max_cases, seed)
    if len(val) == 0:
        raise ValueError(f"{data_dir}: the validation split has no next-track case; early stopping needs one")
    return TrainingData(vocab, train, val)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- state directories -----------------------------------------------------------------------------


def write_state_dir(directory: Path, snapshot: dict, vocab: Vocabulary, extra: dict) -> None:
    """Fill `directory` with one epoch's resumable state and the best model so far."""
    directory.mkdir(parents=True, exist_ok=True)
    snapshot = plain_state(snapshot)
    torch.save(snapshot, directory / STATE_FILE)
    best_metrics = next((r for r in snapshot["history"] if r["epoch"] == snapshot["best_epoch"]), {})
    model = build_model(ModelConfig.from_dict(snapshot["model_config"]))
    save_checkpoint(
        directory / BEST_DIR,
        model,
        vocab,
        extra={
            **extra,
            "train_config": snapshot["train_config"],
            "best_epoch": snapshot["best_epoch"],
            "best_val_metrics": {k: v for k, v in best_metrics.items() if k.startswith("val_")},
            "epochs_trained": snapshot["epoch"],
        },
        state_dict=snapshot["best_model"],
    )
    (directory / META_FILE).write_text(
        json.dumps({"epoch": snapshot["epoch"], "best_epoch": snapshot["best_epoch"], "best_metric": snapshot["best_metric"]})
    )


def find_state_dirs(root: str | Path) -> list[Path]:
    """State directories at or below `root` (a run's storage directory), oldest epoch first."""
    root = Path(root)
    if (root / STATE_FILE).is_file() and (root / META_FILE).is_file():
        return [root]
    found = [p.parent for p in root.glob("**/" + META_FILE) if (p.parent / STATE_FILE).is_file()]
    return sorted(found, key=lambda d: json.loads((d / META_FILE).read_text())["epoch"])


def plain_state(value: Any) -> Any:
    """A snapshot as tensors and plain Python values only (numpy scalars become numbers), so that
    `torch.load(weights_only=True)` reads it back."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        items = {k: plain_state(v) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value  # unchanged: a state_dict keeps its type and metadata
        out = value.copy()
        out.update(items)
        return out
    if type(value) in (list, tuple):
        items = [plain_state(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
    return value


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def load_train_state(directory: str | Path) -> dict[str, Any]:
    """Read `train_state.pt` with `weights_only=True`: tensors and plain values only. Its path may
    come from a run tag (`resume_from=<run id>`), so a crafted file must not run code when read:
    one that names any other Python object is refused, never unpickled."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a training state directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _GLOBAL_RE.search(str(exc))
        if named:
            raise ValueError(f"{path} refused: it asks to load the Python object {named.group(1)}, which a training "
                             f"state never holds (a crafted or foreign file?); it was not unpickled") from None
        raise ValueError(f"{path} is corrupt: {_last_line(exc)}") from None
    except Exception as exc:
        raise ValueError(f"{path} is corrupt: {_last_line(exc)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training state (it holds a {type(state).__name__}, not a dict)")
    return state


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -- per-epoch side effects ------------------------------------------------------------------------


class MlflowEpochLogger:
    """Logs one epoch's record into an existing run through the client API: it neither starts nor
    ends runs, so a Ray worker cannot create a second run or close the driver's."""

    def __init__(self, run_id: str, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)

    def __call__(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in record.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)


def _ray_context():
    """(rank, world_size) inside a Ray Train worker, None outside."""
    try:
        import ray.train

        ctx = ray.train.get_context()
        rank_and_size = ctx.get_world_rank(), ctx.get_world_size()
    except Exception:  # not in a Ray Train worker (no session, or Ray not importable)
        return None
    quiet_ray_train_reports()
    return rank_and_size


def quiet_ray_train_reports() -> None:
    """Ray Train logs every `ray.train.report` of every rank ("Reporting training result N:
    TrainingReport(checkpoint=..., metrics={...every metric...})") at INFO, under a logger named
    after its file instead of `ray.train.*`, so RunConfig's log level (ray_trainer.py) misses it and
    each epoch printed one such dump per worker. The epoch lines say the same, readably."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its own logging applies
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


# oneDNN (bf16 matmuls on CPU) caches a compiled kernel per input shape, up to 1,024 of them, and
# training shapes vary every step (window lengths, target counts): at the default the cache alone
# grew a DIGINETICA worker by ~850 MB (BENCHMARKS.md, "Memory of bf16 training"). 64 entries hold
# every shape of a step and cost no measurable speed. Read once, when the first kernel is built.
ONEDNN_CACHE_CAPACITY = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


def bound_kernel_caches() -> None:
    """Cap oneDNN's per-shape kernel caches, unless the environment already sets them."""
    for name, value in ONEDNN_CACHE_CAPACITY.items():
        os.environ.setdefault(name, value)


def train_worker(cfg: dict) -> dict:
    bound_kernel_caches()
    ray_ctx = _ray_context()
    rank, world_size = ray_ctx if ray_ctx is not None else (0, 1)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    model_config = ModelConfig.from_dict(cfg["model_config"])
    train_config = TrainConfig.from_dict(cfg["train_config"])
    extra = dict(cfg.get("extra") or {})

    data = load_training_data(cfg["data_dir"], model_config.max_seq_len, cfg.get("windows_dir"),
                              train_config.val_max_cases, train_config.seed)
    if data.vocab.size != model_config.vocab_size:
        raise ValueError(
            f"the vocabulary in {cfg['data_dir']} has {data.vocab.size} rows, the model config {model_config.vocab_size}"
        )
    seed_everything(train_config.seed)
    model = build_model(model_config)

    resume_state = None
    if cfg.get("resume_from"):
        resume_state = load_train_state(cfg["resume_from"])
    elif ray_ctx is not None:
        import ray.train

        restored = ray.train.get_checkpoint()  # Ray restarted this run after a worker failure
        if restored is not None:
            with restored.as_directory() as d:
                resume_state = load_train_state(d)

    logger = None
    if rank == 0 and cfg.get("run_id") and cfg.get("tracking_uri"):
        logger = MlflowEpochLogger(cfg["run_id"], cfg["tracking_uri"])

    def on_epoch_end(record: dict, snapshot) -> None:
        # this process's peak so far, epoch by epoch: memory that grows with the epochs shows here
        record["worker_peak_rss_mb"] = peak_rss_mb()
        if logger is not None:
            logger(record)
        epoch_name = f"epoch_{record['epoch']:03d}"
        if ray_ctx is not None:
            import ray.train

            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    write_state_dir(Path(tmp), snapshot(), data.vocab, extra)
                    ray.train.report(
                        record, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=epoch_name
                    )
            else:
                ray.train.report(record)  # a barrier: every rank reports every epoch
        elif cfg.get("state_dir"):
            state_dir = Path(cfg["state_dir"])
            with atomic_dir(state_dir / epoch_name) as tmp:
                write_state_dir(tmp, snapshot(), data.vocab, extra)
            for old in find_state_dirs(state_dir)[:-KEEP_LOCAL_STATES]:
                shutil.rmtree(old, ignore_errors=True)

    device = torch.device("cpu")
    if ray_ctx is not None and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    result = fit(
        model,
        data.train,
        data.val,
        train_config,
        item_counts=data.vocab.popularity().astype(np.float64),
        rank=rank,
        world_size=world_size,
        on_epoch_end=on_epoch_end,
        resume_state=resume_state,
        device=device,
    )
    return {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "loss": resolve_loss(train_config.loss, model_config.vocab_size - 1),
        "item_updates": resolve_item_updates(train_config.item_updates, train_config.loss, model_config.vocab_size - 1),
        "precision": "bf16" if autocast_dtype(train_config.precision, device) else "fp32",
        "device": device.type,
        "epochs_run": result.epochs_run,
        "best_epoch_minutes": result.best_metrics.get("elapsed_minutes", 0.0),
        "train_windows": len(data.train),
        "train_targets": data.train.num_targets,
        "val_cases": len(data.val),
        "peak_rss_mb": peak_rss_mb(),
        "world_size": world_size,
    }
