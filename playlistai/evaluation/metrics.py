"""Ranking and slate metrics of docs/ARCHITECTURE.md ("Metrics"), as pure vectorised functions on NumPy arrays.

Two kinds of input:

- **ranks** `[N]`: the 1-based rank of each case's target in the full-catalog ranking. The
  evaluator computes them with the pessimistic tie convention (`target_ranks`): a target shares
  its place with every item of equal score and takes the *last* of those places, so a scorer that
  gives everything the same score ranks every target last, never first. A target the ranking
  cannot reach (excluded as already seen, or scored -inf) gets `UNREACHABLE`, larger than any k.
- **slates** `[N, K]`: top-K vocabulary indices per case, best first. Index 0 (PAD) marks an empty
  slot (the catalog left fewer than K rankable tracks); empty slots count in no numerator or
  denominator.

Means over zero cases are NaN: an empty evaluation has no score, and 0 would read as "bad model".
"""

from __future__ import annotations

import numpy as np

PAD = 0
# rank given to a target that cannot be ranked at all; compares larger than any useful k
UNREACHABLE = np.iinfo(np.int64).max // 4


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


# -- ranks of targets ------------------------------------------------------------------------------


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each target among the columns of `scores` ([N, V]).

    rank = 1 + #{j != t: s_j > s_t} + #{j != t: s_j == s_t}. NaN scores count as -inf; a target
    scored -inf gets UNREACHABLE. Column 0 (PAD) is never a candidate.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(targets):
        raise ValueError("scores must be [N, V] with one target per row")
    if len(targets) == 0:
        return np.zeros(0, dtype=np.int64)
    scores = scores.copy()
    scores[:, PAD] = -np.inf
    target_score = scores[np.arange(len(targets)), targets][:, None]
    at_least = (scores >= target_score).sum(axis=1)          # includes the target itself
    ranks = at_least.astype(np.int64)
    ranks[~np.isfinite(target_score[:, 0]) & (target_score[:, 0] < 0)] = UNREACHABLE
    return ranks


# -- next-track protocol: per-case values and their means ----------------------------------------


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the target is within the top k, else 0.0 (per case)."""
    return (np.asarray(ranks) <= _check_k(k)).astype(np.float64)


def ndcg_per_case(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 / log2(rank + 1) for targets within the top k, else 0 (one relevant item: IDCG = 1)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    inside = ranks <= _check_k(k)
    out = np.zeros(len(ranks), dtype=np.float64)
    out[inside] = 1.0 / np.log2(ranks[inside] + 1.0)
    return out


def reciprocal_rank_per_case(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 / rank for targets within the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.int64)
    inside = ranks <= _check_k(k)
    out = np.zeros(len(ranks), dtype=np.float64)
    out[inside] = 1.0 / ranks[inside]
    return out


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of cases whose target is in the top k (= HR@k with one target per case)."""
    return _mean(hits_at_k(ranks, k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    return _mean(ndcg_per_case(ranks, k))


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    return _mean(reciprocal_rank_per_case(ranks, k))


def recall_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """Recall@k for k = 1..max_k in one pass (element k-1)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        return np.full(max_k, np.nan)
    counts = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)[1 : max_k + 1]
    return np.cumsum(counts) / len(ranks)


def ndcg_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """nDCG@k for k = 1..max_k in one pass (element k-1)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        return np.full(max_k, np.nan)
    counts = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)[1 : max_k + 1]
    gains = counts / np.log2(np.arange(1, max_k + 1) + 1.0)
    return np.cumsum(gains) / len(ranks)


# -- slates ---------------------------------------------------------------------------------------


def _slates(slates: np.ndarray, k: int) -> np.ndarray:
    slates = np.asarray(slates, dtype=np.int64)
    if slates.ndim != 2:
        raise ValueError("slates must be [N, K]")
    return slates[:, : _check_k(k)]


def _row_keys(rows: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    """One int64 per (row, item) pair, so set operations across rows vectorise with np.isin."""
    return rows.astype(np.int64) * width + items.astype(np.int64)


def continuation_recall_per_case(
    slates: np.ndarray, relevant_indptr: np.ndarray, relevant_items: np.ndarray, k: int
) -> np.ndarray:
    """|top-k ∩ relevant| / min(|relevant|, k) per case; relevant sets are CSR rows (distinct items).

    A case with an empty relevant set scores 0 (nothing could be found); the evaluator never
    builds one.
    """
    top = _slates(slates, k)
    indptr = np.asarray(relevant_indptr, dtype=np.int64)
    relevant = np.asarray(relevant_items, dtype=np.int64)
    n = len(top)
    if len(indptr) != n + 1:
        raise ValueError("relevant_indptr must have one entry per case plus one")
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    sizes = np.diff(indptr)
    width = int(max(top.max(initial=0), relevant.max(initial=0))) + 1
    rows = np.repeat(np.arange(n), top.shape[1])
    flat = top.ravel()
    # a slate holds each track at most once (top-k), but be safe with duplicates and empty slots
    keys = np.unique(_row_keys(rows, flat, width)[flat != PAD])
    relevant_keys = _row_keys(np.repeat(np.arange(n), sizes), relevant, width)
    found = keys[np.isin(keys, relevant_keys)]
    hits = np.bincount(found // width, minlength=n).astype(np.float64)
    denom = np.minimum(sizes, top.shape[1]).astype(np.float64)
    return np.divide(hits, denom, out=np.zeros(n), where=denom > 0)


def continuation_recall_at_k(slates, relevant_indptr, relevant_items, k: int) -> float:
    return _mean(continuation_recall_per_case(slates, relevant_indptr, relevant_items, k))


def coverage_at_k(slates: np.ndarray, catalog_size: int, k: int) -> float:
    """Distinct tracks in the union of all top-k lists over the catalog size (PAD excluded)."""
    if catalog_size < 1:
        raise ValueError("catalog_size must be >= 1")
    top = _slates(slates, k)
    distinct = np.unique(top)
    return float(np.count_nonzero(distinct != PAD) / catalog_size) if top.size else float("nan")


def repetition_per_case(slates: np.ndarray, histories: np.ndarray, k: int) -> np.ndarray:
    """Share of filled slate positions holding a track of the input or an earlier slate position.

    A position is fresh iff its track is not in the input and is its first occurrence in the slate,
    so fresh positions = distinct slate tracks absent from the input.
    """
    top = _slates(slates, k)
    histories = np.asarray(histories, dtype=np.int64)
    n = len(top)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if len(histories) != n:
        raise ValueError("one input row per slate")
    width = int(max(top.max(initial=0), histories.max(initial=0))) + 1
    filled = (top != PAD).sum(axis=1)
    slate_rows = np.repeat(np.arange(n), top.shape[1])
    slate_keys = np.unique(_row_keys(slate_rows, top.ravel(), width)[top.ravel() != PAD])
    hist_rows = np.repeat(np.arange(n), histories.shape[1])
    hist_keys = _row_keys(hist_rows, histories.ravel(), width)[histories.ravel() != PAD]
    fresh_keys = slate_keys[~np.isin(slate_keys, hist_keys)]
    fresh = np.bincount(fresh_keys // width, minlength=n)
    return np.divide(filled - fresh, filled, out=np.zeros(n), where=filled > 0)


def repetition_rate_at_k(slates: np.ndarray, histories: np.ndarray, k: int) -> float:
    top = _slates(slates, k)
    per_case = repetition_per_case(top, histories, k)
    filled = (top != PAD).sum(axis=1)
    # a share of slate positions: weight each case by its filled positions
    return float((per_case * filled).sum() / filled.sum()) if filled.sum() else float("nan")


def artist_diversity_per_case(slates: np.ndarray, artist_of: np.ndarray, k: int) -> np.ndarray:
    """Distinct artists in each slate over its filled size.

    `artist_of[index]` is an integer artist code (`Vocabulary.artist_index()`); a track with an
    unknown artist (-1) counts as its own artist, since nothing says it repeats one.
    """
    top = _slates(slates, k)
    n = len(top)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    artist_of = np.asarray(artist_of, dtype=np.int64)
    artists = artist_of[top]
    unknown = artists < 0
    artists = np.where(unknown, artist_of.max(initial=0) + 1 + top, artists)
    filled_mask = top != PAD
    filled = filled_mask.sum(axis=1)
    width = int(artists.max(initial=0)) + 1
    rows = np.repeat(np.arange(n), top.shape[1])
    keys = np.unique(_row_keys(rows, artists.ravel(), width)[filled_mask.ravel()])
    distinct = np.bincount(keys // width, minlength=n)
    return np.divide(distinct, filled, out=np.zeros(n), where=filled > 0)


def artist_diversity_at_k(slates: np.ndarray, artist_of: np.ndarray, k: int) -> float:
    top = _slates(slates, k)
    per_case = artist_diversity_per_case(top, artist_of, k)
    return _mean(per_case[(top != PAD).any(axis=1)])


def popularity_bias_at_k(slates: np.ndarray, popularity_percentile: np.ndarray, k: int) -> float:
    """Mean training-popularity percentile (0..1] of the recommended tracks (filled slots only)."""
    top = _slates(slates, k)
    filled = top != PAD
    return _mean(np.asarray(popularity_percentile, dtype=np.float64)[top][filled])


def repeat_target_share(histories: np.ndarray, targets: np.ndarray) -> float:
    """Share of targets already present in their input: what excluding seen tracks forfeits."""
    histories = np.asarray(histories, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        return float("nan")
    return float((histories == targets[:, None]).any(axis=1).mean())
