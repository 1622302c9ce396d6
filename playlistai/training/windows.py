"""Training windows: every (input, target, context) window of the train split as one fixed-width row.

A session of n known tracks gives n - 1 (input, target) pairs, cut into windows of `max_seq_len`
(`SequenceDataset`); a row holds one window, left-padded, in the narrowest types that fit (track
ids int32, hours and weekdays int8: 10 bytes per step), widened to int64 one batch at a time.

Workers train from a window file: the training stage writes it once per data version and window
length (`window_file`), reading the train split in batches of whole sessions, so neither the stage
nor a worker ever holds the split or the windows whole. Each worker reads the rows of one batch at
a time from the file (`TrainWindows.open`), so its memory stays flat however many windows there
are; the file's pages stay in the page cache, shared by the workers of a machine. The windows of
an epoch are its lengths (4 bytes a window) and a shuffle of their indices, nothing more.
`TrainWindows.from_sessions` builds the same rows in memory, for small experiments and tests: the
same rows in the same order train the same model.

    data_dir/windows/<data hash>-L<max_seq_len>/
        windows.bin     the rows, `window_dtype(max_seq_len)`, back to back
        lengths.npy     real (non-PAD) steps per row, for length bucketing
        windows.json    {"format_version", "max_seq_len", "windows", "targets"}
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from playlistai.data.layout import DataLayout
from playlistai.data.sequences import (
    SPLIT_BATCH_ROWS,
    EncodedSessions,
    SequenceDataset,
    encode_sessions,
    load_vocab,
    split_in_batches,
)
from playlistai.data.vocab import Vocabulary
from playlistai.files import atomic_dir
from playlistai.models.base import trim_left_padding
from playlistai.tracking import files_hash

WINDOW_FORMAT_VERSION = 1
_COLUMNS = ["session_id", "pos", "track_id", "hour", "dow"]
_ROWS, _LENGTHS, _META = "windows.bin", "lengths.npy", "windows.json"


def window_dtype(max_seq_len: int) -> np.dtype:
    return np.dtype([
        ("input_ids", "<i4", (max_seq_len,)),
        ("target_ids", "<i4", (max_seq_len,)),
        ("hours", "i1", (max_seq_len,)),
        ("dows", "i1", (max_seq_len,)),
    ])


def window_rows(sessions: EncodedSessions, max_seq_len: int) -> np.ndarray:
    """`SequenceDataset`'s windows of these sessions, in its order, as `window_dtype` rows."""
    ds = SequenceDataset(sessions, max_seq_len)
    rows = np.zeros(len(ds), window_dtype(max_seq_len))
    input_ids, target_ids, hours, dows = (rows[name] for name in ("input_ids", "target_ids", "hours", "dows"))
    for row, (s, start, end) in enumerate(ds.windows):
        first = max_seq_len - (end - 1 - start)      # left padding: the newest step is the last column
        items = sessions.items[s]
        input_ids[row, first:] = items[start : end - 1]
        target_ids[row, first:] = items[start + 1 : end]
        hours[row, first:] = sessions.hours[s][start + 1 : end]
        dows[row, first:] = sessions.dows[s][start + 1 : end]
    return rows


def _lengths(rows: np.ndarray) -> np.ndarray:
    return (rows["input_ids"] != 0).sum(axis=1).astype(np.int32)


@dataclass
class TrainWindows:
    """The windows a worker trains on: `rows` in memory, or read from a window file batch by batch."""

    lengths: np.ndarray                  # [N] real steps per window, for length bucketing
    rows: np.ndarray | None = None       # [N] window_dtype, when in memory
    path: Path | None = None             # the window file's rows, when read from disk
    max_seq_len: int = 0
    _fd: int | None = field(default=None, repr=False)

    @classmethod
    def from_sessions(cls, sessions: EncodedSessions, max_seq_len: int) -> TrainWindows:
        rows = window_rows(sessions, max_seq_len)
        if not len(rows):
            raise ValueError(_NO_WINDOWS)
        return cls(_lengths(rows), rows=rows, max_seq_len=max_seq_len)

    @classmethod
    def open(cls, directory: str | Path) -> TrainWindows:
        directory = Path(directory)
        meta = json.loads((directory / _META).read_text())
        if meta.get("format_version") != WINDOW_FORMAT_VERSION:
            raise ValueError(f"{directory}: window file format {meta.get('format_version')} is not "
                             f"{WINDOW_FORMAT_VERSION}; delete the folder and train again to rebuild it")
        lengths = np.load(directory / _LENGTHS)
        if len(lengths) != meta["windows"]:
            raise ValueError(f"{directory}: {len(lengths)} lengths for {meta['windows']} windows")
        windows = cls(lengths, path=directory / _ROWS, max_seq_len=meta["max_seq_len"])
        # opened once: the rows stay readable even if another run replaces the folder meanwhile
        windows._fd = os.open(windows.path, os.O_RDONLY)
        weakref.finalize(windows, os.close, windows._fd)
        return windows

    def take(self, rows: np.ndarray) -> np.ndarray:
        """These rows (`window_dtype`), copied out of memory or read from the file."""
        if self.rows is not None:
            return self.rows[rows]
        # pread, not a memory map: mapped pages of the page cache (whole large folios on recent
        # kernels) would count in the worker's memory, a batch of scattered rows touching most of it
        dtype = window_dtype(self.max_seq_len)
        out = np.empty(len(rows), dtype)
        raw, size = memoryview(out.view(np.uint8)), dtype.itemsize
        for i in np.argsort(rows, kind="stable"):          # in file order
            if os.preadv(self._fd, [raw[i * size : (i + 1) * size]], int(rows[i]) * size) != size:
                raise ValueError(f"{self.path} is shorter than its {len(self)} windows: delete its "
                                 "folder and train again to rebuild it")
        return out

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, target_ids, hours, dows) of these windows, as int64, trimmed of the leading
        columns that are padding in every row."""
        chosen = self.take(rows)
        input_ids, target_ids, hours, dows = (
            torch.from_numpy(np.ascontiguousarray(chosen[name])).long()
            for name in ("input_ids", "target_ids", "hours", "dows")
        )
        return trim_left_padding(input_ids, target_ids, hours, dows, ids=input_ids)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_targets(self) -> int:
        return int(self.lengths.sum())


_NO_WINDOWS = "no training windows: every training session has fewer than 2 known tracks"


def window_file(data_dir: str | Path, max_seq_len: int, data_hash: str | None = None) -> Path:
    """The window file of this data version (`data_hash`, the hash of the split files, computed
    when not given) and window length under data_dir/windows, written first if missing; files of
    other data versions are removed."""
    layout = DataLayout.of(data_dir)
    data_hash = data_hash or files_hash(layout.split_files)
    root = layout.windows_dir
    version = data_hash[:16]
    target = root / f"{version}-L{max_seq_len}"
    if (target / _META).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():
        if stale.is_dir() and not stale.name.startswith((version, ".")):
            shutil.rmtree(stale, ignore_errors=True)
    # written whole or not at all; a run killed while writing leaves a temporary the next one removes
    with atomic_dir(target) as tmp:
        write_windows(layout.require(layout.split("train"), "splits"), load_vocab(data_dir), max_seq_len, tmp)
    return target


def write_windows(split: Path, vocab: Vocabulary, max_seq_len: int, directory: Path,
                  batch_rows: int = SPLIT_BATCH_ROWS) -> dict:
    """Write the windows of a split file sorted by (session_id, pos) into `directory`."""
    windows, lengths = 0, []
    with open(directory / _ROWS, "wb") as out:
        for frame in split_in_batches(split, _COLUMNS, batch_rows):
            rows = window_rows(encode_sessions(frame, vocab), max_seq_len)
            out.write(rows.tobytes())
            lengths.append(_lengths(rows))
            windows += len(rows)
    if not windows:
        raise ValueError(_NO_WINDOWS)
    lengths_all = np.concatenate(lengths)
    targets = int(lengths_all.sum())
    np.save(directory / _LENGTHS, lengths_all)
    meta = {"format_version": WINDOW_FORMAT_VERSION, "max_seq_len": max_seq_len, "windows": windows,
            "targets": targets}
    (directory / _META).write_text(json.dumps(meta))
    return meta
