"""The three data stages (`data`, `preprocess`, `splits`): compute, write atomically, log to MLflow.

Each function expects an active MLflow run (the entry point opens it with `stage_run`) and
returns the metrics it logged, so callers and tests can check them.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from playlistai.data import plots
from playlistai.data.generate import SIZES, SyntheticWorld, estimate_ceilings, make_world
from playlistai.data.ingest import (
    DEFAULT_MAX_ID_LENGTH,
    DEFAULT_TIME_MAX,
    DEFAULT_TIME_MIN,
    Limits,
    read_events,
)
from playlistai.data.layout import DataLayout
from playlistai.data.parquet_io import HEAD_ROWS, ROW_GROUP_ROWS, ParquetStream
from playlistai.data.ray_engine import parse_engine
from playlistai.data.sequences import SequenceDataset, encode_sessions
from playlistai.data.sessionize import session_lengths, sessionize, validate_events
from playlistai.data.splits import SplitResult, make_splits, unknown_share
from playlistai.files import atomic_dir, atomic_path, write_json, write_parquet
from playlistai.params import StageParams, param
from playlistai.tracking import file_hash, files_hash

COLUMNS = ("user_col", "track_col", "ts_col", "artist_col", "genre_col")
ENGINE_HELP = "pandas | ray: ray runs the stage on Ray Data (RAY_ADDRESS, else a local Ray), same outputs"


@dataclass
class SourceParams(StageParams):
    """What the `data` stage reads and where it writes it: the params that `data` and `main` share."""

    source: str = param("synthetic", "'synthetic' or the path of a log file")
    format: str = param("auto", "auto | csv | tsv | parquet | lastfm1k (CSV and TSV may be .gz)")
    size: str = param("default", f"synthetic size: {' | '.join(SIZES)} (xlarge: 1M tracks, ~54M plays; about "
                      "20 min of one core and 1.4 GB of memory)")
    seed: int = param(42, minimum=0)
    # not Settings-backed: "" is DATA_DIR for the synthetic data but a folder of its own for a file
    data_dir: str = param("", "defaults to DATA_DIR, or data/<file name> for a log file")
    user_col: str = param("user_id")
    track_col: str = param("track_id")
    ts_col: str = param("ts")
    artist_col: str = param("artist_id")
    genre_col: str = param("genre")
    time_unit: str = param("auto", "auto | s | ms | iso")

    def columns(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass
class DataParams(SourceParams):
    """The `data` entry point's params (MLproject)."""

    time_min: str = param(DEFAULT_TIME_MIN, "earliest plausible time: an ISO-8601 date or time (UTC unless it has "
                          "an offset), 'now' or 'now-Nd'")
    time_max: str = param(DEFAULT_TIME_MAX, "latest plausible time, as time_min ('now+1d': a day ahead)")
    max_id_length: int = param(DEFAULT_MAX_ID_LENGTH, "longest user, track, artist or genre id (characters)",
                               minimum=1)


@dataclass
class PreprocessParams(StageParams):
    """The `preprocess` entry point's params (MLproject)."""

    data_dir: str = param("data", "defaults to DATA_DIR", setting="DATA_DIR")
    session_gap_min: float = param(45.0, "defaults to SESSION_GAP_MIN", setting="SESSION_GAP_MIN")
    min_session_len: int = param(2, minimum=1)
    collapse_repeats: bool = param(False)
    timezone: str = param("UTC", "defaults to TIMEZONE (UTC)", setting="TIMEZONE")
    engine: str = param("pandas", ENGINE_HELP)


@dataclass
class SplitsParams(StageParams):
    """The `splits` entry point's params (MLproject)."""

    data_dir: str = param("data", "defaults to DATA_DIR", setting="DATA_DIR")
    strategy: str = param("temporal", "temporal | leave_one_out")
    val_frac: float = param(0.1)
    test_frac: float = param(0.1)
    vocab_min_freq: int = param(5, "defaults to VOCAB_MIN_FREQ", setting="VOCAB_MIN_FREQ", minimum=1)
    max_seq_len: int = param(50, "defaults to MAX_SEQ_LEN", setting="MAX_SEQ_LEN", minimum=2)
    vocab_scope: str = param("train", "train | train_val: the splits whose tracks get an index")
    engine: str = param("pandas", ENGINE_HELP)


def _log_dataset(frame: pd.DataFrame, path: Path, name: str, context: str) -> str:
    digest = file_hash(path)
    with warnings.catch_warnings():
        # mlflow warns that a local path could be two kinds of source, and about int columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame.head(HEAD_ROWS), source=str(path.resolve()), name=name, digest=digest[:32])
        mlflow.log_input(dataset, context=context)
    mlflow.set_tag(f"{name}_sha256", digest)
    return digest


def _log_figure(fig, name: str) -> None:
    mlflow.log_figure(fig, name)
    plots.close(fig)


class EventTally:
    """The statistics of a log (`stats`) that arrives in chunks of whole users: the users of the
    chunks add up, and tracks and artists are tallied in tables the size of the catalog, never of
    the log."""

    def __init__(self) -> None:
        self.users = 0
        self.events = 0
        self.track_plays: Counter[str] = Counter()
        self.artists: set[str] = set()

    def add(self, chunk: pd.DataFrame) -> EventTally:
        self.users += int(chunk["user_id"].nunique())
        self.events += len(chunk)
        self.track_plays.update(chunk["track_id"].value_counts().to_dict())
        self.artists.update(chunk["artist_id"].dropna().unique())
        return self

    def stats(self) -> dict[str, float]:
        return {
            "users": float(self.users),
            "tracks": float(len(self.track_plays)),
            "artists": float(len(self.artists)),
            "events": float(self.events),
        }

    def track_counts(self) -> np.ndarray:
        """Plays per track, one value a track (for the popularity figure)."""
        return np.fromiter(self.track_plays.values(), np.int64, len(self.track_plays))


def event_stats(events: pd.DataFrame) -> dict[str, float]:
    return EventTally().add(events).stats()


def write_synthetic_events(world: SyntheticWorld, path: Path,
                           row_group_rows: int = ROW_GROUP_ROWS) -> tuple[EventTally, pd.DataFrame]:
    """Draw the world's log in chunks of whole users and write each chunk as it is done: memory
    holds a chunk and a row group, not the log (xlarge has 54M plays). `ParquetStream` writes the
    file `to_parquet` writes of the whole log, byte for byte, so one Parquet file with the same
    row groups is what both engines of `preprocess` read. Returns the log's tally and first rows."""
    # the generator's columns all have pandas dtypes, so the stream never asks about untyped ones
    stream = ParquetStream(path, has_values=lambda columns: {}, row_group_rows=row_group_rows)
    tally = EventTally()
    # xlarge takes a quarter of an hour: say how far it is (a line every 15 s in a log file)
    bar = tqdm(total=world.config.n_users, desc="data: drawing plays", unit="user", unit_scale=True,
               leave=False, mininterval=0.5 if sys.stderr.isatty() else 15.0, file=sys.stderr)
    with bar:
        for chunk in world.generate_chunks(chunk_rows=row_group_rows // 4):
            validate_events(chunk)
            tally.add(chunk)
            stream.write(chunk)
            bar.update(chunk["user_id"].nunique())
    stream.close(empty_like=chunk.head(0))
    return tally, stream.head


def run_data(
    data_dir: str | Path,
    source: str = "synthetic",
    size: str = "default",
    seed: int = 42,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    time_unit: str = "auto",
    vocab_min_freq: int = 5,
    time_min: str = DEFAULT_TIME_MIN,
    time_max: str = DEFAULT_TIME_MAX,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
) -> dict[str, float]:
    """`source`: "synthetic" or a log file (ingest.py), whose times must lie in [time_min, time_max]
    and ids be at most `max_id_length` characters; nothing is written unless the whole file reads."""
    layout = DataLayout.of(data_dir)
    t0 = time.perf_counter()
    world = None
    limits = None
    if source == "synthetic":
        world = make_world(size, seed)
    else:
        limits = Limits.parse(time_min, time_max, max_id_length)
        events = read_events(source, fmt=fmt, time_unit=time_unit, limits=limits, **(columns or {}))
        validate_events(events)

    # write the raw directory as one unit: events and (for synthetic data) the world that made them
    with atomic_dir(layout.raw_dir) as tmp:
        events_path = tmp / layout.events.name
        if world is None:
            read_seconds = time.perf_counter() - t0
            write_parquet(events, events_path)
            tally, head = EventTally().add(events), events.head(HEAD_ROWS)
        else:
            tally, head = write_synthetic_events(world, events_path)
            read_seconds = time.perf_counter() - t0
        metrics = {**tally.stats(), "stage_seconds_read": read_seconds}
        if world is not None:
            # from the file just written, in batches: the synthetic log is never whole in memory
            metrics.update(estimate_ceilings(world, events_path, min_freq=vocab_min_freq, seed=seed))
            metrics["world_tracks"] = float(world.n_tracks)
            world.save(tmp / layout.world_dir.name)
        write_json({"source": str(source), "size": size, "seed": seed, "format": fmt,
                    **(limits.as_dict() if limits else {}), **metrics}, tmp / "data_meta.json")
    metrics["stage_seconds"] = time.perf_counter() - t0

    mlflow.log_metrics(metrics)
    _log_dataset(head, layout.events, "events", "raw")
    _log_figure(plots.dataset_figure(tally.track_counts(), None, f"events: {source} {size if world else ''}"),
                "plots/popularity.png")
    mlflow.log_artifact(str(layout.raw_dir / "data_meta.json"))
    return metrics


def run_preprocess(
    data_dir: str | Path,
    session_gap_min: float = 45.0,
    min_session_len: int = 2,
    collapse_repeats: bool = False,
    timezone: str = "UTC",
    engine: str = "pandas",
) -> dict[str, float]:
    layout = DataLayout.of(data_dir)
    t0 = time.perf_counter()
    if parse_engine(engine) == "ray":
        from playlistai.data import ray_engine

        with atomic_path(layout.sessions) as tmp:
            out = ray_engine.preprocess(layout.require(layout.events, "data"), tmp, session_gap_min,
                                        min_session_len, collapse_repeats, timezone)
        head, stats, lengths = out.head, out.stats, out.lengths
        summary = {**out.event_stats, **stats.as_metrics(), "session_len_mean": lengths.mean(),
                   "session_len_median": lengths.median(), "session_len_p95": lengths.percentile(95)}
        counts, length_values = out.track_counts, lengths.sample()
    else:
        events = pd.read_parquet(layout.require(layout.events, "data"))
        sessions, stats = sessionize(events, session_gap_min, min_session_len, collapse_repeats, timezone)
        if sessions.empty:
            raise ValueError(f"no session has {min_session_len}+ plays at a {session_gap_min}-minute gap")
        write_parquet(sessions, layout.sessions)
        length_values = session_lengths(sessions)
        summary = {
            **event_stats(sessions),
            **stats.as_metrics(),
            "session_len_mean": float(length_values.mean()),
            "session_len_median": float(np.median(length_values)),
            "session_len_p95": float(np.percentile(length_values, 95)),
        }
        head, counts = sessions.head(1000), sessions["track_id"].value_counts().to_numpy()
    metrics = {**summary, "stage_seconds": time.perf_counter() - t0}
    mlflow.log_metrics(metrics)
    _log_dataset(head, layout.sessions, "sessions", "preprocessed")
    _log_figure(plots.dataset_figure(counts, length_values, "sessions"), "plots/sessions.png")
    return metrics


def run_splits(
    data_dir: str | Path,
    strategy: str = "temporal",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    vocab_min_freq: int = 5,
    max_seq_len: int = 50,
    vocab_scope: str = "train",
    engine: str = "pandas",
) -> dict[str, float]:
    layout = DataLayout.of(data_dir)
    t0 = time.perf_counter()
    on_ray = parse_engine(engine) == "ray"
    sessions_path = layout.require(layout.sessions, "preprocess")
    if on_ray:
        from playlistai.data import ray_engine

        with atomic_dir(layout.splits_dir) as tmp:
            out = ray_engine.splits(sessions_path, tmp, strategy, val_frac, test_frac, vocab_min_freq, vocab_scope,
                                    max_seq_len)
            meta, vocab, metrics = out.meta, out.vocab, out.metrics
            write_parquet(vocab.to_frame(), tmp / layout.vocab.name)
            write_json({**meta, **metrics, "max_seq_len": max_seq_len}, tmp / layout.splits_meta.name)
        heads, train_lengths = out.heads, out.train_lengths.sample()
    else:
        sessions = pd.read_parquet(sessions_path)
        result = make_splits(sessions, strategy, val_frac, test_frac, vocab_min_freq, vocab_scope)
        meta, vocab = result.meta, result.vocab
        metrics = split_metrics(result, max_seq_len)
        with atomic_dir(layout.splits_dir) as tmp:
            for name, frame in result.frames.items():
                write_parquet(frame, tmp / layout.split(name).name)
            write_parquet(vocab.to_frame(), tmp / layout.vocab.name)
            write_json({**meta, **metrics, "max_seq_len": max_seq_len}, tmp / layout.splits_meta.name)
        heads, train_lengths = result.frames, session_lengths(result.frames["train"])
    metrics["stage_seconds"] = time.perf_counter() - t0

    mlflow.log_metrics(metrics)
    split_files = [layout.split(n) for n in ("train", "val", "test")] + [layout.vocab]
    mlflow.set_tag("data_hash", files_hash(split_files))
    for name, frame in heads.items():
        _log_dataset(frame, layout.split(name), f"{name}_split", name)
    mlflow.log_artifact(str(layout.vocab), artifact_path="splits")
    mlflow.log_artifact(str(layout.splits_meta), artifact_path="splits")
    _log_figure(plots.dataset_figure(vocab.counts, train_lengths, "training split"), "plots/train_split.png")
    return metrics


def split_metrics(result: SplitResult, max_seq_len: int) -> dict[str, float]:
    """What the splits stage logs of its splits and vocabulary."""
    vocab = result.vocab
    metrics: dict[str, float] = {"vocab_size": float(len(vocab))}
    for name, frame in result.frames.items():
        metrics[f"{name}_sessions"] = float(frame["session_id"].nunique())
        metrics[f"{name}_events"] = float(len(frame))
        metrics[f"{name}_targets"] = float(frame["is_target"].sum())
        if name != "train":
            metrics[f"{name}_unknown_track_share"] = unknown_share(frame, vocab)
            metrics[f"{name}_unknown_target_share"] = unknown_share(frame, vocab, targets_only=True)
    train_windows = SequenceDataset(encode_sessions(result.frames["train"], vocab), max_seq_len)
    metrics["train_windows"] = float(len(train_windows))
    metrics["train_pairs"] = float(train_windows.num_targets)
    metrics["events_truncated_at_cutoffs"] = float(result.meta.get("events_truncated_at_cutoffs", 0))
    return metrics


def ensure_synthetic_dataset(data_dir: str | Path, size: str, seed: int = 42) -> bool:
    """data -> preprocess -> splits on synthetic data unless `data_dir` already has splits.

    For benchmarks and fixtures; each stage logs to its own run in the current MLflow store. The
    `large` and `xlarge` presets exist to measure scale, so every track played in their training
    period gets an index (a catalog of over 200k, or 1M, tracks) instead of only those played
    VOCAB_MIN_FREQ times.
    Returns True when it built the data.
    """
    from playlistai.tracking import stage_run

    if DataLayout.of(data_dir).vocab.exists():
        return False
    vocab_min_freq = 1 if size in ("large", "xlarge") else 5
    with stage_run("data", {"size": size, "seed": seed}):
        run_data(data_dir, size=size, seed=seed, vocab_min_freq=vocab_min_freq)
    with stage_run("preprocess", {}):
        run_preprocess(data_dir)
    with stage_run("splits", {"vocab_min_freq": vocab_min_freq}):
        run_splits(data_dir, vocab_min_freq=vocab_min_freq)
    return True
