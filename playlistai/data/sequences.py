"""From split Parquet files to the arrays models train and evaluate on.

A split file holds sessionized events (one row per play, ordered by `session_id`, `pos`) with an
`is_target` flag. Encoding maps tracks to vocabulary indices and drops unknown tracks, exactly as
serving drops them from a request's history.

Training (`SequenceDataset`) uses every position: the input at step t is the known track t and the
target is known track t + 1, with the context (hour, dow) *of the target event*, because that is
what the API receives: the context of the moment the next track will play.

Evaluation (`next_track_cases`) makes one case per target event: the history is the known tracks
before it (most recent `max_seq_len`, left-padded with 0), the context is the target's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from playlistai.data.layout import DataLayout
from playlistai.data.parquet_io import whole_groups
from playlistai.data.vocab import PAD, Vocabulary

if TYPE_CHECKING:
    import torch

SPLIT_BATCH_ROWS = 1 << 20     # plays of a split read at a time where a split is streamed


@dataclass
class EncodedSessions:
    """Known-track sequences, one entry per session (sessions with no known track are dropped)."""

    session_ids: np.ndarray           # [S] int64
    items: list[np.ndarray]           # vocabulary indices (> 0)
    hours: list[np.ndarray]           # 0..23, per event
    dows: list[np.ndarray]            # 0..6, per event (Monday = 0)
    is_target: list[np.ndarray]       # bool, which events are evaluation targets
    positions: list[np.ndarray]       # the event's position in the raw session (before dropping)
    unknown_events: int = 0           # events dropped because their track is not in the vocabulary
    total_events: int = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def unknown_share(self) -> float:
        return self.unknown_events / self.total_events if self.total_events else 0.0


def load_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    layout = DataLayout.of(data_dir)
    return pd.read_parquet(layout.require(layout.split(split), "splits"))


def split_in_batches(path: str | Path, columns: list[str] | None = None,
                     batch_rows: int = SPLIT_BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """A split file (sorted by session_id, pos, as the `splits` stage writes it) in frames of about
    `batch_rows` plays that never cut a session: encoding them one by one gives the sessions that
    encoding the whole file gives, in the same order."""
    previous_last: pa.Scalar | None = None
    batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
    for table in whole_groups(batches, "session_id"):
        ids = table.column("session_id").combine_chunks()
        backwards = len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py()
        if backwards or (previous_last is not None and pc.less_equal(ids[0], previous_last).as_py()):
            raise ValueError(f"{path} is not sorted by session_id: run the `splits` stage again")
        previous_last = ids[-1]
        yield table.to_pandas()


def tail_sessions(data_dir: str | Path, split: str, vocab: Vocabulary, n: int) -> EncodedSessions:
    """The last `n` sessions of `encode_sessions(load_split(data_dir, split), vocab)` (all of them
    when the split has fewer), reading the file's row groups from its end until they hold `n`
    whole encoded sessions: memory for the sessions kept, not for the split. `unknown_events` and
    `total_events` count the rows read."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    layout = DataLayout.of(data_dir)
    parquet = pq.ParquetFile(layout.require(layout.split(split), "splits"))
    columns = ["session_id", "pos", "track_id", "hour", "dow", "is_target"]
    parts: list[EncodedSessions] = []
    held = 0
    carried = None      # the first session of the row group read last: it may begin in the one before
    for group in reversed(range(parquet.num_row_groups)):
        frame = parquet.read_row_group(group, columns=columns).to_pandas()
        if carried is not None:
            frame = pd.concat([frame, carried], ignore_index=True)
        if group > 0:
            first = (frame["session_id"] == frame["session_id"].iloc[0]).to_numpy()
            carried, frame = frame[first], frame[~first]
        parts.insert(0, encode_sessions(frame, vocab))
        held += len(parts[0])
        if held >= n:
            break
    if not parts:
        return encode_sessions(pd.read_parquet(layout.split(split)), vocab)
    joined = lambda field: [x for part in parts for x in getattr(part, field)][-n:]  # noqa: E731
    return EncodedSessions(
        session_ids=np.concatenate([p.session_ids for p in parts])[-n:], items=joined("items"),
        hours=joined("hours"), dows=joined("dows"), is_target=joined("is_target"), positions=joined("positions"),
        unknown_events=sum(p.unknown_events for p in parts), total_events=sum(p.total_events for p in parts),
    )


def load_vocab(data_dir: str | Path) -> Vocabulary:
    layout = DataLayout.of(data_dir)
    return Vocabulary.load(layout.require(layout.vocab, "splits"))


def encode_sessions(events: pd.DataFrame, vocab: Vocabulary) -> EncodedSessions:
    events = events.sort_values(["session_id", "pos"], kind="mergesort")
    idx = vocab.encode(events["track_id"].tolist())
    known = idx != PAD
    is_target = events["is_target"].to_numpy() if "is_target" in events else events["pos"].to_numpy() > 0
    frame = pd.DataFrame(
        {
            "session_id": events["session_id"].to_numpy()[known],
            "item": idx[known],
            "hour": events["hour"].to_numpy()[known].astype(np.int64),
            "dow": events["dow"].to_numpy()[known].astype(np.int64),
            "is_target": is_target[known].astype(bool),
            "pos": events["pos"].to_numpy()[known].astype(np.int64),
        }
    )
    # group boundaries without a Python loop over rows
    sids = frame["session_id"].to_numpy()
    if len(sids):
        starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])
    else:
        starts = np.array([], dtype=np.int64)
    bounds = np.r_[starts, len(sids)]
    cols = {c: frame[c].to_numpy() for c in ("item", "hour", "dow", "is_target", "pos")}
    split = lambda a: [a[bounds[i] : bounds[i + 1]] for i in range(len(starts))]  # noqa: E731
    return EncodedSessions(
        session_ids=sids[starts].astype(np.int64) if len(sids) else np.array([], np.int64),
        items=split(cols["item"]),
        hours=split(cols["hour"]),
        dows=split(cols["dow"]),
        is_target=split(cols["is_target"]),
        positions=split(cols["pos"]),
        unknown_events=int((~known).sum()),
        total_events=len(events),
    )


def left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    """The last `length` entries of seq, left-padded with PAD."""
    out = np.zeros(length, dtype=np.int64)
    tail = seq[-length:] if length else seq[:0]
    if len(tail):
        out[length - len(tail) :] = tail
    return out


class SequenceDataset:
    """Training windows: inputs, next-track targets and target contexts, all of length max_seq_len.

    A map-style dataset (`__len__`, `__getitem__`), as torch's DataLoader takes it; torch itself is
    imported by the first `__getitem__`, so the data stages, which only count windows, never load it.

    A session of n known tracks gives n - 1 (input, target) pairs; longer sessions are cut into
    consecutive windows so every pair is trained on exactly once per epoch. Windows are left-padded
    (the most recent step is always the last column), targets at padded steps are PAD (ignored).
    """

    def __init__(self, sessions: EncodedSessions, max_seq_len: int):
        if max_seq_len < 1:
            raise ValueError("max_seq_len must be >= 1")
        self.max_seq_len = max_seq_len
        windows = []
        for s in range(len(sessions)):
            n = len(sessions.items[s])
            for end in range(n, 1, -max_seq_len):         # window targets are items[start+1 : end]
                start = max(0, end - 1 - max_seq_len)
                windows.append((s, start, end))
        self.sessions = sessions
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def num_targets(self) -> int:
        return sum(end - start - 1 for _, start, end in self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import torch

        s, start, end = self.windows[i]
        items = self.sessions.items[s]
        L = self.max_seq_len
        return {
            "input_ids": torch.from_numpy(left_pad(items[start : end - 1], L)),
            "target_ids": torch.from_numpy(left_pad(items[start + 1 : end], L)),
            "hours": torch.from_numpy(left_pad(self.sessions.hours[s][start + 1 : end], L)),
            "dows": torch.from_numpy(left_pad(self.sessions.dows[s][start + 1 : end], L)),
        }


@dataclass
class NextTrackCases:
    """Next-track protocol cases (docs/ARCHITECTURE.md, "Next-track cases"): history before each
    target, target's context."""

    histories: np.ndarray        # [N, L] int64, left-padded
    hours: np.ndarray            # [N] context of the target event
    dows: np.ndarray             # [N]
    targets: np.ndarray          # [N] vocabulary index of the target
    session_index: np.ndarray    # [N] row in EncodedSessions (for bootstrap over sessions)
    positions: np.ndarray        # [N] target's position in the raw session
    history_lengths: np.ndarray  # [N] known tracks before the target (uncapped)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, mask: np.ndarray) -> NextTrackCases:
        return NextTrackCases(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def case_sample(n: int, max_cases: int, seed: int) -> np.ndarray | None:
    """Which of `n` cases a fixed random subset of `max_cases` keeps (a mask; None: all of them)."""
    if not max_cases or n <= max_cases:
        return None
    keep = np.zeros(n, dtype=bool)
    keep[np.random.default_rng(seed).choice(n, max_cases, replace=False)] = True
    return keep


def _case_positions(sessions: EncodedSessions) -> list[np.ndarray]:
    """Per session, the positions of its cases: targets with a known track before them."""
    return [t[t != 0] for t in (np.flatnonzero(flags) for flags in sessions.is_target)]


def next_track_cases(sessions: EncodedSessions, max_seq_len: int, keep: np.ndarray | None = None) -> NextTrackCases:
    """One case per target event with at least one known track before it; with `keep` (a mask over
    those cases), only the cases it marks, the others never built (`split_cases`)."""
    positions = _case_positions(sessions)
    hist, hours, dows, targets, sess, pos, lens = [], [], [], [], [], [], []
    case = 0
    for s, session_targets in enumerate(positions):
        items = sessions.items[s]
        for t in session_targets:
            case += 1
            if keep is not None and not keep[case - 1]:
                continue
            hist.append(left_pad(items[:t], max_seq_len))
            hours.append(sessions.hours[s][t])
            dows.append(sessions.dows[s][t])
            targets.append(items[t])
            sess.append(s)
            pos.append(sessions.positions[s][t])
            lens.append(t)
    as_i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return NextTrackCases(
        histories=np.stack(hist) if hist else np.zeros((0, max_seq_len), np.int64),
        hours=as_i64(hours),
        dows=as_i64(dows),
        targets=as_i64(targets),
        session_index=as_i64(sess),
        positions=as_i64(pos),
        history_lengths=as_i64(lens),
    )


def split_cases(data_dir: str | Path, split: str, vocab: Vocabulary, max_seq_len: int, max_cases: int = 0,
                seed: int = 0, batch_rows: int = SPLIT_BATCH_ROWS) -> NextTrackCases:
    """`next_track_cases(encode_sessions(load_split(data_dir, split), vocab), ...)`, the split read
    in batches of whole sessions (twice: counting the cases, then building those kept), so that
    memory holds one batch and the cases kept, not the split."""
    layout = DataLayout.of(data_dir)
    path = layout.require(layout.split(split), "splits")
    columns = ["session_id", "pos", "track_id", "hour", "dow", "is_target"]
    counts = [sum(len(t) for t in _case_positions(encode_sessions(frame, vocab)))
              for frame in split_in_batches(path, columns, batch_rows)]
    keep = case_sample(sum(counts), max_cases, seed)
    parts, first_case, first_session = [], 0, 0
    for frame, n in zip(split_in_batches(path, columns, batch_rows), counts, strict=True):
        sessions = encode_sessions(frame, vocab)
        part = next_track_cases(sessions, max_seq_len, keep=None if keep is None else keep[first_case : first_case + n])
        part.session_index += first_session
        parts.append(part)
        first_case, first_session = first_case + n, first_session + len(sessions)
    if not parts:
        return next_track_cases(encode_sessions(pd.read_parquet(path), vocab), max_seq_len)
    return NextTrackCases(*(np.concatenate([getattr(p, f) for p in parts]) for f in NextTrackCases.__dataclass_fields__))
