"""Build a model package (playlistai/inference/package.py) from a training checkpoint and its data.

Beside the checkpoint it computes, from the data directory the model was trained on:
- the FAISS index over the item embeddings, its search breadth tuned on *validation* queries
  (never test: the gate's test cases stay untouched by any choice made here);
- the per-hour popularity table over the training events (cold start);
- the drift reference: feature statistics and a row sample over the training next-track cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from playlistai.data.layout import DataLayout
from playlistai.data.sequences import SPLIT_BATCH_ROWS, next_track_cases, split_in_batches, tail_sessions
from playlistai.inference import ann as ann_lib
from playlistai.inference.features import (
    DEFAULT_SAMPLE_SIZE,
    reference_statistics,
    save_reference,
    training_case_features,
)
from playlistai.inference.package import (
    ANN_INDEX_FILE,
    ANN_PARAMS_FILE,
    DRIFT_SAMPLE_FILE,
    DRIFT_STATS_FILE,
    POPULARITY_FILE,
    write_manifest,
)
from playlistai.inference.popularity import DEFAULT_SMOOTHING, ContextPopularity
from playlistai.models.checkpoint import CONFIG_FILE, MODEL_FILE, NEIGHBOURS_FILE, VOCAB_FILE, load_checkpoint

TUNING_QUERIES = 1000
TUNING_SESSIONS = 20_000
TRAIN_COLUMNS = ["session_id", "pos", "track_id", "hour", "dow", "is_target"]
TRAIN_BATCH_ROWS = SPLIT_BATCH_ROWS


def tuning_queries(model, vocab, data_dir: Path, max_queries: int = TUNING_QUERIES, seed: int = 0) -> np.ndarray:
    """Query vectors of up to `max_queries` cases of the most recent TUNING_SESSIONS validation
    sessions (training sessions if validation has none): reading every validation case of a log of
    millions of sessions would cost the packaging minutes and gigabytes for a thousand queries."""
    for split in ("val", "train"):
        cases = next_track_cases(tail_sessions(data_dir, split, vocab, TUNING_SESSIONS), model.config.max_seq_len)
        if len(cases):
            break
    rows = np.random.default_rng(seed).permutation(len(cases))[:max_queries]
    with torch.inference_mode():
        q = model.user_vectors(
            torch.from_numpy(cases.histories[rows]), torch.from_numpy(cases.hours[rows]), torch.from_numpy(cases.dows[rows])
        )
    return q.float().numpy()


def build_package(
    checkpoint_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    ann_index: str = "auto",
    target_overlap: float = ann_lib.DEFAULT_TARGET_OVERLAP,
    popularity_smoothing: float = DEFAULT_SMOOTHING,
    drift_sample_size: int = DEFAULT_SAMPLE_SIZE,
    source: dict | None = None,
) -> dict:
    """Write the package into `out_dir`; return a summary (ANN params, sizes) for logging."""
    checkpoint_dir, data_dir, out_dir = Path(checkpoint_dir), Path(data_dir), Path(out_dir)
    model, vocab, config = load_checkpoint(checkpoint_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE, NEIGHBOURS_FILE):
        if name != NEIGHBOURS_FILE or (checkpoint_dir / name).is_file():
            shutil.copyfile(checkpoint_dir / name, out_dir / name)

    with torch.inference_mode():
        items = model.item_embeddings()[1:].float().numpy()
    index, params = ann_lib.build_index(items, ann_index)
    params = ann_lib.tune(index, params, items, tuning_queries(model, vocab, data_dir), target_overlap)
    ann_lib.save(index, params, out_dir / ANN_INDEX_FILE, out_dir / ANN_PARAMS_FILE)

    # the training split streamed in frames of whole sessions, read once for both: a log of tens of
    # millions of plays held in pandas at once took more than 20 GB
    feature_frames = []
    layout = DataLayout.of(data_dir)
    train_path = layout.require(layout.split("train"), "splits")

    def frames():
        for frame in split_in_batches(train_path, columns=TRAIN_COLUMNS, batch_rows=TRAIN_BATCH_ROWS):
            feature_frames.append(training_case_features(frame, vocab))
            yield frame

    ContextPopularity.from_events(frames(), vocab, popularity_smoothing).save(out_dir / POPULARITY_FILE)
    features = pd.concat(feature_frames, ignore_index=True) if feature_frames else pd.DataFrame()
    if len(features) == 0:
        raise ValueError(f"the training split of {data_dir} has no next-track case: no drift reference")
    stats, sample = reference_statistics(features, drift_sample_size)
    save_reference(stats, sample, out_dir / DRIFT_STATS_FILE, out_dir / DRIFT_SAMPLE_FILE)

    manifest = write_manifest(
        out_dir,
        {"model_family": config["model_config"]["family"], "catalog_size": len(vocab), "source": source or {}},
    )
    return {
        "model_family": config["model_config"]["family"],
        "catalog_size": len(vocab),
        "ann": params,
        "drift_cases": stats["n_cases"],
        "package_bytes": sum(f["bytes"] for f in manifest["files"].values()),
    }
