"""Full-catalog evaluation of any scorer (model, baseline or oracle) under docs/ARCHITECTURE.md, "Metrics".

A *scorer* is any object with
`score_batch(histories: LongTensor[B, L], hours: LongTensor[B], dows: LongTensor[B]) -> FloatTensor[B, V]`
(V = vocabulary size, column 0 = PAD). A scorer that needs to know *which* cases it scores (the
oracle needs the raw, untruncated prefixes) may instead expose `score_case_rows(rows) -> [B, V]`.

How ranking is done, and why:

- Every case is ranked against the whole catalog (never sampled negatives), one batch of cases at
  a time; only the target's rank and the top-K slate leave the batch, so memory is one
  `[batch, V]` score matrix plus O(cases x K), never cases x catalog.
- Ties are pessimistic: a target tied with other tracks takes the last of the tied places
  (`metrics.target_ranks`), so a constant scorer gets no credit. Slates (what a listener would be
  served) break ties by the lower vocabulary index (the more popular track, since the vocabulary
  is ordered by training count), so they are deterministic on every device.
- `exclude_seen`: tracks of the input row are set to -inf before ranking. A target that was
  already in the input is then unreachable and counts as a miss; that is why every evaluation
  also reports the other setting and the share of repeat targets. Only the input row (the most
  recent max_seq_len known tracks) is excluded: the model sees nothing older either.
- NaN scores count as -inf; PAD (column 0) is never ranked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from playlistai.data.sequences import EncodedSessions, NextTrackCases, left_pad
from playlistai.data.vocab import PAD, Vocabulary
from playlistai.evaluation import metrics as M
from playlistai.evaluation.keys import SEEN_EXCLUDED, WITH_REPEATS

# the keys docs/ARCHITECTURE.md ("Metrics") names, computed whatever `ks` a caller asks for
DESIGN_RECALL_K = 20
DESIGN_NDCG_K = 10
DESIGN_MRR_K = 20
COVERAGE_K = 100
SLATE_K = 20            # repetition, artist diversity, popularity bias, continuation recall
CURVE_MAX_K = 100       # recall/nDCG curves in the report
SCORE_CELLS = 1 << 25   # scores (cases x catalog) held at once where memory is bounded: 128 MB as float32


def rows_per_score_batch(catalog_size: int, most: int = 512) -> int:
    """Cases per scoring batch so that a batch's scores stay within SCORE_CELLS: `most` on a small
    catalog, fewer on a large one (143 at 234k tracks), where one batch of 512 and its temporaries
    took 1.5 GB."""
    return max(1, min(most, SCORE_CELLS // max(1, catalog_size)))


# -- scoring one batch -----------------------------------------------------------------------------


@contextmanager
def inference_mode(scorer) -> Iterator[None]:
    """Eval mode and no_grad while scoring; a module's previous train/eval mode is restored."""
    module = scorer if isinstance(scorer, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if module is not None and was_training:
            module.train()


def scorer_device(scorer, device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(scorer, torch.nn.Module):
        for p in scorer.parameters():
            return p.device
    return torch.device("cpu")


def score_rows(
    scorer,
    histories: np.ndarray,
    hours: np.ndarray,
    dows: np.ndarray,
    rows: np.ndarray,
    device: torch.device,
) -> torch.Tensor:
    """Scores [len(rows), V] as float32, NaN -> -inf and PAD column -inf."""
    if hasattr(scorer, "score_case_rows"):
        scores = scorer.score_case_rows(rows)
    else:
        as_long = lambda a: torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.long, device=device)  # noqa: E731
        scores = scorer.score_batch(as_long(histories), as_long(hours), as_long(dows))
    scores = torch.as_tensor(scores)
    if scores.ndim != 2 or scores.shape[0] != len(rows):
        raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected [{len(rows)}, V]")
    # nan_to_num returns a new tensor: exclusion edits scores in place, and a scorer may hand out
    # a view of its own state
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    scores[:, PAD] = float("-inf")
    return scores


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Torch twin of `metrics.target_ranks` (same convention) for one batch."""
    target_score = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= target_score).sum(dim=1, dtype=torch.int64)
    unreachable = torch.isneginf(target_score[:, 0])
    return torch.where(unreachable, torch.full_like(ranks, M.UNREACHABLE), ranks)


def top_slates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k indices per row, best first; ties broken by the lower index; -inf slots become PAD.

    torch.topk leaves the order of equal scores unspecified, so: ask for k + 1 values; a row whose
    (k+1)-th value equals its k-th has a tie across the boundary, and only such rows (rare for a
    model or a baseline, every row for a constant scorer) rebuild their set from the full row:
    every track above the k-th value, then tracks equal to it by ascending index. Rows with equal
    scores inside the slate are then reordered by (score desc, index asc). Both fixes touch only
    the rows that need them, on small arrays, so the common case is one topk.
    """
    batch, width = scores.shape
    k = max(1, min(int(k), width - 1))
    values, chosen = torch.topk(scores, min(k + 1, width), dim=1, sorted=True)
    rebuilt = torch.zeros(batch, dtype=torch.bool, device=scores.device)
    if k < width:
        kth = values[:, k - 1 : k]
        rebuilt = (values[:, k : k + 1] == kth).view(-1)
        if bool(rebuilt.any()):
            rows = rebuilt.nonzero().view(-1)
            sub, sub_kth = scores[rows], kth[rows]
            still_needed = k - (values[rows, :k] > sub_kth).sum(dim=1, keepdim=True, dtype=torch.int32)
            equal = sub == sub_kth
            equal &= torch.cumsum(equal, dim=1, dtype=torch.int32) <= still_needed
            values, chosen = values.clone(), chosen.clone()
            chosen[rows, :k] = ((sub > sub_kth) | equal).nonzero()[:, 1].view(len(rows), k)
            values[rows, :k] = sub.gather(1, chosen[rows, :k])
    values, chosen = values[:, :k].cpu().numpy(), chosen[:, :k].cpu().numpy()
    reorder = np.flatnonzero((values[:, 1:] == values[:, :-1]).any(axis=1) | rebuilt.cpu().numpy())
    if len(reorder):
        order = np.lexsort((chosen[reorder], -values[reorder]), axis=-1)
        chosen[reorder] = np.take_along_axis(chosen[reorder], order, axis=1)
        values[reorder] = np.take_along_axis(values[reorder], order, axis=1)
    chosen[np.isneginf(values)] = PAD
    return torch.from_numpy(chosen)


# -- ranking a set of cases ------------------------------------------------------------------------


@dataclass
class Ranking:
    """What one scorer produced for one case set under one exclude_seen setting."""

    exclude_seen: bool
    ranks: np.ndarray | None          # [N] pessimistic target ranks (None without targets)
    slates: np.ndarray                # [N, slate_k] int32, best first, PAD = empty slot
    covered: np.ndarray               # [V] bool: track appears in some top-`coverage_k` slate
    coverage_k: int = COVERAGE_K

    @property
    def catalog_size(self) -> int:
        return len(self.covered) - 1


def rank_cases(
    scorer,
    histories: np.ndarray,
    hours: np.ndarray,
    dows: np.ndarray,
    targets: np.ndarray | None = None,
    *,
    exclude_seen_settings: Sequence[bool] = (True,),
    slate_k: int = SLATE_K,
    coverage_k: int = COVERAGE_K,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    progress: str | None = None,
) -> dict[bool, Ranking]:
    """Rank the full catalog for every case, once per exclude_seen setting, scoring each batch once.
    `progress`: a label for a progress bar over the cases (on stderr); None draws none."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    settings = list(dict.fromkeys(bool(s) for s in exclude_seen_settings))
    if not settings:
        raise ValueError("at least one exclude_seen setting is needed")
    n = len(histories)
    dev = scorer_device(scorer, device)
    ranks = {s: [] for s in settings}
    slates = {s: [] for s in settings}
    covered: dict[bool, np.ndarray | None] = {s: None for s in settings}
    # with-repeats first: exclusion then edits the same score matrix in place
    order = sorted(settings)
    bar = tqdm(total=n, desc=progress, unit="case", unit_scale=True, leave=False, disable=progress is None,
               mininterval=2.0, file=sys.stderr)
    with inference_mode(scorer), bar:
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            bar.update(len(rows))
            scores = score_rows(scorer, histories, hours, dows, rows, dev)
            target_t = None if targets is None else torch.as_tensor(targets[rows], device=scores.device)
            for setting in order:
                if setting:
                    hist = torch.as_tensor(histories[rows], dtype=torch.long, device=scores.device)
                    scores.scatter_(1, hist, float("-inf"))
                if target_t is not None:
                    ranks[setting].append(pessimistic_ranks(scores, target_t).cpu().numpy())
                top = top_slates(scores, max(slate_k, coverage_k)).numpy()
                if covered[setting] is None:
                    covered[setting] = np.zeros(scores.shape[1], dtype=bool)
                covered[setting][top[:, :coverage_k].ravel()] = True
                slates[setting].append(top[:, :slate_k].astype(np.int32))
    out = {}
    for setting in settings:
        cov = covered[setting] if covered[setting] is not None else np.zeros(1, dtype=bool)
        cov[PAD] = False
        out[setting] = Ranking(
            exclude_seen=setting,
            ranks=None if targets is None else _concat(ranks[setting], np.int64, (0,)),
            slates=_concat(slates[setting], np.int32, (0, slate_k)),
            covered=cov,
            coverage_k=coverage_k,
        )
    return out


def _concat(parts: list[np.ndarray], dtype, empty_shape) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)


def rank_next_track(
    scorer,
    cases: NextTrackCases,
    *,
    exclude_seen_settings: Sequence[bool] = (True,),
    slate_k: int = SLATE_K,
    coverage_k: int = COVERAGE_K,
    batch_size: int = 512,
    device=None,
    progress: str | None = None,
) -> dict[bool, Ranking]:
    return rank_cases(
        scorer,
        cases.histories,
        cases.hours,
        cases.dows,
        cases.targets,
        exclude_seen_settings=exclude_seen_settings,
        slate_k=slate_k,
        coverage_k=coverage_k,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


# -- metrics from a ranking ------------------------------------------------------------------------


def metric_ks(ks: Sequence[int]) -> list[int]:
    """The cut-offs to report: the requested ones plus those docs/ARCHITECTURE.md ("Metrics") names."""
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    return sorted(set(ks) | {DESIGN_NDCG_K, DESIGN_RECALL_K, DESIGN_MRR_K})


def per_case_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, np.ndarray]:
    """Per-case values whose means are the next-track metrics (input of the bootstrap)."""
    out = {}
    for k in metric_ks(ks):
        out[f"recall_at_{k}"] = M.hits_at_k(ranks, k)
        out[f"ndcg_at_{k}"] = M.ndcg_per_case(ranks, k)
        out[f"mrr_at_{k}"] = M.reciprocal_rank_per_case(ranks, k)
    return out


def slate_metrics(
    ranking: Ranking, histories: np.ndarray, vocab: Vocabulary | None = None, k: int = SLATE_K
) -> dict[str, float]:
    out = {
        f"coverage_at_{ranking.coverage_k}": float(ranking.covered.sum() / max(1, ranking.catalog_size)),
        f"repetition_rate_at_{k}": M.repetition_rate_at_k(ranking.slates, histories, k),
    }
    if vocab is not None:
        out[f"artist_diversity_at_{k}"] = M.artist_diversity_at_k(ranking.slates, vocab.artist_index(), k)
        out[f"popularity_bias_at_{k}"] = M.popularity_bias_at_k(
            ranking.slates, vocab.popularity_percentile(), k
        )
    return out


def next_track_metrics(
    ranking: Ranking, cases: NextTrackCases, ks: Sequence[int] = (10, 20), vocab: Vocabulary | None = None
) -> dict[str, float]:
    out = {key: float(v.mean()) if v.size else float("nan") for key, v in per_case_metrics(ranking.ranks, ks).items()}
    out.update(slate_metrics(ranking, cases.histories, vocab))
    out["repeat_target_share"] = M.repeat_target_share(cases.histories, cases.targets)
    out["num_cases"] = float(len(cases))
    return out


def evaluate_next_track(
    scorer,
    cases: NextTrackCases,
    ks: Sequence[int] = (10, 20),
    exclude_seen: bool = True,
    batch_size: int = 512,
    vocab: Vocabulary | None = None,
    device=None,
) -> dict[str, float]:
    """Next-track metrics of one scorer, unprefixed (`recall_at_20`, `ndcg_at_10`, `mrr_at_20`, ...).

    Returns recall/nDCG/MRR at every k of `ks` and at the cut-offs docs/ARCHITECTURE.md ("Metrics") names, plus
    `coverage_at_100`, `repetition_rate_at_20`, `repeat_target_share`, `num_cases`; with `vocab`
    also `artist_diversity_at_20` and `popularity_bias_at_20`. Light enough for per-epoch
    validation: one scoring pass, one exclude_seen setting.
    """
    if len(cases) == 0:
        raise ValueError("no cases to evaluate (is the split empty or are all its tracks unknown?)")
    ranking = rank_next_track(
        scorer, cases, exclude_seen_settings=(exclude_seen,), batch_size=batch_size, device=device
    )[exclude_seen]
    return next_track_metrics(ranking, cases, ks, vocab)


# -- continuation protocol -------------------------------------------------------------------------


@dataclass
class ContinuationCases:
    """One case per session: its first half is the input, the targets of the rest are relevant."""

    histories: np.ndarray            # [S, L] left-padded input (first half, most recent L)
    hours: np.ndarray                # [S] context of the first event after the input
    dows: np.ndarray                 # [S]
    relevant_indptr: np.ndarray      # [S + 1] CSR rows of distinct relevant tracks
    relevant_items: np.ndarray
    session_index: np.ndarray        # [S] row in EncodedSessions
    input_positions: np.ndarray      # [S] raw position where the continuation starts

    def __len__(self) -> int:
        return len(self.session_index)


def continuation_cases(sessions: EncodedSessions, max_seq_len: int) -> ContinuationCases:
    """Sessions with at least two known tracks: input = first floor(n/2), relevant = the rest's targets."""
    hist, hours, dows, sizes, items, sess, starts = [], [], [], [], [], [], []
    for s in range(len(sessions)):
        seq = sessions.items[s]
        half = len(seq) // 2
        if half < 1:
            continue
        rest = seq[half:][sessions.is_target[s][half:]]
        relevant = np.unique(rest)
        if len(relevant) == 0:
            continue
        hist.append(left_pad(seq[:half], max_seq_len))
        hours.append(sessions.hours[s][half])
        dows.append(sessions.dows[s][half])
        sizes.append(len(relevant))
        items.append(relevant)
        sess.append(s)
        starts.append(sessions.positions[s][half])
    as_i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return ContinuationCases(
        histories=np.stack(hist) if hist else np.zeros((0, max_seq_len), np.int64),
        hours=as_i64(hours),
        dows=as_i64(dows),
        relevant_indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        relevant_items=np.concatenate(items).astype(np.int64) if items else np.zeros(0, np.int64),
        session_index=as_i64(sess),
        input_positions=as_i64(starts),
    )


def continuation_recall(ranking: Ranking, cases: ContinuationCases, k: int = SLATE_K) -> np.ndarray:
    return M.continuation_recall_per_case(ranking.slates, cases.relevant_indptr, cases.relevant_items, k)


# -- context ablation ------------------------------------------------------------------------------


def shuffle_context(cases: NextTrackCases, seed: int = 0) -> NextTrackCases:
    """The same cases with (hour, dow) pairs permuted across cases: context kept in distribution,
    its link to the case broken. What a model loses here is what it drew from context."""
    perm = np.random.default_rng(seed).permutation(len(cases))
    return NextTrackCases(
        histories=cases.histories,
        hours=cases.hours[perm],
        dows=cases.dows[perm],
        targets=cases.targets,
        session_index=cases.session_index,
        positions=cases.positions,
        history_lengths=cases.history_lengths,
    )


# -- everything for one scorer ---------------------------------------------------------------------


@dataclass
class ScorerEvaluation:
    """All metrics of one scorer on one split, both exclude_seen settings, with per-case arrays."""

    name: str
    primary_exclude_seen: bool
    metrics: dict[str, float]                                   # unprefixed, both settings
    per_case: dict[bool, dict[str, np.ndarray]]                  # setting -> metric -> [N]
    rankings: dict[bool, Ranking] = field(repr=False, default_factory=dict)
    continuation: dict[bool, np.ndarray] = field(repr=False, default_factory=dict)


def setting_suffix(exclude_seen: bool, primary_exclude_seen: bool) -> str:
    """Keys of the run's chosen setting are bare; the other setting's keys carry what differs."""
    if exclude_seen == primary_exclude_seen:
        return ""
    return SEEN_EXCLUDED if exclude_seen else WITH_REPEATS


def evaluate_scorer(
    name: str,
    scorer,
    cases: NextTrackCases,
    vocab: Vocabulary,
    continuation: ContinuationCases | None = None,
    ks: Sequence[int] = (10, 20),
    exclude_seen: bool = True,
    batch_size: int = 512,
    device=None,
    continuation_scorer=None,
    progress: bool = False,
) -> ScorerEvaluation:
    """Both protocols, both exclude_seen settings, every metric of docs/ARCHITECTURE.md ("Metrics"), unprefixed keys.

    `continuation_scorer` stands in for `scorer` on the continuation cases when the scorer is
    tied to a case set (the oracle); by default the same scorer serves both. `progress` draws a
    bar per protocol, labelled with `name`.
    """
    if len(cases) == 0:
        raise ValueError(f"{name}: no next-track cases to evaluate")
    settings = (exclude_seen, not exclude_seen)
    rankings = rank_next_track(scorer, cases, exclude_seen_settings=settings, batch_size=batch_size, device=device,
                               progress=f"{name}, next track" if progress else None)
    cont = {}
    if continuation is not None and len(continuation):
        cont_rankings = rank_cases(
            continuation_scorer or scorer,
            continuation.histories,
            continuation.hours,
            continuation.dows,
            exclude_seen_settings=settings,
            batch_size=batch_size,
            device=device,
            progress=f"{name}, continuation" if progress else None,
        )
        cont = {s: continuation_recall(r, continuation) for s, r in cont_rankings.items()}
    metrics: dict[str, float] = {}
    per_case: dict[bool, dict[str, np.ndarray]] = {}
    for setting in settings:
        suffix = setting_suffix(setting, exclude_seen)
        values = next_track_metrics(rankings[setting], cases, ks, vocab)
        if setting in cont:
            values[f"cont_recall_at_{SLATE_K}"] = float(cont[setting].mean())
        for key, value in values.items():
            if key in ("repeat_target_share", "num_cases"):
                metrics[key] = value
            else:
                metrics[key + suffix] = value
        per_case[setting] = per_case_metrics(rankings[setting].ranks, ks)
    metrics["num_sessions"] = float(len(np.unique(cases.session_index)))
    return ScorerEvaluation(
        name=name,
        primary_exclude_seen=exclude_seen,
        metrics=metrics,
        per_case=per_case,
        rankings=rankings,
        continuation=cont,
    )
