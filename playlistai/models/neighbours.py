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
    _by_track: sp.csr_matrix = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.recent_items is not None and self.recent_items < 1:
            raise ValueError("recent_items must be >= 1 (or None for the whole history)")
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
    ) -> SessionNeighbours:
        """From encoded sessions (vocabulary indices) in time order; `max_sessions` keeps the most
        recent ones, which bounds memory on long logs and keeps the votes current."""
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
        return cls(membership, k=k, recent_items=recent_items)

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
        keep = np.zeros(similarity.nnz, dtype=bool)
        for row in range(similarity.shape[0]):
            lo, hi = similarity.indptr[row], similarity.indptr[row + 1]
            if hi - lo <= self.k:
                keep[lo:hi] = True
            else:
                # most similar first; among equals the most recent session (higher index) wins
                values, sessions = similarity.data[lo:hi], similarity.indices[lo:hi]
                keep[lo + np.lexsort((-sessions, -values))[: self.k]] = True
        similarity.data = np.where(keep, similarity.data, 0.0).astype(np.float32)
        similarity.eliminate_zeros()
        votes = (similarity @ self.sessions).tocsr()
        votes.sort_indices()
        return votes

    def scaled_votes_sparse(self, histories: np.ndarray) -> sp.csr_matrix:
        """[B, V] votes divided by each row's largest (so in [0, 1]): a weight on them is then in
        the units of the model's scores, whatever the size of the neighbourhood."""
        votes = self.votes(histories)
        peak = np.asarray(votes.max(axis=1).todense()).ravel()
        scaled = (sp.diags((1.0 / np.where(peak > 0, peak, 1.0)).astype(np.float32)) @ votes).tocsr()
        scaled.sort_indices()
        return scaled

    def scaled_votes(self, histories) -> torch.Tensor:
        """`scaled_votes_sparse` as a dense float32 [B, V] tensor."""
        votes = self.scaled_votes_sparse(torch.as_tensor(histories).cpu().numpy())
        return torch.from_numpy(votes.toarray().astype(np.float32, copy=False))

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One .npz: the membership matrix's CSR arrays and the two settings."""
        m = self.sessions
        with open(path, "wb") as fh:
            np.savez(
                fh, indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
                shape=np.asarray(m.shape, dtype=np.int64), k=np.int64(self.k),
                recent_items=np.int64(self.recent_items or 0),
            )

    @classmethod
    def load(cls, path: str | Path) -> SessionNeighbours:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, shape = z["indptr"], z["indices"], tuple(int(x) for x in z["shape"])
            if len(shape) != 2 or len(indptr) != shape[0] + 1 or (len(indices) and indices.max() >= shape[1]):
                raise ValueError(f"{path} does not hold a sessions x tracks matrix")
            sessions = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape)
            recent = int(z["recent_items"])
            return cls(sessions, k=int(z["k"]), recent_items=recent or None)
