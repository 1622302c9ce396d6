"""Fitting the repeat bonus (models/base.py) on the validation cases, with repeats allowed.

For each case only what decides its rank among the top `max_k` is kept from one scoring pass:
the target's score, the scores of the (distinct) history tracks, and the top `max_k + L` scores of
the catalog with their tracks. A bonus b lifts the history tracks by b; every other track keeps
its score, and at most L of the kept top entries are history tracks, so at least `max_k + 1` are
not: the number of those that still beat the target is exact while it is <= max_k, and a case
where it is not has rank > max_k, a miss for every metric at k <= max_k. So every candidate bonus
is ranked exactly from one scoring pass, without scoring the catalog again.

Candidate bonuses are multiples of the mean gap between a case's 1st and `max_k`-th score, so the
grid fits any score scale (inner products, scaled cosines). Ranks are pessimistic, as in
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

# bonus candidates, in units of the mean (top-1 minus top-max_k) score gap; 0 = no bonus
GAP_MULTIPLES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


@dataclass
class RepeatEvidence:
    """Per case, what ranks it under any bonus (see the module docstring)."""

    target_scores: np.ndarray     # [N] float32, as the model scores
    target_in_history: np.ndarray # [N] bool
    history_scores: np.ndarray    # [N, L] scores of distinct history tracks, -inf elsewhere
    top_scores: np.ndarray        # [N, K] best scores of the catalog, descending
    top_in_history: np.ndarray    # [N, K] bool: that top track is a history track
    max_k: int
    complete: bool                # the top holds the whole catalog: no rank is cut

    @property
    def gap_sum(self) -> float:
        """Sum over cases of (1st - max_k-th score): the grid's unit once divided by the count."""
        gaps = self.top_scores[:, 0].astype(np.float64) - self.top_scores[:, min(self.max_k, self.top_scores.shape[1]) - 1]
        return float(gaps[np.isfinite(gaps)].sum())

    def ranks(self, bonus: float) -> np.ndarray:
        """Pessimistic target ranks under `bonus`; any rank > max_k is UNREACHABLE."""
        # float32 as in scoring, so ties (which rank pessimistically) fall as they would there
        bonus = np.float32(bonus)
        threshold = np.where(self.target_in_history, self.target_scores + bonus, self.target_scores)
        others = ((self.top_scores >= threshold[:, None]) & ~self.top_in_history).sum(axis=1)
        saturated = others == (~self.top_in_history).sum(axis=1) if not self.complete else False
        history = (self.history_scores + bonus >= threshold[:, None]).sum(axis=1)
        ranks = (others + history).astype(np.int64)
        ranks[saturated | (ranks > self.max_k) | ~np.isfinite(self.target_scores)] = M.UNREACHABLE
        return ranks


@torch.no_grad()
def collect_evidence(
    model: SequenceRecommender, cases: NextTrackCases, max_k: int, batch_size: int = 512, device=None
) -> RepeatEvidence:
    """One scoring pass over `cases` (without the bonus), keeping what `RepeatEvidence` needs."""
    dev = scorer_device(model, device)
    L = cases.histories.shape[1]
    width = min(max_k + L, model.config.vocab_size - 1)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "tin", "h", "top", "topin")}
    with inference_mode(model):
        for start in range(0, len(cases), batch_size):
            rows = slice(start, start + batch_size)
            hist = torch.as_tensor(cases.histories[rows], dtype=torch.long, device=dev)
            targets = torch.as_tensor(cases.targets[rows], dtype=torch.long, device=dev)
            scores = model.score_batch(
                hist, torch.as_tensor(cases.hours[rows], device=dev), torch.as_tensor(cases.dows[rows], device=dev),
                with_repeat_bonus=False,
            ).float()
            scores = torch.nan_to_num(scores, nan=float("-inf"))
            hist = hist[:, -model.config.max_seq_len :]
            # distinct history tracks: sort each row, blank repeats and PAD
            ordered, _ = hist.sort(dim=1)
            distinct = torch.ones_like(ordered, dtype=torch.bool)
            distinct[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
            distinct &= ordered != 0
            h_scores = scores.gather(1, ordered).masked_fill(~distinct, float("-inf"))
            top_scores, top_items = scores.topk(width, dim=1)
            top_in = (top_items[:, :, None] == ordered.masked_fill(~distinct, -1)[:, None, :]).any(dim=2)
            parts["t"].append(scores.gather(1, targets[:, None])[:, 0].cpu().numpy())
            parts["tin"].append((hist == targets[:, None]).any(dim=1).cpu().numpy())
            parts["h"].append(h_scores.cpu().numpy())
            parts["top"].append(top_scores.cpu().numpy())
            parts["topin"].append(top_in.cpu().numpy())
    return RepeatEvidence(
        target_scores=np.concatenate(parts["t"]),
        target_in_history=np.concatenate(parts["tin"]),
        history_scores=np.concatenate(parts["h"]),
        top_scores=np.concatenate(parts["top"]),
        top_in_history=np.concatenate(parts["topin"]),
        max_k=max_k,
        complete=width == model.config.vocab_size - 1,
    )


def metric_sums(evidence: RepeatEvidence, bonus: float, keys: list[str], ks) -> list[float]:
    """Sums over cases (not means: ranks combine them across workers) of `keys` under `bonus`."""
    per_case = per_case_metrics(evidence.ranks(bonus), ks)
    return [float(per_case[k].sum()) for k in keys]
