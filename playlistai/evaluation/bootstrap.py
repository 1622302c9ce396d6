"""Uncertainty over sessions: bootstrap confidence intervals and the paired comparison.

Cases of one session share its listener and its history, so they are not independent; resampling
*sessions* (with all their cases) gives honest intervals where resampling cases would be too
narrow. Both functions work on per-case metric arrays (`evaluator.per_case_metrics`) and the
case -> session map (`NextTrackCases.session_index`); a metric is the mean over cases, so each
bootstrap replicate is sum(weight x session total) / sum(weight x session case count).

The promotion gate reuses `paired_bootstrap`: model A and model B on the *same* cases, resampled
with the *same* sessions, so the interval is on their difference, not on two noisy means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
# replicates drawn per step: bounds memory at step x sessions weights
_CHUNK = 100


def _session_totals(per_case: np.ndarray, session_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_case = np.asarray(per_case, dtype=np.float64)
    session_index = np.asarray(session_index, dtype=np.int64)
    if per_case.shape != session_index.shape:
        raise ValueError("per_case and session_index must have the same length")
    _, compact = np.unique(session_index, return_inverse=True)
    return np.bincount(compact, weights=per_case), np.bincount(compact).astype(np.float64)


def _replicates(totals: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of sum(totals) / sum(counts), resampling sessions with replacement."""
    rng = np.random.default_rng(seed)
    n_sessions = len(totals)
    out = np.empty(n_resamples, dtype=np.float64)
    for lo in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - lo)
        # how often each session is drawn in each replicate (a multinomial, via bincount: faster)
        draws = rng.integers(0, n_sessions, size=(size, n_sessions)) + n_sessions * np.arange(size)[:, None]
        weights = np.bincount(draws.ravel(), minlength=size * n_sessions).reshape(size, n_sessions)
        weights = weights.astype(np.float64)
        out[lo : lo + size] = (weights @ totals) / np.maximum(weights @ counts, 1.0)
    return out


@dataclass(frozen=True)
class ConfidenceInterval:
    mean: float
    low: float
    high: float
    n_cases: int
    n_sessions: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(
    per_case: np.ndarray,
    session_index: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of the mean of `per_case`, resampling sessions."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    totals, counts = _session_totals(per_case, session_index)
    if len(totals) == 0:
        nan = float("nan")
        return ConfidenceInterval(nan, nan, nan, 0, 0)
    reps = _replicates(totals, counts, n_resamples, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return ConfidenceInterval(
        mean=float(totals.sum() / counts.sum()),
        low=float(low),
        high=float(high),
        n_cases=int(counts.sum()),
        n_sessions=len(totals),
    )


@dataclass(frozen=True)
class PairedComparison:
    """A minus B on the same cases: the mean difference, its interval, and a two-sided p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    n_cases: int
    n_sessions: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0: A and B differ at this confidence."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def paired_bootstrap(
    per_case_a: np.ndarray,
    per_case_b: np.ndarray,
    session_index: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two scorers on the same cases (e.g. per-case nDCG@10 of a challenger and the champion).

    The p-value is the two-sided bootstrap p of "no difference": twice the smaller share of
    replicates on either side of 0 (with the +1 correction, so it is never exactly 0), capped at 1.
    """
    a = np.asarray(per_case_a, dtype=np.float64)
    b = np.asarray(per_case_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired_bootstrap needs per-case values of A and B on the same cases")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    totals, counts = _session_totals(a - b, session_index)
    if len(totals) == 0:
        nan = float("nan")
        return PairedComparison(nan, nan, nan, nan, 0, 0, confidence)
    reps = _replicates(totals, counts, n_resamples, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    below = (np.count_nonzero(reps <= 0) + 1) / (n_resamples + 1)
    above = (np.count_nonzero(reps >= 0) + 1) / (n_resamples + 1)
    return PairedComparison(
        mean_diff=float(totals.sum() / counts.sum()),
        low=float(low),
        high=float(high),
        p_value=float(min(1.0, 2 * min(below, above))),
        n_cases=int(counts.sum()),
        n_sessions=len(totals),
        confidence=confidence,
    )
