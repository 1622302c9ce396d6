"""Session neighbours (V-SKNN): the tracks that training sessions like this one went on to hold.

A sequence model generalises through its embeddings; a neighbourhood vote reads co-occurrence off
the sessions themselves, and is sharpest exactly where embeddings are weakest: rare tracks seen in
a handful of sessions. Benchmarks of session-based recommendation (Ludewig & Jannach, 2018-2021)
find this simple vote competitive with neural models on e-commerce and music logs, and the two
err on different cases, so the product uses it twice: as the `sknn` baseline, and mixed into a
sequence model's scores (models/base.py, `neighbour_weight`).

sim(h, s) = sum over tracks i in both of w_h(i) / sqrt(|s|), with w_h decaying linearly from 1 (the
last track) to 1/m (the m-th most recent); only the `recent_items` most recent tracks take part.
The `k` most similar sessions vote for their tracks with their similarity. Everything is a sparse
product, so a request costs what its neighbours hold, not what the catalog holds.

A neighbour's vote knows which tracks a session held, not their order. Where listening is close to
first-order (one track habitually follows another), the counts of "j right after i" from the last
track say more about the very next track, so the votes can carry the last track's transitions
beside them: `transition_share` x the transition counts (scaled to [0, 1] per row, like the votes).
The share is fitted with the votes' weight (training/score_terms.py); 0 leaves the pure V-SKNN vote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

PAD = 0


@dataclass
class SessionNeighbours:
    sessions: sp.csr_matrix               # [S, V] float32: 1 where session s holds track v
    k: int = 100                          # neighbours that vote
    recent_items: int | None = 3          # history tracks that find them (None: all)
    transitions: sp.csr_matrix | None = None   # [V, V] float32: times j came right after i
    transition_share: float = 0.0         # weight of the last track's transitions beside the votes
    _by_track: sp.csr_matrix = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_settings(self.k, self.recent_items)
        if self.transition_share < 0:
            raise ValueError("transition_share must be >= 0")
        if self.transition_share and self.transitions is None:
            raise ValueError("transition_share > 0 needs the transition counts")
        if self.transitions is not None and self.transitions.shape != (self.vocab_size, self.vocab_size):
            raise ValueError(f"transitions must be {self.vocab_size} x {self.vocab_size}, got {self.transitions.shape}")
        sizes = np.asarray(self.sessions.sum(axis=1)).ravel()
        norm = sp.diags((1.0 / np.sqrt(np.maximum(sizes, 1.0))).astype(np.float32))
        self._by_track = (norm @ self.sessions).T.tocsr().astype(np.float32)   # [V, S], cosine-normalised

    @property
    def vocab_size(self) -> int:
        return self.sessions.shape[1]

    @classmethod
    def fit(
        cls,
        sessions: list[np.ndarray],
        vocab_size: int,
        k: int = 100,
        recent_items: int | None = 3,
        max_sessions: int | None = None,
        with_transitions: bool = False,
    ) -> SessionNeighbours:
        """From encoded sessions (vocabulary indices) in time order; `max_sessions` keeps the most
        recent ones, which bounds memory on long logs and keeps the votes current.
        `with_transitions` also counts the sessions' transitions (share 0 until one is set)."""
        if max_sessions is not None:
            sessions = sessions[-max_sessions:]
        lengths = np.fromiter((len(x) for x in sessions), dtype=np.int64, count=len(sessions))
        rows = np.repeat(np.arange(len(sessions)), lengths)
        items = np.concatenate(sessions).astype(np.int64) if len(sessions) else np.zeros(0, np.int64)
        membership = sp.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (rows, items)), shape=(len(sessions), vocab_size)
        )
        membership.sum_duplicates()
        membership.data[:] = 1.0                   # a session holds a track or not
        transitions = transition_counts(rows, items, vocab_size) if with_transitions else None
        return cls(membership, k=k, recent_items=recent_items, transitions=transitions)

    def _history_weights(self, histories: np.ndarray) -> sp.csr_matrix:
        """[B, L] left-padded histories -> [B, V] recency weights of their recent tracks."""
        histories = np.asarray(histories, dtype=np.int64)
        if self.recent_items is not None and self.recent_items < histories.shape[1]:
            histories = histories[:, -self.recent_items :]
        known = histories != PAD
        # position from the end: the last column is the most recent track (weight 1)
        recency = np.cumsum(known[:, ::-1], axis=1)[:, ::-1]
        lengths = known.sum(axis=1, keepdims=True)
        weights = np.where(known, (lengths - recency + 1) / np.maximum(lengths, 1), 0.0)
        rows, cols = np.nonzero(known)
        matrix = sp.csr_matrix(
            (weights[rows, cols].astype(np.float32), (rows, histories[rows, cols])),
            shape=(len(histories), self.vocab_size),
        )
        matrix.sum_duplicates()
        return matrix

    def votes(self, histories: np.ndarray) -> sp.csr_matrix:
        """[B, L] left-padded histories -> [B, V] sparse votes (0 where no neighbour holds a track)."""
        similarity = (self._history_weights(histories) @ self._by_track).tocsr()        # [B, S]
        similarity.sort_indices()
        # one sort for the whole batch: by row, most similar first, among equals the most recent
        # session (higher index); a row keeps its first k
        rows = np.repeat(np.arange(similarity.shape[0]), np.diff(similarity.indptr))
        order = np.lexsort((-similarity.indices, -similarity.data, rows))
        place = np.empty(similarity.nnz, dtype=np.int64)
        place[order] = np.arange(similarity.nnz) - similarity.indptr[rows[order]]
        similarity.data = np.where(place < self.k, similarity.data, 0.0).astype(np.float32)
        similarity.eliminate_zeros()
        votes = (similarity @ self.sessions).tocsr()
        votes.sort_indices()
        return votes

    def last_track_transitions(self, histories: np.ndarray) -> sp.csr_matrix:
        """[B, L] left-padded histories -> [B, V] transition counts from each row's last track."""
        histories = np.asarray(histories, dtype=np.int64)
        if self.transitions is None:
            return sp.csr_matrix((len(histories), self.vocab_size), dtype=np.float32)
        last = histories[:, -1] if histories.shape[1] else np.zeros(len(histories), np.int64)
        # PAD's row is empty: a row with no history gets no transitions
        counts = self.transitions[last].tocsr()
        counts.sort_indices()
        return counts

    def scaled_vote_terms(self, histories: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """[B, V] votes and [B, V] last-track transitions, each divided by its row's largest (so in
        [0, 1]): a weight on them is then in the units of the model's scores, whatever the size of
        the neighbourhood or the counts."""
        return _scaled_rows(self.votes(histories)), _scaled_rows(self.last_track_transitions(histories))

    def scaled_votes_sparse(self, histories: np.ndarray) -> sp.csr_matrix:
        """[B, V] scaled votes + `transition_share` x scaled transitions (`scaled_vote_terms`)."""
        if not self.transition_share:
            return _scaled_rows(self.votes(histories))
        votes, transitions = self.scaled_vote_terms(histories)
        mixed = (votes + np.float32(self.transition_share) * transitions).tocsr().astype(np.float32)
        mixed.sort_indices()
        return mixed

    def scaled_votes_of_one(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`scaled_votes_sparse` of one history [L] as (tracks, values), tracks ascending: the same
        float32 sums in the same order, so the same bits, without a dozen sparse matrices built and
        checked for one row (most of a request's votes' time on the API)."""
        history = np.asarray(history, dtype=np.int64)
        if self.recent_items is not None:
            history = history[-self.recent_items :]
        history = history[history != PAD]
        tracks, values = self._one_row_votes(history)
        values = _scaled(values)
        if not self.transition_share:
            return tracks, values
        last = history[-1:] if len(history) else np.zeros(0, np.int64)
        t_tracks, t_values = _csr_rows(self.transitions, last)
        t_values = _scaled(t_values.astype(np.float32))
        # the sum of two sparse rows: shared tracks add, the rest pass through
        union = np.union1d(tracks, t_tracks)
        mixed = np.zeros(len(union), np.float32)
        mixed[np.searchsorted(union, tracks)] = values
        at = np.searchsorted(union, t_tracks)
        mixed[at] = mixed[at] + np.float32(self.transition_share) * t_values
        return union, mixed

    def _one_row_votes(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`votes` of one history already cut to its recent, known tracks."""
        if not len(history):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        n = len(history)
        weights = ((np.arange(1, n + 1) / n).astype(np.float32))        # 1/n ... 1, the last track 1
        order = np.argsort(history, kind="stable")                        # a CSR row holds its tracks ascending
        items, first = np.unique(history[order], return_index=True)
        weights = np.add.reduceat(weights[order], first)                  # a track twice adds its weights
        sessions, sims = _csr_rows(self._by_track, items, weights)
        if not len(sessions):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids, inverse = np.unique(sessions, return_inverse=True)
        similarity = np.zeros(len(ids), np.float32)
        np.add.at(similarity, inverse, sims)
        # the k most similar, among equals the most recent session (the higher index)
        keep = np.lexsort((-ids, -similarity))[: self.k]
        chosen = np.sort(keep)                                            # ascending sessions, as the product sums them
        voters, voter_sims = ids[chosen], similarity[chosen]
        voters, voter_sims = voters[voter_sims != 0], voter_sims[voter_sims != 0]
        voted, vote_values = _csr_rows(self.sessions, voters, voter_sims)
        tracks, inverse = np.unique(voted, return_inverse=True)
        values = np.zeros(len(tracks), np.float32)
        np.add.at(values, inverse, vote_values)
        return tracks, values

    def scaled_votes(self, histories) -> torch.Tensor:
        """`scaled_votes_sparse` as a dense float32 [B, V] tensor."""
        votes = self.scaled_votes_sparse(torch.as_tensor(histories).cpu().numpy())
        return torch.from_numpy(votes.toarray().astype(np.float32, copy=False))

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One .npz: the membership matrix's CSR arrays, the settings and, when the votes use them,
        the transition counts' CSR arrays."""
        m = self.sessions
        arrays = dict(
            indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
            shape=np.asarray(m.shape, dtype=np.int64), k=np.int64(self.k),
            recent_items=np.int64(self.recent_items or 0), transition_share=np.float64(self.transition_share),
        )
        if self.transition_share:
            t = self.transitions
            arrays.update(t_indptr=t.indptr.astype(np.int64), t_indices=t.indices.astype(np.int32),
                          t_counts=t.data.astype(np.float32))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SessionNeighbours:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, shape = z["indptr"], z["indices"], tuple(int(x) for x in z["shape"])
            if len(shape) != 2 or len(indptr) != shape[0] + 1 or (len(indices) and indices.max() >= shape[1]):
                raise ValueError(f"{path} does not hold a sessions x tracks matrix")
            sessions = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape)
            recent = int(z["recent_items"])
            # files written before transitions existed hold the votes alone
            share = float(z["transition_share"]) if "transition_share" in z.files else 0.0
            transitions = None
            if share:
                t_indptr, t_indices = z["t_indptr"], z["t_indices"]
                if len(t_indptr) != shape[1] + 1 or (len(t_indices) and t_indices.max() >= shape[1]):
                    raise ValueError(f"{path} does not hold a tracks x tracks transition matrix")
                transitions = sp.csr_matrix((z["t_counts"], t_indices, t_indptr), shape=(shape[1], shape[1]))
            return cls(sessions, k=int(z["k"]), recent_items=recent or None, transitions=transitions,
                       transition_share=share)


def check_settings(k: int, recent_items: int | None) -> None:
    """The neighbourhood's settings, checked where they are given (the `sknn` baseline's too)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if recent_items is not None and recent_items < 1:
        raise ValueError("recent_items must be >= 1 (or None for the whole history)")


def transition_counts(rows: np.ndarray, items: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """[V, V] float32 counts of "j right after i" from events in session order (`rows`: session of each)."""
    same_session = rows[1:] == rows[:-1]
    src, dst = items[:-1][same_session], items[1:][same_session]
    counts = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (src, dst)), shape=(vocab_size, vocab_size))
    counts.sum_duplicates()
    return counts


def _csr_rows(matrix: sp.csr_matrix, rows: np.ndarray, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The entries of `rows` of `matrix`, in row order: (columns, values x that row's `scale`), float32."""
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    at = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    values = matrix.data[at]
    if scale is not None:
        values = np.repeat(np.asarray(scale, np.float32), lengths) * values
    return matrix.indices[at].astype(np.int64), values.astype(np.float32, copy=False)


def _scaled(values: np.ndarray) -> np.ndarray:
    """A row's values times 1 / its largest, in float32 as `_scaled_rows` does."""
    if not len(values):
        return values
    peak = values.max()
    # the reciprocal in float32, as `_scaled_rows` divides a float32 array
    inverse = np.divide(np.float32(1.0), peak if peak > 0 else np.float32(1.0), dtype=np.float32)
    return (inverse * values).astype(np.float32)


def _scaled_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its largest value (rows of zeros stay zeros)."""
    peak = np.asarray(matrix.max(axis=1).todense()).ravel()
    scaled = (sp.diags((1.0 / np.where(peak > 0, peak, 1.0)).astype(np.float32)) @ matrix).tocsr()
    scaled.sort_indices()
    return scaled
