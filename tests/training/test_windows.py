"""Training windows: the rows, the window file the workers memory-map, and what a worker keeps mapped."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from playlistai.data.layout import DataLayout
from playlistai.data.sequences import SequenceDataset, encode_sessions, load_split, load_vocab
from playlistai.data.vocab import Vocabulary
from playlistai.models import build_model
from playlistai.models.base import trim_left_padding
from playlistai.training.loop import epoch_batches, fit, seed_everything
from playlistai.training.windows import TrainWindows, window_file, write_windows
from playlistai.training.worker import load_training_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_train_sessions(tiny_data_dir):
    return encode_sessions(load_split(tiny_data_dir, "train"), load_vocab(tiny_data_dir))


@pytest.mark.parametrize("max_seq_len", [3, 20])
def test_train_windows_hold_exactly_the_datasets_windows_in_narrow_types(tiny_train_sessions, max_seq_len):
    sessions = tiny_train_sessions
    windows = TrainWindows.from_sessions(sessions, max_seq_len)
    dataset = SequenceDataset(sessions, max_seq_len)
    assert len(windows) == len(dataset)
    if max_seq_len == 3:
        assert len(dataset) > len(sessions)                 # long sessions cut into several windows
    assert (windows.rows["input_ids"].dtype, windows.rows["hours"].dtype) == (np.int32, np.int8)
    expected = {key: torch.stack([dataset[i][key] for i in range(len(dataset))])
                for key in ("input_ids", "target_ids", "hours", "dows")}
    got = windows.batch(np.arange(len(dataset)))
    want = trim_left_padding(*expected.values(), ids=expected["input_ids"])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.int64 and torch.equal(g, w)
    assert windows.lengths.tolist() == (expected["input_ids"] != 0).sum(dim=1).tolist()
    assert windows.num_targets == dataset.num_targets


@pytest.mark.parametrize("batch_rows", [7, 1 << 20])
def test_the_window_file_holds_the_same_rows_in_the_same_order(tiny_data_dir, tiny_train_sessions, tmp_path,
                                                               batch_rows):
    # 7 plays at a time: nearly every session spans two of the split's batches
    layout = DataLayout.of(tiny_data_dir)
    meta = write_windows(layout.split("train"), load_vocab(tiny_data_dir), 5, tmp_path, batch_rows=batch_rows)
    in_memory = TrainWindows.from_sessions(tiny_train_sessions, 5)
    mapped = TrainWindows.open(tmp_path)
    assert (meta["windows"], meta["targets"]) == (len(in_memory), in_memory.num_targets)
    every = np.arange(len(in_memory))
    assert np.array_equal(mapped.take(every), in_memory.rows) and np.array_equal(mapped.lengths, in_memory.lengths)
    rows = np.random.default_rng(0).permutation(len(in_memory))[:100]
    for a, b in zip(mapped.batch(rows), in_memory.batch(rows), strict=True):
        assert torch.equal(a, b)


def test_a_split_out_of_session_order_is_refused(tiny_data_dir, tmp_path):
    split = load_split(tiny_data_dir, "train")
    shuffled = tmp_path / "train.parquet"
    split.sample(frac=1.0, random_state=0).to_parquet(shuffled, index=False)
    out = tmp_path / "windows"
    out.mkdir()
    with pytest.raises(ValueError, match="not sorted by session_id"):
        write_windows(shuffled, load_vocab(tiny_data_dir), 5, out, batch_rows=50)


def test_training_from_the_window_file_matches_training_in_memory(tiny_data_dir, tiny_train_sessions,
                                                                  small_model_config, small_train_config):
    data = load_training_data(tiny_data_dir, 20)
    in_memory = TrainWindows.from_sessions(tiny_train_sessions, 20)
    config = small_train_config(epochs=2)
    histories = []
    for windows in (data.train, in_memory):
        seed_everything(config.seed)
        model = build_model(small_model_config(data.vocab.size))
        result = fit(model, windows, data.val, config, item_counts=data.vocab.popularity())
        histories.append([(r["train_loss"], r["val_ndcg_at_10"]) for r in result.history])
    assert histories[0] == histories[1]


def test_reading_a_window_file_does_not_grow_the_worker(tmp_path):
    """Every row of a 40 MB window file read in batches: the process's memory does not grow by the
    file (a memory map would: its pages count as the process's own)."""
    import psutil

    rng = np.random.default_rng(0)
    n, width = 80_000, 50
    sessions = pd.DataFrame({
        "session_id": np.repeat(np.arange(n), 2), "pos": np.tile([0, 1], n),
        "track_id": [f"t{i}" for i in rng.integers(0, 1000, size=2 * n)],
        "hour": 0, "dow": 0, "artist_id": "a", "genre": "g",
    })
    sessions.to_parquet(tmp_path / "train.parquet", index=False)
    # windows of 2 tracks in 50 columns: 500 bytes a row, 40 MB in all
    write_windows(tmp_path / "train.parquet", Vocabulary.build(sessions, min_freq=1), width, tmp_path)
    windows = TrainWindows.open(tmp_path)
    assert windows.max_seq_len * 10 * len(windows) >= 40_000_000
    batches = epoch_batches(windows.lengths, 64, epoch=1, seed=0)
    process = psutil.Process()
    before = process.memory_info().rss
    most = 0
    for rows in batches:
        windows.batch(rows)
        most = max(most, process.memory_info().rss - before)
    assert sum(len(b) for b in batches) == n
    assert most < 10_000_000, most


def test_the_window_file_is_reused_while_the_data_stays_and_rebuilt_when_it_changes(tiny_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir, ignore=shutil.ignore_patterns("windows"))
    first = window_file(data_dir, 20)
    assert window_file(data_dir, 20) == first
    stamp = (first / "windows.bin").stat().st_mtime_ns
    assert (window_file(data_dir, 20) / "windows.bin").stat().st_mtime_ns == stamp
    other_length = window_file(data_dir, 10)
    assert other_length != first and first.exists()          # one folder per window length
    # new splits: a new version, and the old versions' folders go
    train = DataLayout.of(data_dir).split("train")
    frame = pd.read_parquet(train)
    frame[frame["session_id"] != frame["session_id"].iloc[0]].to_parquet(train, index=False)
    rebuilt = window_file(data_dir, 20)
    assert rebuilt != first and not first.exists() and not other_length.exists()
    assert [p.name for p in (data_dir / "windows").iterdir()] == [rebuilt.name]

