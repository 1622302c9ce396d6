"""Fitting the score terms a model adds to its inner products (models/base.py): the repeat bonus
b on history tracks, the weight w of the session neighbours' votes v, and the share r of the last
track's transitions t beside the votes (models/neighbours.py; v and t scaled to [0, 1]).

A track's score is s + b [in history] + w (v + r t). Only the *support* of a case (its history
tracks, the tracks its neighbours vote for and those that followed its last track) moves with
(b, w, r); every other track keeps its score s. So one scoring pass keeps, per case: the target's
(s, in history, v, t), the support's, and the best `max_k + 1` scores outside the support. Under
any (b, w, r) the number of tracks that beat the target is then exact while it is <= max_k, and a
case where it is not has rank > max_k, a miss for every metric at k <= max_k: every candidate is
ranked exactly without scoring the catalog again, and the memory per case is the support, not the
catalog.

Candidate values of b and w are multiples of the mean gap between a case's 1st and `max_k`-th
score, so the grid fits any score scale (inner products, scaled cosines); r is a plain ratio. The
search is by coordinates: (b, w) with r = 0, then (w, r), then b again; each step keeps the point
it started from among its candidates, so none makes the fit worse. Ranks are pessimistic, as in
evaluation: a target tied with other tracks takes the last of the tied places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from playlistai.data.sequences import NextTrackCases
from playlistai.evaluation import metrics as M
from playlistai.evaluation.evaluator import inference_mode, per_case_metrics, scorer_device
from playlistai.models.base import SequenceRecommender
from playlistai.models.neighbours import SessionNeighbours

# candidate values, in units of the mean (top-1 minus top-max_k) score gap; 0 = no term
BONUS_MULTIPLES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
WEIGHT_MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# the transitions' share beside the votes (both in [0, 1]); 0 = the votes alone
TRANSITION_SHARES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class ScoreEvidence:
    """Per case, what ranks it under any (bonus, weight) (see the module docstring)."""

    target_scores: np.ndarray      # [N] float32, s of the target
    target_in_history: np.ndarray  # [N] bool
    target_votes: np.ndarray       # [N] float32
    target_transitions: np.ndarray # [N] float32
    support_scores: np.ndarray     # [N, W] s of the support tracks, -inf where a row has fewer
    support_in_history: np.ndarray # [N, W] bool
    support_votes: np.ndarray      # [N, W] float32
    support_transitions: np.ndarray  # [N, W] float32
    rest_top: np.ndarray           # [N, max_k + 1] best s outside the support, descending (-inf pads)
    target_in_support: np.ndarray  # [N] bool
    gap_sum: float                 # sum over cases of (1st - max_k-th score): the grid's unit x N
    max_k: int

    def __len__(self) -> int:
        return len(self.target_scores)

    def ranks(self, bonus: float = 0.0, weight: float = 0.0, share: float = 0.0) -> np.ndarray:
        """Pessimistic target ranks under (bonus, weight, share); any rank > max_k is UNREACHABLE."""
        # float32 and in the order scoring adds them, so ties (which rank pessimistically) fall as there
        bonus, weight, share = np.float32(bonus), np.float32(weight), np.float32(share)
        target_votes, support_votes = self.target_votes, self.support_votes
        if share:
            target_votes = target_votes + share * self.target_transitions
            support_votes = support_votes + share * self.support_transitions
        target = self.target_scores + bonus * self.target_in_history + weight * target_votes
        support = self.support_scores + bonus * self.support_in_history + weight * support_votes
        rest = (self.rest_top >= target[:, None]).sum(axis=1)
        # the target ties itself: outside the support it is one of `rest`, inside it is counted apart
        lifted = (support >= target[:, None]).sum(axis=1) + self.target_in_support
        ranks = (rest + lifted).astype(np.int64)
        beyond = (rest >= self.rest_top.shape[1]) | (ranks > self.max_k) | ~np.isfinite(target)
        ranks[beyond] = M.UNREACHABLE
        return ranks

    def metric_sums(self, keys: list[str], ks, bonus: float = 0.0, weight: float = 0.0,
                    share: float = 0.0) -> list[float]:
        """Sums over cases (not means: ranks combine them across workers) of `keys`."""
        per_case = per_case_metrics(self.ranks(bonus, weight, share), ks)
        return [float(per_case[k].sum()) for k in keys]


def _at(term: torch.Tensor | None, col: torch.Tensor) -> np.ndarray:
    """A score term's value at each row's target (0 where there is no such term)."""
    return term.gather(1, col)[:, 0].numpy() if term is not None else np.zeros(len(col), np.float32)


def _at_row(term: torch.Tensor | None, row: int, items: torch.Tensor) -> np.ndarray:
    return term[row, items].numpy() if term is not None else np.zeros(len(items), np.float32)


def _pad_rows(values: list[np.ndarray], fill, dtype) -> np.ndarray:
    width = max([len(v) for v in values] + [1])
    out = np.full((len(values), width), fill, dtype=dtype)
    for row, v in enumerate(values):
        out[row, : len(v)] = v
    return out


@torch.no_grad()
def collect_evidence(
    model: SequenceRecommender,
    cases: NextTrackCases,
    max_k: int,
    batch_size: int = 512,
    neighbours: SessionNeighbours | None = None,
    exclude_seen: bool = False,
    device=None,
) -> ScoreEvidence:
    """One scoring pass over `cases` without the score terms, keeping what `ScoreEvidence` needs.

    `exclude_seen`: history tracks are never ranked (their targets are misses), so only the
    neighbours' weight has any effect.
    """
    dev = scorer_device(model, device)
    keep = {k: [] for k in ("t", "tin", "tv", "tt", "tsup", "gap", "rest")}
    support: dict[str, list[np.ndarray]] = {"s": [], "in": [], "v": [], "tr": []}
    with inference_mode(model):
        for start in range(0, len(cases), batch_size):
            rows = slice(start, start + batch_size)
            hist = torch.as_tensor(cases.histories[rows], dtype=torch.long, device=dev)[:, -model.config.max_seq_len :]
            targets = torch.as_tensor(cases.targets[rows], dtype=torch.long, device=dev)
            scores = model.score_batch(
                hist, torch.as_tensor(cases.hours[rows], device=dev), torch.as_tensor(cases.dows[rows], device=dev),
                with_score_terms=False,
            ).float().cpu()
            scores = torch.nan_to_num(scores, nan=float("-inf"), neginf=float("-inf"), posinf=float("inf"))
            hist = hist.cpu()
            in_history = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, hist, True)
            in_history[:, 0] = False
            # without neighbours no catalog-sized vote matrices: validation runs this every epoch
            votes = transitions = None
            if neighbours is not None:
                votes, transitions = (torch.from_numpy(m.toarray()) for m in neighbours.scaled_vote_terms(hist.numpy()))
            if exclude_seen:
                scores.masked_fill_(in_history, float("-inf"))
                if neighbours is not None:
                    votes.masked_fill_(in_history, 0.0)
                    transitions.masked_fill_(in_history, 0.0)
                in_history.zero_()
            top = scores.topk(min(max_k, scores.shape[1] - 1), dim=1).values   # PAD (-inf) left out
            keep["gap"].append((top[:, 0] - top[:, -1]).double().numpy())
            in_support = in_history.clone() if neighbours is None else in_history | (votes > 0) | (transitions > 0)
            rest = scores.masked_fill(in_support, float("-inf"))
            keep["rest"].append(rest.topk(min(max_k + 1, rest.shape[1]), dim=1).values.numpy())
            col = targets.cpu()[:, None]
            keep["t"].append(scores.gather(1, col)[:, 0].numpy())
            keep["tin"].append(in_history.gather(1, col)[:, 0].numpy())
            keep["tv"].append(_at(votes, col))
            keep["tt"].append(_at(transitions, col))
            keep["tsup"].append(in_support.gather(1, col)[:, 0].numpy())
            # the support without the target itself (it is counted apart)
            in_support.scatter_(1, col, False)
            for row in range(len(scores)):
                items = torch.nonzero(in_support[row], as_tuple=True)[0]
                support["s"].append(scores[row, items].numpy())
                support["in"].append(in_history[row, items].numpy())
                support["v"].append(_at_row(votes, row, items))
                support["tr"].append(_at_row(transitions, row, items))
    cat = lambda k, dtype: np.concatenate(keep[k]).astype(dtype) if keep[k] else np.zeros(0, dtype)  # noqa: E731
    gaps = cat("gap", np.float64)
    target_in_support = cat("tsup", bool)
    return ScoreEvidence(
        target_scores=cat("t", np.float32),
        target_in_history=cat("tin", bool),
        target_votes=cat("tv", np.float32),
        target_transitions=cat("tt", np.float32),
        support_scores=_pad_rows(support["s"], -np.inf, np.float32),
        support_in_history=_pad_rows(support["in"], False, bool),
        support_votes=_pad_rows(support["v"], 0.0, np.float32),
        support_transitions=_pad_rows(support["tr"], 0.0, np.float32),
        rest_top=np.concatenate(keep["rest"]).astype(np.float32) if keep["rest"] else np.zeros((0, max_k + 1), np.float32),
        target_in_support=target_in_support,
        gap_sum=float(gaps[np.isfinite(gaps)].sum()),
        max_k=max_k,
    )


@dataclass
class FittedTerms:
    bonus: float
    weight: float
    metrics: dict[str, float]      # means over the cases under (bonus, weight, share)
    share: float = 0.0


def fit_terms(
    evidence: ScoreEvidence | None,
    keys: list[str],
    ks,
    metric: str,
    bonus_multiples=BONUS_MULTIPLES,
    weight_multiples=(0.0,),
    shares=(0.0,),
    fixed_bonus: float | None = None,
    reduce=lambda values: values,
) -> FittedTerms:
    """The (bonus, weight, share) that maximises `metric` (one of `keys`) over the cases, searched
    by coordinates (see the module docstring).

    `fixed_bonus`: keep this bonus rather than search one (`bonus_multiples` is then unused).
    `evidence` is this process's share (None: it has no case); `reduce` sums a list of floats over
    every process that holds a share (identity for one), so all of them pick the same values.
    """
    gap_sum, n = reduce([evidence.gap_sum if evidence else 0.0, float(len(evidence) if evidence else 0)])
    n = max(n, 1.0)
    unit = gap_sum / n

    def best(grid: list[tuple[float, float, float]]) -> FittedTerms:
        sums: list[float] = []
        for point in grid:
            sums.extend(evidence.metric_sums(keys, ks, *point) if evidence else [0.0] * len(keys))
        means = np.asarray(reduce(sums)).reshape(len(grid), len(keys)) / n
        # the first maximum: grids list the smaller terms first, so among equals the fewest win
        i = int(np.argmax(means[:, keys.index(metric)]))
        bonus, weight, share = grid[i]
        return FittedTerms(float(bonus), float(weight), {k: float(means[i, j]) for j, k in enumerate(keys)}, float(share))

    bonuses = [b * unit for b in bonus_multiples] if fixed_bonus is None else [fixed_bonus]
    fitted = best([(b, w * unit, 0.0) for w in weight_multiples for b in bonuses])
    if len(shares) > 1:
        fitted = best([(fitted.bonus, w * unit, r) for r in shares for w in weight_multiples])
        if fitted.share and len(bonuses) > 1:
            fitted = best([(b, fitted.weight, fitted.share) for b in bonuses])
    return fitted
