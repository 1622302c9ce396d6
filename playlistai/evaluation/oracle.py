"""The oracle ceiling: the synthetic generator's true next-track distribution, scored like a model.

On synthetic data the generator knows P(next track | what was played, context) exactly. Ranking
by it is Bayes-optimal on the next-track protocol, so its metrics are the physical limit of the
data and `model / oracle` says how much of the achievable quality a model captured.

The truth depends on what was *played*, not on what the vocabulary knows or what fits in
max_seq_len, so the oracle scores raw track-id prefixes taken from the split file, one per case;
`OracleScorer` is therefore tied to a case set and exposes `score_case_rows` instead of
`score_batch`. Everything after scoring (exclusion of the input, ranking, metrics) is the
evaluator's, identical for every scorer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from playlistai.data.layout import DataLayout
from playlistai.data.sequences import EncodedSessions
from playlistai.data.vocab import Vocabulary


def load_world(data_dir: str | Path):
    """The generator's world for synthetic data, None for real logs (no truth to compare with)."""
    world_dir = DataLayout.of(data_dir).world_dir
    if not world_dir.exists():
        return None
    from playlistai.data.generate import SyntheticWorld

    return SyntheticWorld.load(world_dir)


def raw_prefixes(
    split_frame: pd.DataFrame, sessions: EncodedSessions, session_index: np.ndarray, positions: np.ndarray
) -> list[list[str]]:
    """For each case, the track ids its session played before raw position `positions[i]`."""
    frame = split_frame.sort_values(["session_id", "pos"], kind="mergesort")
    sids = frame["session_id"].to_numpy()
    tracks = frame["track_id"].astype(str).to_numpy()
    pos = frame["pos"].to_numpy().astype(np.int64)
    starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]]) if len(sids) else np.zeros(0, np.int64)
    bounds = dict(zip(sids[starts].tolist(), zip(starts.tolist(), np.r_[starts[1:], len(sids)].tolist(), strict=True), strict=True))
    out = []
    for s, p in zip(np.asarray(session_index), np.asarray(positions), strict=True):
        lo, hi = bounds[int(sessions.session_ids[s])]
        end = lo + int(np.searchsorted(pos[lo:hi], p, side="left"))
        out.append(tracks[lo:end].tolist())
    return out


class OracleScorer:
    """True next-track probabilities for a fixed list of cases (row i = case i)."""

    name = "oracle"

    def __init__(self, world, prefixes: list[list[str]], hours: np.ndarray, dows: np.ndarray, vocab: Vocabulary):
        if not (len(prefixes) == len(hours) == len(dows)):
            raise ValueError("one prefix, hour and dow per case")
        self.world = world
        self.prefixes = prefixes
        self.hours = np.asarray(hours)
        self.dows = np.asarray(dows)
        self.vocab = vocab

    def score_case_rows(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        probs = self.world.oracle_scores(
            [self.prefixes[r] for r in rows], self.hours[rows], self.dows[rows], self.vocab
        )
        return torch.from_numpy(np.asarray(probs, dtype=np.float32))


def oracle_for_cases(world, split_frame, sessions, cases, vocab) -> OracleScorer:
    """The oracle over next-track cases or continuation cases (whichever positions they carry)."""
    positions = cases.positions if hasattr(cases, "positions") else cases.input_positions
    prefixes = raw_prefixes(split_frame, sessions, cases.session_index, positions)
    return OracleScorer(world, prefixes, cases.hours, cases.dows, vocab)
