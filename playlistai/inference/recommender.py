"""Recommender: a listening history and the context of the next play -> the next k tracks.

How a request is answered:

1. The history's track ids are looked up in the vocabulary; unknown ones are dropped and reported.
   Only the most recent `max_seq_len` known tracks reach the model (it was trained on no more).
2. No known track: the cold-start popularity table for the request's hour answers (fallback=True).
3. Otherwise the model turns (history, hour, dow) into one query vector, and
   - exact: scores = query @ item table (one matrix product; the table in float32 or bfloat16,
     `item_table_dtype`, the scores float32 either way), then a partial top-k (torch.topk);
   - ANN: FAISS returns `ann_candidates` candidates by inner product (by default 2k, 4k with an
     artist cap: re-ranking exactly only needs a margin over k, and a wider list forces a wider,
     slower graph search), which are re-scored exactly and ranked; when filters leave fewer than k
     of them, that request is answered exactly instead.
4. Filters: tracks of the input are excluded (unless exclude_seen=False), at most
   `max_per_artist` tracks per artist, never a duplicate.
5. With exclude_seen=False, tracks of the model's input window get the model's repeat bonus
   (models/base.py), as in evaluation; the ANN path adds them to its candidates, since an index
   over embeddings cannot know the bonus.

Scores are the model's inner products plus that bonus (logits; larger is better, comparable within
a response); the fallback's scores are p(track | hour).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from playlistai.data.vocab import PAD, Vocabulary
from playlistai.inference import ann as ann_lib
from playlistai.inference.features import history_features, load_reference, request_features
from playlistai.inference.item_table import ItemTable
from playlistai.inference.package import (
    ANN_INDEX_FILE,
    ANN_PARAMS_FILE,
    DRIFT_SAMPLE_FILE,
    DRIFT_STATS_FILE,
    POPULARITY_FILE,
    ModelPackageError,
    resolve_package_dir,
    verify_package,
)
from playlistai.inference.popularity import ContextPopularity
from playlistai.models import SequenceRecommender

NEG_INF = float("-inf")
# requests scored together by recommend_batch: one chunk's scores are BATCH_ROWS x catalog floats,
# so a call over many requests (a pyfunc predict over a large DataFrame) holds one chunk at a time
BATCH_ROWS = 64
# a serving process has ~2 cores; more intra-op threads than cores only adds contention
DEFAULT_THREADS = 2


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch and FAISS (OpenMP) threads: the argument, or min(2, cpus)."""
    n = num_threads or min(DEFAULT_THREADS, os.cpu_count() or 1)
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n


@dataclass
class Recommendation:
    items: list[tuple[str, float]]          # (track_id, score), best first, no duplicates
    unknown_tracks: list[str] = field(default_factory=list)   # input ids not in the vocabulary (dropped)
    fallback: bool = False                  # no input track was known: popularity answered



def find_sorted(values: np.ndarray, ascending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, at): whether each of `values` is in `ascending` (sorted), and where (meaningful where
    found), by a binary search each. np.isin sorts both again, or builds a table as wide as their
    range, which on a large catalog is most of the catalog per request."""
    if not len(ascending):
        return np.zeros(len(values), bool), np.zeros(len(values), np.int64)
    at = np.minimum(np.searchsorted(ascending, values), len(ascending) - 1)
    return ascending[at] == values, at


def in_sorted(values: np.ndarray, ascending: np.ndarray) -> np.ndarray:
    return find_sorted(values, ascending)[0]


def auto_ann_candidates(k: int, max_per_artist: int | None) -> int:
    """FAISS candidates for a top k: a margin for the exact re-rank (2k), more under an artist cap,
    which drops candidates (4k); a request that still ends short is answered exactly."""
    return 2 * k if max_per_artist is None else 4 * k

class Recommender:
    def __init__(
        self,
        model: SequenceRecommender,
        vocab: Vocabulary,
        config: dict,
        popularity: ContextPopularity,
        ann_index: faiss.Index | None = None,
        ann_params: ann_lib.AnnParams | None = None,
        package_dir: Path | None = None,
        model_version: str | None = None,
        item_table_dtype: str = "float32",
    ):
        if vocab.size != model.config.vocab_size:
            raise ValueError(f"vocabulary has {vocab.size} rows, model expects {model.config.vocab_size}")
        if popularity.vocab_size != vocab.size:
            raise ValueError(f"popularity table has {popularity.vocab_size} rows, vocabulary {vocab.size}")
        self.model = model.eval()
        self.vocab = vocab
        self.config = config
        self.model_version = model_version
        self.package_dir = package_dir
        self.ann_index = ann_index
        # the ANN path re-ranks with the vectors the index stores: the item table's own layout may be
        # columns [D, V], where gathering a few hundred rows is slow
        self._ann_vectors = ann_lib.stored_vectors(ann_index) if ann_index is not None else None
        self.ann_params = ann_params
        self.max_seq_len = int(model.config.max_seq_len)
        with torch.inference_mode():
            self._items = ItemTable(model.item_embeddings().float(), item_table_dtype)   # [V, D]
        self._artists = vocab.artist_index()                                          # [V], -1 = unknown
        self._popularity_percentile = vocab.popularity_percentile()
        fallback = torch.from_numpy(popularity.probabilities()).float()
        fallback[:, PAD] = NEG_INF
        self._fallback = fallback                                                     # [24, V]
        self._drift_reference: tuple[dict, pd.DataFrame] | None = None

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, path: str | Path, num_threads: int | None = None,
                       item_table_dtype: str = "float32") -> Recommender:
        """Load a model package (or a pyfunc model directory holding one); every file is verified.
        `item_table_dtype` (float32 | bfloat16) is how the exact path stores the item table."""
        from playlistai.models.checkpoint import CheckpointError, load_checkpoint

        directory = resolve_package_dir(path)
        verify_package(directory)
        configure_threads(num_threads)
        try:
            model, vocab, config = load_checkpoint(directory)
        except CheckpointError as exc:
            raise ModelPackageError(str(exc)) from None
        try:
            popularity = ContextPopularity.load(directory / POPULARITY_FILE)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelPackageError(f"{directory / POPULARITY_FILE} (the popularity table) is corrupt: {exc}") from None
        try:
            index, params = ann_lib.load(directory / ANN_INDEX_FILE, directory / ANN_PARAMS_FILE)
        except (OSError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
            raise ModelPackageError(f"{directory / ANN_INDEX_FILE} (the FAISS index) is corrupt: {exc}") from None
        if params.catalog_size != len(vocab):
            raise ModelPackageError(
                f"{directory / ANN_INDEX_FILE} indexes {params.catalog_size} tracks, the vocabulary has {len(vocab)}"
            )
        return cls(model, vocab, config, popularity, index, params, package_dir=directory,
                   item_table_dtype=item_table_dtype)

    @property
    def drift_reference(self) -> tuple[dict, pd.DataFrame]:
        """(statistics, sample rows) of the training features, loaded on first use."""
        if self._drift_reference is None:
            if self.package_dir is None:
                raise ModelPackageError("this Recommender was not loaded from a package: no drift reference")
            self._drift_reference = load_reference(
                self.package_dir / DRIFT_STATS_FILE, self.package_dir / DRIFT_SAMPLE_FILE
            )
        return self._drift_reference

    @property
    def repeat_bonus(self) -> float:
        """The model's own (a buffer of its weights): one source, whatever changes it."""
        return float(self.model.repeat_bonus)

    @property
    def catalog_size(self) -> int:
        return len(self.vocab)

    # -- features for drift monitoring -----------------------------------------------------------

    def history_features(self, tracks: Sequence[str]) -> dict:
        """history_length, known_length, unknown_share, mean_popularity_percentile (None if none known)."""
        return history_features(tracks, self.vocab, self._popularity_percentile)

    def drift_features(self, tracks: Sequence[str], hour: int, dow: int, top_score: float | None = None) -> dict:
        """The request's drift row (playlistai.inference.features.DRIFT_FEATURES), as the API records it."""
        return request_features(tracks, hour, dow, top_score, self.vocab, self._popularity_percentile)

    # -- recommending ----------------------------------------------------------------------------

    def recommend(
        self,
        tracks: Sequence[str],
        k: int,
        hour: int,
        dow: int,
        *,
        use_ann: bool = False,
        exclude_seen: bool = True,
        max_per_artist: int | None = None,
        ann_candidates: int = 0,
    ) -> Recommendation:
        return self.recommend_batch(
            [tracks], k, [hour], [dow], use_ann=use_ann, exclude_seen=exclude_seen,
            max_per_artist=max_per_artist, ann_candidates=ann_candidates,
        )[0]

    def recommend_batch(
        self,
        tracks: Sequence[Sequence[str]],
        k: int | Sequence[int],
        hours: Sequence[int],
        dows: Sequence[int],
        *,
        use_ann: bool = False,
        exclude_seen: bool = True,
        max_per_artist: int | None = None,
        ann_candidates: int = 0,
    ) -> list[Recommendation]:
        """Many requests at once: one model forward and one matrix product per BATCH_ROWS of them
        (every request is checked before any is scored). `ann_candidates`: FAISS candidates per
        request on the ANN path (0: `auto_ann_candidates`)."""
        n = len(tracks)
        ks = [k] * n if isinstance(k, int | np.integer) else list(k)
        if not (len(ks) == len(hours) == len(dows) == n):
            raise ValueError("tracks, k, hours and dows must have the same length")
        for i in range(n):
            self._check_request(tracks[i], ks[i], hours[i], dows[i])
        if max_per_artist is not None and int(max_per_artist) < 1:
            raise ValueError(f"max_per_artist must be >= 1 (or None for no cap), got {max_per_artist}")
        if int(ann_candidates) < 0:
            raise ValueError(f"ann_candidates must be >= 0 (0 = auto), got {ann_candidates}")
        ks = [min(int(x), self.catalog_size) for x in ks]
        tracks, hours, dows = list(tracks), list(hours), list(dows)
        results: list[Recommendation] = []
        for start in range(0, n, BATCH_ROWS):
            end = start + BATCH_ROWS
            results.extend(self._recommend_chunk(tracks[start:end], ks[start:end], hours[start:end], dows[start:end],
                                                 use_ann, exclude_seen, max_per_artist, int(ann_candidates)))
        return results

    def _recommend_chunk(self, tracks, ks, hours, dows, use_ann, exclude_seen, max_per_artist,
                         ann_candidates) -> list[Recommendation]:
        """recommend_batch for checked requests, ks already capped at the catalog size."""
        n = len(tracks)
        encoded = [self.vocab.encode([str(t) for t in row]) if len(row) else np.zeros(0, np.int64) for row in tracks]
        unknown = [list(dict.fromkeys(str(t) for t, i in zip(row, e, strict=True) if i == PAD))
                   for row, e in zip(tracks, encoded, strict=True)]
        known = [e[e != PAD] for e in encoded]
        seen = [np.unique(x) if exclude_seen else np.zeros(0, np.int64) for x in known]
        # the tracks that earn the repeat bonus: those the model reads, when they may come again
        lifted = [np.unique(x[-self.max_seq_len:]) if not exclude_seen and self.repeat_bonus else np.zeros(0, np.int64)
                  for x in known]
        results: list[Recommendation | None] = [None] * n

        cold = [i for i in range(n) if len(known[i]) == 0]
        for i in cold:
            # the hour's row itself (a view): _select only reads it, so no catalog-sized copy per request
            items = self._select(self._fallback[int(hours[i])], ks[i], max_per_artist)
            results[i] = Recommendation(items, unknown[i], fallback=True)

        warm = [i for i in range(n) if len(known[i]) > 0]
        if warm:
            queries = self._queries([known[i] for i in warm], [hours[i] for i in warm], [dows[i] for i in warm])
            voted = self._neighbour_votes([known[i] for i in warm], [seen[i] for i in warm])
            exact_rows = list(range(len(warm)))
            if use_ann:
                exact_rows = []
                ann_rows = self._ann_answers(queries, [ks[i] for i in warm], [seen[i] for i in warm],
                                             [lifted[i] for i in warm], voted, max_per_artist, ann_candidates)
                for row, i in enumerate(warm):
                    if ann_rows[row] is None:
                        exact_rows.append(row)
                    else:
                        results[i] = Recommendation(ann_rows[row], unknown[i])
            if exact_rows:
                with torch.inference_mode():
                    scores = self._items.scores(queries[exact_rows])                 # [B, V] float32
                    scores[:, PAD] = NEG_INF
                    for r, row in enumerate(exact_rows):
                        i = warm[row]
                        if len(seen[i]):
                            scores[r, torch.from_numpy(seen[i])] = NEG_INF
                        if len(lifted[i]):
                            scores[r, torch.from_numpy(lifted[i])] += self.repeat_bonus
                        tracks_voted, vote_values = voted[row]
                        if len(tracks_voted):
                            scores[r, torch.from_numpy(tracks_voted)] += torch.from_numpy(vote_values)
                    for r, row in enumerate(exact_rows):
                        i = warm[row]
                        results[i] = Recommendation(self._select(scores[r], ks[i], max_per_artist), unknown[i])
        return results  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _check_request(tracks, k, hour, dow) -> None:
        if isinstance(tracks, str):
            raise ValueError("tracks must be a list of track ids, not a string")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0 <= int(hour) <= 23:
            raise ValueError(f"hour must be in 0..23, got {hour}")
        if not 0 <= int(dow) <= 6:
            raise ValueError(f"dow must be in 0..6 (Monday = 0), got {dow}")

    def _queries(self, known: list[np.ndarray], hours, dows) -> torch.Tensor:
        """Query vectors [B, D] from the most recent max_seq_len known tracks of each history."""
        width = min(self.max_seq_len, max(len(x) for x in known))
        histories = np.zeros((len(known), width), dtype=np.int64)
        for row, items in enumerate(known):
            tail = items[-width:]
            histories[row, width - len(tail):] = tail
        with torch.inference_mode():
            return self.model.user_vectors(
                torch.from_numpy(histories),
                torch.as_tensor(np.asarray(hours, dtype=np.int64)),
                torch.as_tensor(np.asarray(dows, dtype=np.int64)),
            ).float()

    def _neighbour_votes(self, known: list[np.ndarray], seen: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row, (tracks, weight x scaled vote) of the model's session neighbours; empty when the
        model mixes none in. Seen tracks are left out: they are never recommended."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if not self.model.mixes_neighbours:
            return [empty] * len(known)
        neighbours, weight = self.model.neighbours, np.float32(float(self.model.neighbour_weight))
        out = []
        for row, items in enumerate(known):
            # the tracks the model reads (the neighbours look at fewer still)
            tracks, values = neighbours.scaled_votes_of_one(items[-self.max_seq_len:])
            keep = ~in_sorted(tracks, seen[row])
            out.append((tracks[keep], (values[keep] * weight).astype(np.float32)))
        return out

    def _ann_answers(self, queries, ks, seen, lifted, voted, max_per_artist, ann_candidates) -> list[list | None]:
        """FAISS candidates (plus the rows' lifted and voted tracks) re-ranked exactly; None for a
        row whose filters left fewer than k."""
        if self.ann_index is None or self.ann_params is None:
            raise ModelPackageError("use_ann=True but this Recommender has no FAISS index")
        per_row = ann_candidates or auto_ann_candidates(max(ks), max_per_artist)
        # seen tracks are found and then dropped: ask for that many more
        wanted = max(max(ks), per_row) + max(len(s) for s in seen)
        candidates = ann_lib.search(self.ann_index, self.ann_params, queries.numpy(), wanted)   # [B, C]
        # every lifted or voted track becomes a candidate (PAD-padded to a common width): outside the
        # FAISS list, its score term could still carry it into the top
        added = [np.union1d(lifted[row], voted[row][0]) for row in range(len(candidates))]
        if any(len(x) for x in added):
            # one already found by FAISS is blanked in the appended part, so none is counted twice
            width = max(len(x) for x in added)
            extra = np.zeros((len(candidates), width), dtype=candidates.dtype)
            for row, items in enumerate(added):
                items = items[~in_sorted(items, np.sort(candidates[row]))]
                extra[row, : len(items)] = items
            candidates = np.concatenate([candidates, extra], axis=1)
        out: list[list | None] = []
        with torch.inference_mode():
            cand = torch.from_numpy(candidates)
            # FAISS id = vocabulary index - 1; PAD (0) reads row 0 and is masked just below
            vectors = self._ann_vectors(np.maximum(candidates - 1, 0).reshape(-1))
            scores = torch.einsum("bcd,bd->bc", torch.from_numpy(vectors).view(*candidates.shape, -1), queries)
            scores[cand == PAD] = NEG_INF
            for row in range(len(ks)):
                if len(seen[row]):
                    scores[row, torch.from_numpy(in_sorted(candidates[row], seen[row]))] = NEG_INF
                if len(lifted[row]):
                    scores[row, torch.from_numpy(in_sorted(candidates[row], lifted[row]))] += self.repeat_bonus
                tracks_voted, vote_values = voted[row]
                if len(tracks_voted):
                    hit, at = find_sorted(candidates[row], tracks_voted)      # tracks_voted: CSR order, sorted
                    scores[row, torch.from_numpy(hit)] += torch.from_numpy(vote_values[at[hit]])
                picked = self._select(scores[row], ks[row], max_per_artist, ids=cand[row])
                out.append(picked if len(picked) >= ks[row] else None)
        return out

    def _select(self, scores: torch.Tensor, k: int, max_per_artist: int | None, ids: torch.Tensor | None = None):
        """Best k (track_id, score) of one row; -inf never selected; at most max_per_artist per artist.

        `ids` maps positions of `scores` to vocabulary indices (ANN candidates); None = identity.
        """
        width = scores.shape[0]
        take = min(width, k if max_per_artist is None else max(4 * k, 64))
        while True:
            values, positions = torch.topk(scores, take)
            values = values.tolist()
            indices = (ids[positions] if ids is not None else positions).tolist()
            picked: list[tuple[str, float]] = []
            per_artist: dict[int, int] = {}
            for value, index in zip(values, indices, strict=True):
                if value == NEG_INF or len(picked) == k:
                    break
                if max_per_artist is not None:
                    artist = int(self._artists[index])
                    if artist >= 0:
                        if per_artist.get(artist, 0) >= max_per_artist:
                            continue
                        per_artist[artist] = per_artist.get(artist, 0) + 1
                picked.append((self.vocab.track_ids[index - 1], float(value)))
            exhausted = take == width or values[-1] == NEG_INF
            if len(picked) == k or exhausted:
                return picked
            take = min(width, take * 4)
